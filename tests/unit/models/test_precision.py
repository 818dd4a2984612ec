"""The precision rule (≤ 0.5 point of held-out mIoU lost, and faster) and the INT8/FP16 builds."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from models.precision import (
    Precision,
    PrecisionDecision,
    PrecisionTrial,
    build_variant,
    choose,
    judge,
    served_onnx,
    served_precision,
)
from models.predictor import OnnxPredictor, PredictorSpec
from models.registry import ModelRecord
from prelabel.tables import ModelStatus
from tests.unit.models.test_predictor import write_conv_model

FP32 = PrecisionTrial(precision=Precision.FP32, miou=0.80, p50_ms=100.0)


def trial(precision: Precision, miou: float, p50_ms: float) -> PrecisionTrial:
    return PrecisionTrial(precision=precision, miou=miou, p50_ms=p50_ms)


def test_a_precision_losing_more_than_half_a_point_is_refused_even_if_much_faster() -> None:
    ok, reason = judge(FP32, trial(Precision.INT8, 0.794, 40.0))
    assert not ok and "more than 0.5 points lost" in reason


def test_a_precision_within_half_a_point_and_faster_is_adopted() -> None:
    ok, reason = judge(FP32, trial(Precision.INT8, 0.796, 70.0))
    assert ok and reason.startswith("adopted")


def test_a_precision_that_is_not_faster_is_refused() -> None:
    ok, reason = judge(FP32, trial(Precision.FP16, 0.80, 160.0))
    assert not ok and "not at least" in reason


def test_no_held_out_images_means_no_lower_precision() -> None:
    baseline = PrecisionTrial(precision=Precision.FP32, miou=None, p50_ms=100.0)
    ok, reason = judge(baseline, PrecisionTrial(precision=Precision.INT8, p50_ms=50.0))
    assert not ok and "no held-out images" in reason


def test_choose_takes_the_fastest_adopted_and_records_every_verdict() -> None:
    trials = [
        trial(Precision.INT8, 0.799, 60.0),
        trial(Precision.FP16, 0.80, 80.0),
        PrecisionTrial(precision=Precision.BF16, error="not built"),
    ]
    chosen, verdicts = choose(FP32, trials)
    assert chosen is Precision.INT8
    assert set(verdicts) == {"int8", "fp16", "bf16"} and verdicts["bf16"] == "not built"
    assert choose(FP32, [trial(Precision.INT8, 0.70, 10.0)])[0] is Precision.FP32


def test_int8_and_fp16_variants_keep_the_metadata_and_agree_with_fp32(tmp_path: Path) -> None:
    spec = PredictorSpec(in_channels=1, stride=8, mean=(0.5,), std=(0.25,), classes=2)
    fp32 = write_conv_model(tmp_path / "m.onnx", np.array([[1.0], [-1.0]]), spec)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 40), dtype=np.uint8) for _ in range(4)]
    expected = OnnxPredictor.from_path(fp32, threads=1).predict(images[0]).mask
    for precision in (Precision.INT8, Precision.FP16):
        out = tmp_path / f"m.{precision.value}.onnx"
        build_variant(fp32, precision, out, calibration=images)
        predictor = OnnxPredictor.from_path(out, threads=1)
        assert predictor.spec == spec
        agreement = float((predictor.predict(images[0]).mask == expected).mean())
        assert agreement > 0.97, (precision, agreement)
    with pytest.raises(ValueError, match="calibration"):
        build_variant(fp32, Precision.INT8, tmp_path / "x.onnx", calibration=[])


def test_the_service_loads_the_chosen_artifact() -> None:
    record = ModelRecord(
        project_id="p",
        parent_version=None,
        onnx_key="fp32.onnx",
        onnx_sha256="a" * 64,
        checkpoint_key="m.pt",
        checkpoint_sha256="b" * 64,
        config={},
        metrics={},
        trained_on=[],
        held_out=[],
        version="v1",
        status=ModelStatus.SERVING,
        reason=None,
        created_at=datetime.now(UTC),
        promoted_at=None,
    )
    assert served_onnx(record) == ("fp32.onnx", "a" * 64)
    assert served_precision(record) is Precision.FP32
    decision = PrecisionDecision(chosen=Precision.INT8, onnx_key="int8.onnx", onnx_sha256="c" * 64)
    int8 = record.model_copy(update={"metrics": {"precision": decision.model_dump(mode="json")}})
    assert served_onnx(int8) == ("int8.onnx", "c" * 64)
    assert served_precision(int8) is Precision.INT8
