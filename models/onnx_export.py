"""Export a network to a self-describing ONNX file and verify it against torch.

torch and onnx are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from models.artifacts import atomic_target
from models.config import NetworkConfig
from models.predictor import INPUT_NAME, METADATA_PREFIX, OUTPUT_NAME, PredictorSpec
from prelabel.errors import ExportMismatch

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_DYNAMIC_AXES = {
    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
    OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
}


def export_onnx(
    net: torch.nn.Module,
    path: Path,
    *,
    config: NetworkConfig,
    sample_hw: tuple[int, int] = (256, 256),
    opset: int = 17,
) -> None:
    """Export ``net`` to ONNX with dynamic batch, height and width.

    The graph maps input ``"image"`` float32 ``(N, in_channels, H, W)``, already
    normalised, to output ``"logits"`` float32 ``(N, classes, H, W)``; H and W
    must be multiples of ``config.stride``. The model's ``metadata_props`` hold
    ``prelabel.in_channels``, ``prelabel.stride``, ``prelabel.mean``,
    ``prelabel.std`` (JSON lists), ``prelabel.classes``, ``prelabel.arch`` and
    ``prelabel.encoder``, which is all ``OnnxPredictor`` needs.

    Uses the TorchScript-based exporter (``dynamo=False``): it handles
    ``dynamic_axes`` without onnxscript. The file is written beside ``path``
    and moved into place, so readers never see a partial model. The network's
    train/eval mode is restored afterwards.

    Args:
        net: Network built from ``config``.
        path: Destination ``.onnx`` file.
        config: The network's configuration.
        sample_hw: Height and width of the tracing input (multiples of the stride).
        opset: ONNX opset version.

    Raises:
        ValueError: if ``sample_hw`` is not a multiple of ``config.stride``.
    """
    import onnx
    import torch

    _check_hw(sample_hw, config.stride, "sample_hw")
    device = next(net.parameters()).device
    sample = torch.zeros(1, config.in_channels, *sample_hw, device=device)
    was_training = net.training
    net.eval()
    try:
        with atomic_target(path) as tmp:
            with torch.no_grad(), _quiet_legacy_exporter():
                torch.onnx.export(
                    net,
                    (sample,),
                    str(tmp),
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes=_DYNAMIC_AXES,
                    opset_version=opset,
                )
            model = onnx.load(str(tmp))
            for key, value in _metadata(config).items():
                model.metadata_props.add(key=key, value=value)
            onnx.checker.check_model(model)
            onnx.save(model, str(tmp))
    finally:
        net.train(was_training)
    logger.info("exported %s/%s to %s (opset %d)", config.arch, config.encoder, path, opset)


def _metadata(config: NetworkConfig) -> dict[str, str]:
    spec = PredictorSpec(
        in_channels=config.in_channels,
        stride=config.stride,
        mean=tuple(config.mean),
        std=tuple(config.std),
        classes=config.classes,
    )
    return {
        **spec.to_metadata(),
        f"{METADATA_PREFIX}arch": config.arch,
        f"{METADATA_PREFIX}encoder": config.encoder,
        f"{METADATA_PREFIX}encoder_depth": json.dumps(config.encoder_depth),
    }


@contextlib.contextmanager
def _quiet_legacy_exporter() -> Iterator[None]:
    """Silence the known, harmless warnings of torch's TorchScript-based exporter."""
    import torch

    with warnings.catch_warnings():
        # We choose the legacy exporter on purpose (see export_onnx), and torch
        # 2.14 trips its own deprecation inside it.
        warnings.filterwarnings(
            "ignore",
            message="You are using the legacy TorchScript-based ONNX export",
            category=DeprecationWarning,
        )
        warnings.filterwarnings(
            "ignore",
            message="The feature will be removed. Please remove usage of this function",
            category=DeprecationWarning,
        )
        # GroupNorm's batch-size sanity check (FPN) reads a tensor as a bool while
        # tracing; it guards training only and does not change the graph.
        warnings.filterwarnings(
            "ignore",
            message="Converting a tensor to a Python boolean",
            category=torch.jit.TracerWarning,  # type: ignore[attr-defined]  # not in torch.jit.__all__
            module=r"torch\.nn\.functional",
        )
        yield


def check_parity(
    net: torch.nn.Module,
    onnx_path: Path,
    *,
    config: NetworkConfig,
    hw: tuple[int, int],
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> float:
    """Compare torch and onnxruntime logits on one random input of size ``hw``.

    Choose ``hw`` different from the export's ``sample_hw`` to prove that the
    height and width really are dynamic. The input is a seeded standard-normal
    batch of two, which also exercises the dynamic batch axis.

    Args:
        net: The exported network (put in eval mode for the comparison, then restored).
        onnx_path: The file written by ``export_onnx``.
        config: The network's configuration.
        hw: Height and width, multiples of ``config.stride``.
        rtol: Relative tolerance, as in ``numpy.allclose``.
        atol: Absolute tolerance, as in ``numpy.allclose``.

    Returns:
        The largest absolute difference between the two sets of logits.

    Raises:
        ValueError: if ``hw`` is not a multiple of ``config.stride``.
        ExportMismatch: if shapes differ or any value is beyond
            ``atol + rtol * |torch value|``.
    """
    import torch

    _check_hw(hw, config.stride, "hw")
    inputs = torch.randn(2, config.in_channels, *hw, generator=torch.Generator().manual_seed(0))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            expected = net(inputs.to(next(net.parameters()).device)).cpu().numpy()
    finally:
        net.train(was_training)
    return compare_with_onnxruntime(
        onnx_path, {INPUT_NAME: inputs.numpy()}, expected, rtol=rtol, atol=atol
    )


def compare_with_onnxruntime(
    onnx_path: Path,
    feeds: dict[str, npt.NDArray[np.float32]],
    expected: npt.NDArray[np.float32],
    *,
    rtol: float,
    atol: float,
) -> float:
    """Run ``onnx_path`` on ``feeds`` with onnxruntime and compare its logits to torch's.

    Returns:
        The largest absolute difference.

    Raises:
        ExportMismatch: if shapes differ or any value is beyond
            ``atol + rtol * |torch value|``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run([OUTPUT_NAME], feeds)[0]
    if actual.shape != expected.shape:
        raise ExportMismatch(
            f"{onnx_path}: onnxruntime output shape {actual.shape} != torch {expected.shape}"
        )
    diff = np.abs(actual - expected)
    max_diff = float(diff.max())
    beyond = diff > atol + rtol * np.abs(expected)
    if beyond.any():
        raise ExportMismatch(
            f"{onnx_path}: onnxruntime differs from torch at {tuple(actual.shape[-2:])}: "
            f"max abs diff {max_diff:.3g}, {int(beyond.sum())} of {beyond.size} logits "
            f"beyond atol={atol} + rtol={rtol}*|torch|"
        )
    logger.info("ONNX parity at %s: max abs diff %.3g", tuple(actual.shape[-2:]), max_diff)
    return max_diff


def _check_hw(hw: tuple[int, int], stride: int, name: str) -> None:
    if len(hw) != 2 or any(side <= 0 or side % stride for side in hw):
        raise ValueError(f"{name} {hw} must be two positive multiples of the stride {stride}")
