"""Guidance channels in the network's stem, and the two ONNX artifacts of a click model.

The encoder's first convolution gets ``GUIDANCE_CHANNELS`` more input channels
whose weights start at zero (RITM's "extra input channels of the first conv",
DeepEdit's zeroed guidance for automatic mode): with zero guidance the network
computes exactly what it did before. Its forward then takes
``(N, in_channels + 3, H, W)``: the normalised image, then the guidance maps of
``models.click_model.guidance_maps``.

torch is imported inside the functions and the classes are built on first use,
so importing this module stays cheap and torch-free.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from models.artifacts import atomic_target
from models.click_model import GUIDANCE_CHANNELS, GUIDANCE_NAME
from models.config import NetworkConfig
from models.onnx_export import compare_with_onnxruntime
from models.predictor import INPUT_NAME, METADATA_PREFIX, OUTPUT_NAME, PredictorSpec

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def first_conv_name(net: torch.nn.Module, in_channels: int) -> str:
    """The name of the encoder's first convolution (the one that reads the image).

    Raises:
        ValueError: the encoder has no convolution reading ``in_channels`` channels.
    """
    import torch

    encoder = net.get_submodule("encoder")
    for name, module in encoder.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            if module.in_channels in (in_channels, in_channels + GUIDANCE_CHANNELS):
                return f"encoder.{name}"
            break
    raise ValueError(f"the encoder's first convolution does not read {in_channels} channels")


def add_guidance_channels(net: torch.nn.Module, in_channels: int) -> torch.nn.Module:
    """Give the network's first convolution ``GUIDANCE_CHANNELS`` zero-initialised inputs.

    In place; a network that has them already is returned unchanged. Only the
    first convolution's weight changes shape (same state_dict keys), so a
    checkpoint of a network with guidance loads into one built with guidance.

    Args:
        net: An smp network reading ``in_channels`` image channels.
        in_channels: Its image channels.

    Returns:
        ``net``, whose forward now takes ``(N, in_channels + 3, H, W)``.
    """
    import torch

    name = first_conv_name(net, in_channels)
    old = net.get_submodule(name)
    assert isinstance(old, torch.nn.Conv2d)  # narrowing for mypy: first_conv_name found it
    if old.in_channels == in_channels + GUIDANCE_CHANNELS:
        return net
    if old.groups != 1:
        raise ValueError(f"{name} is a grouped convolution: guidance channels are not supported")
    new = torch.nn.Conv2d(
        in_channels + GUIDANCE_CHANNELS,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]  # a tuple works
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :in_channels] = old.weight
        if old.bias is not None and new.bias is not None:
            new.bias.copy_(old.bias)
    parent, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent), attr, new)
    logger.info("added %d guidance channels to %s", GUIDANCE_CHANNELS, name)
    return net


def with_zero_guidance(
    net: torch.nn.Module, image: torch.Tensor, guidance: torch.Tensor | None = None
) -> torch.Tensor:
    """``net`` on ``image`` with ``guidance`` (zeros: automatic mode) as extra channels."""
    import torch

    if guidance is None:
        n, _, h, w = image.shape
        guidance = image.new_zeros((n, GUIDANCE_CHANNELS, h, w))
    out: torch.Tensor = net(torch.cat([image, guidance], dim=1))
    return out


def automatic_mode(net: torch.nn.Module, config: NetworkConfig) -> torch.nn.Module:
    """The draft network: ``net`` itself, or with the guidance fixed to zero inside it."""
    import torch

    if not config.guidance_channels:
        return net

    class AutomaticMode(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return with_zero_guidance(self.inner, image)

    return AutomaticMode(net).train(net.training)  # a new module would start in training mode


def guided_mode(net: torch.nn.Module) -> torch.nn.Module:
    """The click network: ``forward(image, guidance)`` with guidance as separate input."""
    import torch

    class GuidedMode(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, image: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
            return with_zero_guidance(self.inner, image, guidance)

    return GuidedMode(net).train(net.training)


def export_click_onnx(
    net: torch.nn.Module,
    path: Path,
    *,
    config: NetworkConfig,
    sample_hw: tuple[int, int] = (128, 128),
    opset: int = 17,
) -> None:
    """Export the click model: inputs ``image`` and ``guidance``, output ``logits``.

    ``image`` is ``(N, in_channels, H, W)`` normalised as for drafts, ``guidance``
    ``(N, 3, H, W)`` (``models.click_model.guidance_maps``); H, W multiples of the
    stride, all axes but the channels dynamic. Metadata as ``export_onnx``'s
    (``PredictorSpec``), plus ``prelabel.guidance_channels``.
    """
    import onnx
    import torch

    was_training = net.training
    wrapped = guided_mode(net).eval()
    image = torch.zeros(1, config.in_channels, *sample_hw)
    guidance = torch.zeros(1, GUIDANCE_CHANNELS, *sample_hw)
    axes = {0: "batch", 2: "height", 3: "width"}
    try:
        with atomic_target(path) as tmp:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    wrapped,
                    (image, guidance),
                    str(tmp),
                    dynamo=False,
                    input_names=[INPUT_NAME, GUIDANCE_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: axes, GUIDANCE_NAME: axes, OUTPUT_NAME: axes},
                    opset_version=opset,
                )
            model = onnx.load(str(tmp))
            spec = PredictorSpec(
                in_channels=config.in_channels,
                stride=config.stride,
                mean=tuple(config.mean),
                std=tuple(config.std),
                classes=config.classes,
            )
            metadata = {
                **spec.to_metadata(),
                f"{METADATA_PREFIX}guidance_channels": str(GUIDANCE_CHANNELS),
            }
            for key, value in metadata.items():
                model.metadata_props.add(key=key, value=value)
            onnx.checker.check_model(model)
            onnx.save(model, str(tmp))
    finally:
        net.train(was_training)
    logger.info("exported click model %s/%s to %s", config.arch, config.encoder, path)


def check_click_parity(
    net: torch.nn.Module,
    onnx_path: Path,
    *,
    config: NetworkConfig,
    hw: tuple[int, int],
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> float:
    """Compare torch and onnxruntime logits of the click model on random image and guidance.

    Returns:
        The largest absolute difference.

    Raises:
        ExportMismatch: shapes differ or a value is beyond ``atol + rtol * |torch value|``.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, config.in_channels, *hw, generator=generator)
    guidance = (torch.rand(2, GUIDANCE_CHANNELS, *hw, generator=generator) > 0.7).float()
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            expected = with_zero_guidance(net, image, guidance).numpy()
    finally:
        net.train(was_training)
    feeds = {INPUT_NAME: image.numpy(), GUIDANCE_NAME: guidance.numpy()}
    return compare_with_onnxruntime(onnx_path, feeds, expected, rtol=rtol, atol=atol)
