"""Session options from settings reach onnxruntime; bad values are refused clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.predictor import OnnxPredictor, PredictorSpec, RuntimeOptions
from prelabel.settings import ServiceSettings
from service.predictors import runtime_options
from tests.unit.models.test_predictor import write_conv_model

GREY = PredictorSpec(in_channels=1, stride=8, mean=(0.5,), std=(0.25,), classes=2)


def test_options_reach_the_session(tmp_path: Path) -> None:
    path = write_conv_model(tmp_path / "m.onnx", np.array([[1.0], [-1.0]]), GREY)
    chosen = RuntimeOptions(
        threads=1, graph_optimization="basic", memory_pattern=False, spinning=False
    )
    predictor = OnnxPredictor.from_path(path, runtime=chosen)
    options = predictor.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.enable_mem_pattern is False
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert predictor.session.get_providers() == ["CPUExecutionProvider"]
    assert predictor.predict(np.zeros((9, 9), dtype=np.uint8)).mask.shape == (9, 9)


def test_settings_map_to_runtime_options() -> None:
    settings = ServiceSettings(
        predictor_threads=2, predictor_spinning=False, predictor_graph_optimization="extended"
    )
    assert runtime_options(settings) == RuntimeOptions(
        threads=2, spinning=False, graph_optimization="extended"
    )


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="threads"):
        RuntimeOptions(threads=-1)
    with pytest.raises(ValueError, match="graph_optimization"):
        RuntimeOptions(graph_optimization="max")  # type: ignore[arg-type]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ValueError, match="onnxruntime-gpu"):
            RuntimeOptions(device="cuda").providers()
        assert RuntimeOptions(device="auto").providers() == ["CPUExecutionProvider"]
