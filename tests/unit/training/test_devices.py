"""The training device and precision: one rule each, pure, and what this machine gets."""

from __future__ import annotations

import pytest

from training.devices import Placement, choose_device, choose_precision, detect_placement


@pytest.mark.parametrize(
    ("requested", "cuda_devices", "expected"),
    [
        ("auto", 0, "cpu"),
        ("auto", 1, "cuda"),
        ("auto", 8, "cuda"),
        ("cpu", 0, "cpu"),
        ("cpu", 2, "cpu"),  # the setting forces the CPU on a GPU machine
        ("cuda", 1, "cuda"),
    ],
)
def test_the_device_is_cuda_when_there_is_one_unless_the_cpu_is_forced(
    requested: str, cuda_devices: int, expected: str
) -> None:
    assert choose_device(requested, cuda_devices=cuda_devices) == expected  # type: ignore[arg-type]


def test_asking_for_cuda_without_a_gpu_or_for_an_unknown_device_fails_clearly() -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        choose_device("cuda", cuda_devices=0)
    with pytest.raises(ValueError, match="unknown training device 'tpu'"):
        choose_device("tpu", cuda_devices=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("requested", "device", "bf16", "expected"),
    [
        ("auto", "cpu", False, "fp32"),
        ("auto", "cuda", True, "bf16"),  # Ampere and later
        ("auto", "cuda", False, "fp16"),  # older GPUs: fp16 with a gradient scaler
        ("fp32", "cuda", True, "fp32"),
        ("bf16", "cpu", False, "bf16"),
        ("fp16", "cuda", False, "fp16"),
    ],
)
def test_mixed_precision_is_automatic_on_cuda_only(
    requested: str, device: str, bf16: bool, expected: str
) -> None:
    chosen = choose_precision(requested, device=device, bf16_supported=bf16)  # type: ignore[arg-type]
    assert chosen == expected


def test_impossible_precisions_are_refused() -> None:
    with pytest.raises(ValueError, match="'fp16' needs CUDA"):
        choose_precision("fp16", device="cpu", bf16_supported=False)
    with pytest.raises(ValueError, match="does not support bf16"):
        choose_precision("bf16", device="cuda", bf16_supported=False)
    with pytest.raises(ValueError, match="unknown training precision 'fp8'"):
        choose_precision("fp8", device="cuda", bf16_supported=True)  # type: ignore[arg-type]


def test_the_placement_follows_what_torch_sees_and_the_cpu_can_be_forced() -> None:
    import torch

    detected = detect_placement()
    if torch.cuda.is_available():
        assert detected.device == "cuda:0" and detected.precision in ("bf16", "fp16")
    else:  # this project's machines: the CPU, in float32
        assert detected == Placement(device="cpu", precision="fp32")
        with pytest.raises(ValueError, match="no CUDA device"):
            detect_placement("cuda")
    assert detect_placement("cpu") == Placement(device="cpu", precision="fp32")
    assert detect_placement("cpu", "bf16") == Placement(device="cpu", precision="bf16")
