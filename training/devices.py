"""Where a training process computes: its device and its precision, chosen in one place.

``choose_device`` and ``choose_precision`` are pure functions of what was asked for and
what the machine offers, so that the rule is tested on any machine; ``detect_placement``
asks torch what it offers and logs the choice. The default is automatic: CUDA with mixed
precision (bf16 where the GPU supports it, else fp16 with a gradient scaler) when torch
sees a GPU, float32 on the CPU otherwise. A setting can force the CPU.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DeviceRequest = Literal["auto", "cpu", "cuda"]
PrecisionRequest = Literal["auto", "fp32", "bf16", "fp16"]
Precision = Literal["fp32", "bf16", "fp16"]
DEVICE_REQUESTS: tuple[DeviceRequest, ...] = ("auto", "cpu", "cuda")
PRECISION_REQUESTS: tuple[PrecisionRequest, ...] = ("auto", "fp32", "bf16", "fp16")


def choose_device(requested: DeviceRequest, *, cuda_devices: int) -> Literal["cpu", "cuda"]:
    """The device kind a training process uses.

    Args:
        requested: ``auto`` (CUDA when there is a device), ``cpu`` or ``cuda``.
        cuda_devices: How many CUDA devices torch sees.

    Raises:
        ValueError: ``cuda`` was asked for and there is none, or ``requested`` is unknown.
    """
    if requested not in DEVICE_REQUESTS:
        raise ValueError(f"unknown training device {requested!r}; choose from {DEVICE_REQUESTS}")
    if requested == "cuda" and cuda_devices < 1:
        raise ValueError("training device 'cuda' was asked for, but torch sees no CUDA device")
    if requested == "cpu" or cuda_devices < 1:
        return "cpu"
    return "cuda"


def choose_precision(
    requested: PrecisionRequest, *, device: Literal["cpu", "cuda"], bf16_supported: bool
) -> Precision:
    """The arithmetic of the forward pass: float32, or autocast to bf16 / fp16.

    ``auto`` is float32 on the CPU (CPU autocast is slower than float32 for these small
    convolutional networks) and mixed precision on CUDA: bf16 where supported (Ampere and
    later; float32's range, no loss scaling), else fp16 with a ``GradScaler``.

    Raises:
        ValueError: fp16 on the CPU, bf16 on a GPU without it, or an unknown request.
    """
    if requested not in PRECISION_REQUESTS:
        raise ValueError(
            f"unknown training precision {requested!r}; choose from {PRECISION_REQUESTS}"
        )
    if requested == "auto":
        if device == "cpu":
            return "fp32"
        return "bf16" if bf16_supported else "fp16"
    if requested == "fp16" and device == "cpu":
        raise ValueError("training precision 'fp16' needs CUDA; use bf16 or fp32 on the CPU")
    if requested == "bf16" and device == "cuda" and not bf16_supported:
        raise ValueError("this GPU does not support bf16; use fp16 or fp32")
    return requested


@dataclass(frozen=True)
class Placement:
    """One training process's device (``cpu``, ``cuda:0``, ...) and precision."""

    device: str = "cpu"
    precision: Precision = "fp32"

    @property
    def device_type(self) -> Literal["cpu", "cuda"]:
        """``cpu`` or ``cuda``, as ``torch.autocast`` names it."""
        return "cuda" if self.device.startswith("cuda") else "cpu"


def detect_placement(
    device: DeviceRequest = "auto", precision: PrecisionRequest = "auto", *, local_rank: int = 0
) -> Placement:
    """What torch offers here, turned into a placement by the two rules above (logged).

    On CUDA, process ``local_rank`` of a node takes GPU ``local_rank``.
    """
    import torch

    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    kind = choose_device(device, cuda_devices=cuda_devices)
    bf16 = kind == "cuda" and bool(torch.cuda.is_bf16_supported())
    chosen = choose_precision(precision, device=kind, bf16_supported=bf16)
    name = f"cuda:{local_rank % cuda_devices}" if kind == "cuda" else "cpu"
    logger.info(
        "training on %s in %s (asked: device %s, precision %s; %d CUDA devices seen)",
        name,
        chosen,
        device,
        precision,
        cuda_devices,
    )
    return Placement(device=name, precision=chosen)


def autocast(placement: Placement) -> AbstractContextManager[object]:
    """The forward pass's autocast context (none in float32)."""
    import torch

    if placement.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if placement.precision == "bf16" else torch.float16
    return torch.autocast(device_type=placement.device_type, dtype=dtype)


def grad_scaler(placement: Placement) -> torch.amp.GradScaler:
    """A loss scaler, active only for fp16 (bf16 and float32 do not underflow like fp16)."""
    import torch

    return torch.amp.GradScaler(placement.device_type, enabled=placement.precision == "fp16")
