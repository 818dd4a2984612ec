"""The contract every supported architecture keeps: shapes, odd sizes, ONNX parity, drafts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from models.builder import build_network
from models.config import ARCHITECTURES, NetworkConfig
from models.onnx_export import check_parity, export_onnx
from models.predictor import OnnxPredictor, preprocess

CLASSES = 3
TINY_DECODERS: dict[str, list[int]] = {
    "Unet": [32, 16, 8],
    "FPN": [32, 32],
    "DeepLabV3Plus": [32],
}
"""Small decoders keep the suite fast; an architecture missing here gets smp's default."""


def tiny_config(arch: str) -> NetworkConfig:
    return NetworkConfig(
        arch=arch,
        encoder="resnet18",
        encoder_depth=3,
        decoder_channels=TINY_DECODERS.get(arch),
        in_channels=1,
        classes=CLASSES,
    )


@dataclass(frozen=True)
class Exported:
    config: NetworkConfig
    net: torch.nn.Module
    onnx_path: Path


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    torch.manual_seed(0)
    config = tiny_config(request.param)
    net = build_network(config).eval()
    path = tmp_path_factory.mktemp(request.param) / "net.onnx"
    export_onnx(net, path, config=config, sample_hw=(64, 64))
    return Exported(config, net, path)


def test_output_shape(exported: Exported) -> None:
    with torch.no_grad():
        logits = exported.net(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, CLASSES, 64, 64)


@pytest.mark.parametrize("hw", [(24, 40), (56, 72), (16, 16)])
def test_odd_multiples_of_the_stride(exported: Exported, hw: tuple[int, int]) -> None:
    # 16 = 2 * stride is the smallest size the predictor feeds (see padded_size)
    assert exported.config.stride == 8
    with torch.no_grad():
        logits = exported.net(torch.randn(1, 1, *hw))
    assert logits.shape == (1, CLASSES, *hw)


def test_onnx_matches_torch_at_another_size(exported: Exported) -> None:
    max_diff = check_parity(exported.net, exported.onnx_path, config=exported.config, hw=(96, 128))
    assert 0.0 <= max_diff < 1e-3
    assert not exported.net.training


@pytest.mark.parametrize("channels", [None, 3], ids=["grey", "rgb"])
def test_predictor_drafts_any_size(exported: Exported, channels: int | None) -> None:
    rng = np.random.default_rng(1)
    shape = (70, 53) if channels is None else (70, 53, channels)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    predictor = OnnxPredictor.from_path(exported.onnx_path)

    prediction = predictor.predict(image)

    assert prediction.mask.shape == (70, 53)
    assert prediction.mask.dtype == np.uint8
    assert prediction.confidence.shape == (70, 53)
    assert prediction.confidence.dtype == np.float32
    assert prediction.confidence.min() >= 1.0 / CLASSES - 1e-6
    assert prediction.confidence.max() <= 1.0
    padded = torch.from_numpy(preprocess(image, predictor.spec))
    assert padded.shape == (1, 1, 72, 56)
    with torch.no_grad():
        logits = exported.net(padded)[0, :, :70, :53]
    top2 = logits.topk(2, dim=0).values
    decided = (top2[0] - top2[1]).numpy() > 1e-3  # ties may flip between runtimes
    assert decided.mean() > 0.99
    expected_mask = logits.argmax(dim=0).numpy()
    np.testing.assert_array_equal(prediction.mask[decided], expected_mask[decided])
    expected_confidence = torch.softmax(logits, dim=0).max(dim=0).values.numpy()
    np.testing.assert_allclose(prediction.confidence, expected_confidence, atol=1e-4)
