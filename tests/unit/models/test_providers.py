"""The predictor's execution providers: CUDA when onnxruntime-gpu and a GPU are there."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.predictor import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    OnnxPredictor,
    choose_providers,
    visible_cuda_devices,
)
from tests.unit.models.test_predictor import GREY, write_conv_model

GPU_BUILD = ["TensorrtExecutionProvider", CUDA_PROVIDER, CPU_PROVIDER]
CPU_BUILD = ["AzureExecutionProvider", CPU_PROVIDER]


@pytest.mark.parametrize(
    ("available", "cuda_devices", "requested", "expected"),
    [
        (GPU_BUILD, 1, "auto", [CUDA_PROVIDER, CPU_PROVIDER]),
        (GPU_BUILD, 0, "auto", [CPU_PROVIDER]),  # onnxruntime-gpu on a host without a GPU
        (CPU_BUILD, 2, "auto", [CPU_PROVIDER]),  # a GPU, but plain onnxruntime
        (GPU_BUILD, 1, "cpu", [CPU_PROVIDER]),  # the setting forces the CPU
        (GPU_BUILD, 4, "cuda", [CUDA_PROVIDER, CPU_PROVIDER]),
    ],
)
def test_cuda_comes_first_only_with_onnxruntime_gpu_and_a_visible_gpu(
    available: list[str], cuda_devices: int, requested: str, expected: list[str]
) -> None:
    chosen = choose_providers(available, cuda_devices=cuda_devices, requested=requested)  # type: ignore[arg-type]
    assert chosen == expected


def test_asking_for_cuda_where_it_cannot_run_fails_clearly() -> None:
    with pytest.raises(ValueError, match="needs onnxruntime-gpu and a visible GPU"):
        choose_providers(CPU_BUILD, cuda_devices=1, requested="cuda")
    with pytest.raises(ValueError, match="unknown predictor device 'tpu'"):
        choose_providers(GPU_BUILD, cuda_devices=1, requested="tpu")  # type: ignore[arg-type]


def test_this_machine_drafts_on_the_cpu_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tiny_onnx = write_conv_model(tmp_path / "sign.onnx", np.array([[1.0], [-1.0]]), GREY)
    gpu = CUDA_PROVIDER in ort.get_available_providers() and visible_cuda_devices() > 0
    with caplog.at_level(logging.INFO, logger="models.predictor"):
        predictor = OnnxPredictor.from_path(tiny_onnx)
    assert predictor.providers == ([CUDA_PROVIDER, CPU_PROVIDER] if gpu else [CPU_PROVIDER])
    assert f"on {', '.join(predictor.providers)}" in caplog.text
    forced = OnnxPredictor.from_path(tiny_onnx, device="cpu")
    assert forced.providers == [CPU_PROVIDER]
    image = np.zeros((40, 40), dtype=np.uint8)
    assert forced.predict(image).mask.shape == (40, 40)
