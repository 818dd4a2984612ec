"""Guidance channels in the stem: zero guidance keeps the draft; both ONNX artifacts match torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.builder import build_network, load_checkpoint, save_checkpoint
from models.click_model import (
    CERTAIN_RADIUS_PX,
    ClickPredictor,
    guidance_maps,
    interactive_artifact,
)
from models.config import NetworkConfig
from models.guidance import (
    add_guidance_channels,
    automatic_mode,
    check_click_parity,
    export_click_onnx,
    with_zero_guidance,
)
from models.onnx_export import check_parity, export_onnx
from models.predictor import OnnxPredictor, preprocess
from prelabel.errors import ValidationFailed
from prelabel.refinement import Clicks, RefineMethod
from tests.synthetic import shapes_sample

TINY = {
    "arch": "Unet",
    "encoder": "resnet18",
    "encoder_depth": 3,
    "decoder_channels": [16, 8, 8],
    "in_channels": 1,
    "classes": 3,
}


def tiny_click_network(seed: int = 0) -> tuple[torch.nn.Module, NetworkConfig]:
    """An untrained tiny network with guidance channels, in eval mode."""
    torch.manual_seed(seed)
    config = NetworkConfig.model_validate({**TINY, "guidance_channels": 3})
    return build_network(config).eval(), config


def write_click_models(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """The draft ONNX (zero guidance inside) and the click ONNX of one tiny network."""
    net, config = tiny_click_network(seed)
    draft, click = folder / "draft.onnx", folder / "click.onnx"
    export_onnx(automatic_mode(net, config), draft, config=config, sample_hw=(64, 64))
    export_click_onnx(net, click, config=config, sample_hw=(64, 64))
    return draft, click


def test_zero_initialised_guidance_keeps_what_the_network_computed() -> None:
    torch.manual_seed(0)
    config = NetworkConfig.model_validate(TINY)
    net = build_network(config).eval()
    image = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        before = net(image)
        add_guidance_channels(net, 1)
        after = with_zero_guidance(net, image)
        clicked = with_zero_guidance(net, image, torch.ones(2, 3, 64, 96))
    assert torch.equal(before, after)
    assert torch.equal(before, clicked)  # the new weights start at zero
    assert net.get_submodule("encoder.conv1").in_channels == 4
    assert add_guidance_channels(net, 1) is net  # idempotent


def test_a_click_network_checkpoint_round_trips(tmp_path: Path) -> None:
    net, config = tiny_click_network()
    with torch.no_grad():
        net.get_submodule("encoder.conv1").weight[:, 1:] = 0.5  # as if trained
    save_checkpoint(net, tmp_path / "m.pt", config=config)
    loaded, loaded_config = load_checkpoint(tmp_path / "m.pt")
    image, guidance = torch.randn(1, 1, 64, 64), torch.ones(1, 3, 64, 64)
    with torch.no_grad():
        expected = with_zero_guidance(net, image, guidance)
        assert torch.equal(with_zero_guidance(loaded, image, guidance), expected)
    assert loaded_config.guidance_channels == 3


def test_both_onnx_artifacts_match_torch_at_another_size(tmp_path: Path) -> None:
    net, config = tiny_click_network()
    with torch.no_grad():  # guidance that matters, so that parity tests its path
        net.get_submodule("encoder.conv1").weight[:, 1:].normal_(0, 0.5)
    draft_path, click_path = tmp_path / "draft.onnx", tmp_path / "click.onnx"
    draft_net = automatic_mode(net, config)
    export_onnx(draft_net, draft_path, config=config, sample_hw=(64, 64))
    export_click_onnx(net, click_path, config=config, sample_hw=(64, 64))
    assert check_parity(draft_net, draft_path, config=config, hw=(24, 40)) < 1e-3
    assert check_click_parity(net, click_path, config=config, hw=(24, 40)) < 1e-3
    assert not net.training  # exports and parity checks leave the mode as they found it

    image, _ = shapes_sample(3)
    click = ClickPredictor.from_bytes(click_path.read_bytes())
    base = OnnxPredictor.from_path(draft_path).predict(image).mask
    guidance = guidance_maps(64, 64, [(20, 30)], [(5, 5)], base == 1)
    x = torch.from_numpy(preprocess(image, click.spec))
    with torch.no_grad():
        expected = with_zero_guidance(net, x, torch.from_numpy(guidance)[None])[0].numpy()
    np.testing.assert_allclose(click.logits(image, guidance), expected, rtol=1e-3, atol=1e-4)
    clicks = Clicks(positive=[(20, 30)], negative=[(5, 5)])
    refined = click(image, base, 1, clicks, background=0)
    assert refined.method is RefineMethod.MODEL and refined.mask.shape == (64, 64)
    fg = np.argmax(expected, axis=0) == 1
    ys, xs = np.mgrid[:64, :64]
    near_positive = np.hypot(xs - 20, ys - 30) <= CERTAIN_RADIUS_PX
    near_negative = np.hypot(xs - 5, ys - 5) <= CERTAIN_RADIUS_PX
    away = ~near_positive & ~near_negative
    assert np.array_equal((refined.mask == 1)[away], fg[away])  # the network's answer
    assert (refined.mask[near_positive] == 1).all()  # and the clicks' certain disks
    assert (refined.mask[near_negative] != 1).all()


def test_the_model_keeps_a_click_the_network_overrules(tmp_path: Path) -> None:
    _, click_path = write_click_models(tmp_path)
    click = ClickPredictor.from_bytes(click_path.read_bytes())
    image, _ = shapes_sample(3)
    base = np.zeros((64, 64), dtype=np.uint8)
    # a positive and a negative click 2 px apart: each keeps its own pixel, the pixels
    # between go to the nearer click, the one equally near both to the network
    clicks = Clicks(positive=[(30, 30)], negative=[(32, 30)])
    answers = [click(image, base, label, clicks, background=0).mask for label in (1, 2)]
    for mask, label in zip(answers, (1, 2), strict=True):
        assert mask[30, 30] == label and mask[30, 29] == label
        assert mask[30, 32] != label and mask[30, 33] != label
    fg = np.argmax(click.logits(image, guidance_maps(64, 64, [(30, 30)], [(32, 30)], None)), 0)
    assert [mask[30, 31] == label for mask, label in zip(answers, (1, 2), strict=True)] == [
        fg[30, 31] == 1,
        fg[30, 31] == 2,
    ]


def test_a_draft_model_is_not_a_click_model(tmp_path: Path) -> None:
    draft, _ = write_click_models(tmp_path)
    with pytest.raises(ValidationFailed, match="guidance"):
        ClickPredictor.from_bytes(draft.read_bytes())
    assert interactive_artifact({}) is None
    assert interactive_artifact({"interactive": {"onnx_key": 3}}) is None
