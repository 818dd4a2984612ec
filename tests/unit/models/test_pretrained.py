"""Packaged ImageNet encoder weights: each key mapping is proven by classifying a photo."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from models import pretrained
from models.builder import build_network
from models.config import NetworkConfig
from models.pretrained import (
    PACKAGED_WEIGHTS,
    PackagedWeights,
    adapt_first_conv,
    head_state,
    packaged_weights,
)
from prelabel.errors import ValidationFailed

CAT_CLASSES = range(281, 286)
"""ImageNet's tabby, tiger cat, Persian, Siamese and Egyptian cats."""


def network(name: str, in_channels: int = 3, **overrides: object) -> torch.nn.Module:
    weights = PACKAGED_WEIGHTS[name]
    config = NetworkConfig.model_validate(
        {
            "encoder": weights.encoder,
            "encoder_weights": name,
            "in_channels": in_channels,
            "classes": 3,
            **overrides,
        }
    )
    return build_network(config).eval()


def photo(config_mean: list[float], config_std: list[float]) -> torch.Tensor:
    """skimage's chelsea (a tabby cat) at 224x224, normalised, as (1, 3, 224, 224)."""
    pixels = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224)), dtype=np.float32)
    normalised = (pixels / 255.0 - np.asarray(config_mean)) / np.asarray(config_std)
    return torch.from_numpy(normalised.transpose(2, 0, 1)[None].astype(np.float32))


def mobilenet_head(features: torch.Tensor, head: dict[str, torch.Tensor]) -> torch.Tensor:
    """torchvision's MobileNetV2 classifier: global average pool, then Linear 1280 → 1000."""
    pooled = features.mean(dim=(2, 3))
    return torch.nn.functional.linear(
        pooled, head["classifier.1.weight"], head["classifier.1.bias"]
    )


def efficientnet_head(features: torch.Tensor, head: dict[str, torch.Tensor]) -> torch.Tensor:
    """EfficientNet-Lite's head: 1x1 conv 320 → 1280, BN, ReLU6, pool, Linear 1280 → 1000."""
    x = torch.nn.functional.conv2d(features, head["_conv_head.weight"])
    x = torch.nn.functional.batch_norm(
        x,
        head["_bn1.running_mean"],
        head["_bn1.running_var"],
        head["_bn1.weight"],
        head["_bn1.bias"],
        eps=1e-3,
    )
    pooled = torch.nn.functional.relu6(x).mean(dim=(2, 3))
    return torch.nn.functional.linear(pooled, head["_fc.weight"], head["_fc.bias"])


HEADS = {"imagenet-mobilenet_v2": mobilenet_head, "imagenet-efficientnet_lite0": efficientnet_head}


def test_every_catalogue_entry_has_a_proof() -> None:
    assert set(HEADS) == set(PACKAGED_WEIGHTS)


@pytest.mark.parametrize("name", sorted(PACKAGED_WEIGHTS))
def test_loaded_encoder_labels_a_cat_photo_as_a_cat(name: str) -> None:
    weights = PACKAGED_WEIGHTS[name]
    net = network(name)
    mean, std = weights.normalization(3)
    with torch.no_grad():
        features = net.get_submodule("encoder")(photo(mean, std))[-1]
        logits = HEADS[name](features, head_state(weights))
    top = int(logits.argmax())
    assert top in CAT_CLASSES, f"{name}: top ImageNet class {top}, expected a cat (281-285)"


@pytest.mark.parametrize("name", sorted(PACKAGED_WEIGHTS))
def test_grey_networks_sum_the_rgb_kernels_of_the_first_convolution(name: str) -> None:
    rgb = network(name, 3).get_submodule("encoder").state_dict()
    grey = network(name, 1).get_submodule("encoder").state_dict()
    first = next(k for k, v in rgb.items() if v.ndim == 4)
    assert grey[first].shape[1] == 1
    torch.testing.assert_close(grey[first], rgb[first].sum(1, keepdim=True))


def test_normalisation_defaults_to_the_checkpoint_statistics() -> None:
    config = NetworkConfig.model_validate(
        {"encoder": "mobilenet_v2", "encoder_weights": "imagenet-mobilenet_v2", "in_channels": 3}
        | {"classes": 2}
    )
    assert config.mean == [0.485, 0.456, 0.406]
    lite = NetworkConfig.model_validate(
        {"encoder": "tu-tf_efficientnet_lite0", "in_channels": 1, "classes": 2}
        | {"encoder_weights": "imagenet-efficientnet_lite0"}
    )
    assert (lite.mean, lite.std) == ([0.5], [0.5])


def test_unknown_weights_and_wrong_encoder_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown encoder_weights 'imagenet'; choose from"):
        NetworkConfig.model_validate(
            {"encoder": "resnet18", "encoder_weights": "imagenet", "in_channels": 1, "classes": 2}
        )
    with pytest.raises(ValueError, match="belong to encoder 'mobilenet_v2', not 'resnet18'"):
        NetworkConfig.model_validate(
            {"encoder": "resnet18", "encoder_weights": "imagenet-mobilenet_v2"}
            | {"in_channels": 1, "classes": 2}
        )
    with pytest.raises(ValidationFailed, match="unknown encoder_weights"):
        packaged_weights("imagenet-resnet9000")


def fake_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **changes: object) -> str:
    """A copy of the MobileNetV2 entry whose file lives in ``tmp_path`` (same digest)."""
    real = PACKAGED_WEIGHTS["imagenet-mobilenet_v2"]
    copy = tmp_path / "weights.pth"
    shutil.copyfile(real.path(), copy)
    fields = {**real.__dict__, "name": "imagenet-test", **changes}
    entry = PackagedWeights(**fields)  # type: ignore[arg-type]
    monkeypatch.setattr(PackagedWeights, "path", lambda self: copy)
    monkeypatch.setitem(pretrained.PACKAGED_WEIGHTS, entry.name, entry)
    return entry.name


def test_a_file_with_another_digest_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = fake_entry(tmp_path, monkeypatch, sha256="0" * 64)
    with pytest.raises(ValidationFailed, match="expected 0000"):
        network(name, 1)


def test_a_mapping_that_misses_tensors_fails_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lossy(state: object, keys: list[str]) -> dict[str, torch.Tensor]:
        full = pretrained.torchvision_mobilenet_v2_to_smp(state, keys)  # type: ignore[arg-type]
        return {k.replace("features.3.", "features.x."): v for k, v in full.items()}

    name = fake_entry(tmp_path, monkeypatch, to_encoder=lossy)
    with pytest.raises(ValidationFailed, match=r"missing key\(s\).*unexpected key\(s\)"):
        network(name, 1)


def test_adapting_more_than_three_channels_repeats_and_scales() -> None:
    kernel = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    adapted = adapt_first_conv({"w": kernel}, {"w": torch.zeros(2, 4, 1, 1)}, 4)["w"]
    torch.testing.assert_close(adapted[:, 3], kernel[:, 0] * 0.75)
