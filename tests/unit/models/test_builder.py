"""Network config, building with local weights, checkpoints and artifact files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from models.artifacts import atomic_write_bytes, sha256_file
from models.builder import build_network, load_checkpoint, save_checkpoint
from models.config import (
    ARCHITECTURES,
    DEFAULT_MEAN,
    DEFAULT_STD,
    NetworkConfig,
    load_network_config,
)
from prelabel.errors import ValidationFailed

REPO = Path(__file__).resolve().parents[3]


def tiny(**overrides: object) -> NetworkConfig:
    fields: dict[str, object] = {
        "encoder": "resnet18",
        "encoder_depth": 3,
        "decoder_channels": [16, 8, 8],
        "in_channels": 1,
        "classes": 3,
    }
    return NetworkConfig.model_validate({**fields, **overrides})


def outputs(net: torch.nn.Module) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        result: torch.Tensor = net(torch.linspace(-2, 2, 64 * 64).reshape(1, 1, 64, 64))
    return result


# --- config ---------------------------------------------------------------------------


def test_unknown_arch_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown arch 'SegFormer'; choose from \['Unet'"):
        tiny(arch="SegFormer")


def test_arch_is_case_insensitive() -> None:
    assert tiny(arch="deeplabv3plus", decoder_channels=None).arch == "DeepLabV3Plus"
    assert "DeepLabV3Plus" in ARCHITECTURES


def test_mean_std_must_match_in_channels() -> None:
    with pytest.raises(ValueError, match="mean has 1 values but in_channels is 3"):
        tiny(in_channels=3, mean=[0.5], std=[0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match="std"):
        tiny(std=[0.0])


def test_mean_std_default_per_channel() -> None:
    config = tiny(in_channels=3)
    assert config.mean == [DEFAULT_MEAN] * 3
    assert config.std == [DEFAULT_STD] * 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"decoder_channels": [16, 8]}, "Unet needs 3"),
        ({"arch": "FPN", "decoder_channels": [32, 16]}, "multiple of 32"),
        ({"arch": "DeepLabV3Plus", "decoder_channels": [32, 32]}, "aspp_channels"),
        ({"encoder_depth": 2}, r"choose from \(3, 4, 5\)"),
        ({"classes": 1}, "greater than or equal to 2"),
    ],
)
def test_invalid_configs_say_what_is_allowed(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_stride_follows_depth() -> None:
    assert tiny().stride == 8
    assert tiny(encoder_depth=5, decoder_channels=None).stride == 32


def test_load_network_config_resolves_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "train.yaml"
    path.parent.mkdir()
    path.write_text(
        "model:\n  encoder: resnet18\n  in_channels: 1\n  classes: 4\n"
        "  checkpoint_path: weights/net.pt\n"
    )
    config = load_network_config(path)
    assert config.checkpoint_path == path.parent / "weights" / "net.pt"
    assert config.classes == 4


def test_load_network_config_rejects_non_mappings(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_network_config(path)


def test_default_model_yaml_is_valid() -> None:
    config = load_network_config(REPO / "configs" / "model.yaml")
    assert config.encoder_weights == "imagenet-mobilenet_v2"
    assert config.in_channels == 1


# --- building -------------------------------------------------------------------------


def test_unknown_encoder_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'resnet9000'; choose from"):
        build_network(tiny(encoder="resnet9000"))


def test_unet_default_decoder_fits_shallow_encoders() -> None:
    net = build_network(tiny(decoder_channels=None))
    assert outputs(net).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("wrap", ["raw", "module_prefix", "state_dict_key"])
def test_encoder_weights_are_loaded_from_a_local_file(tmp_path: Path, wrap: str) -> None:
    torch.manual_seed(1)
    source = build_network(tiny()).get_submodule("encoder").state_dict()
    state: object = source
    if wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in source.items()}
    elif wrap == "state_dict_key":
        state = {"state_dict": source, "epoch": 3}
    torch.save(state, tmp_path / "encoder.pt")

    torch.manual_seed(2)
    loaded = build_network(tiny(encoder_weights_path=tmp_path / "encoder.pt"))

    target = loaded.get_submodule("encoder").state_dict()
    assert target.keys() == source.keys()
    for key, value in source.items():
        torch.testing.assert_close(target[key], value, rtol=0, atol=0, msg=key)


def test_encoder_file_with_wrong_keys_is_a_clear_error(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "bad.pt")
    with pytest.raises(ValidationFailed, match=r"missing key.*unexpected key.*'fc.weight'"):
        build_network(tiny(encoder_weights_path=tmp_path / "bad.pt"))


def test_encoder_file_with_wrong_shapes_is_a_clear_error(tmp_path: Path) -> None:
    rgb = build_network(tiny(in_channels=3)).get_submodule("encoder")
    torch.save(rgb.state_dict(), tmp_path / "rgb.pt")
    with pytest.raises(ValidationFailed, match=r"shape mismatch.*conv1.weight"):
        build_network(tiny(encoder_weights_path=tmp_path / "rgb.pt"))


def test_files_that_hold_no_state_dict_are_rejected(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for name in ("list.pt", "junk.pt"):
        with pytest.raises(ValidationFailed, match=name):
            build_network(tiny(checkpoint_path=tmp_path / name))


def test_checkpoint_path_loads_the_whole_network(tmp_path: Path) -> None:
    source = build_network(tiny())
    torch.save({"model": source.state_dict()}, tmp_path / "net.pt")
    loaded = build_network(tiny(checkpoint_path=tmp_path / "net.pt"))
    torch.testing.assert_close(outputs(loaded), outputs(source), rtol=0, atol=0)


# --- checkpoints ----------------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    config = tiny(arch="FPN", decoder_channels=[32, 32])
    net = build_network(config)
    path = tmp_path / "runs" / "ckpt.pt"

    digest = save_checkpoint(net, path, config=config, extra={"epoch": 7})

    assert digest == sha256_file(path)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    loaded, loaded_config = load_checkpoint(path)
    assert loaded_config == config
    assert not loaded.training
    torch.testing.assert_close(outputs(loaded), outputs(net), rtol=0, atol=0)
    assert torch.load(path, weights_only=True)["epoch"] == 7


def test_checkpoint_extra_cannot_override_reserved_keys(tmp_path: Path) -> None:
    config = tiny()
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(
            build_network(config), tmp_path / "c.pt", config=config, extra={"config": 1}
        )


def test_load_checkpoint_rejects_a_bare_state_dict(tmp_path: Path) -> None:
    torch.save(build_network(tiny()).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValidationFailed, match="not a prelabel checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")


# --- artifacts ------------------------------------------------------------------------


def test_atomic_write_and_sha256(tmp_path: Path) -> None:
    path = tmp_path / "a" / "blob.bin"
    atomic_write_bytes(path, b"abc")
    atomic_write_bytes(path, b"prelabel")
    assert path.read_bytes() == b"prelabel"
    assert sha256_file(path) == hashlib.sha256(b"prelabel").hexdigest()
    assert [p.name for p in path.parent.iterdir()] == ["blob.bin"]
