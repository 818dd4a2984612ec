"""Numeric precision per model version: INT8 / FP16 variants, judged on held-out images.

After export, a training run builds the variants of its FP32 ONNX file
(``build_variant``: INT8 by onnxruntime's static quantization calibrated on the
project's own training images; FP16 with float32 inputs and outputs), scores each on
the held-out images and times it (``measure_trial``), and keeps the fastest variant
that ``judge`` accepts: at most ``MAX_MIOU_LOSS_POINTS`` of held-out mIoU lost and at
least ``MIN_SPEEDUP`` faster than FP32. The decision is stored with the version
(``metrics["precision"]``) and ``served_onnx`` names the artifact the service loads.

onnx and onnxruntime.quantization are imported inside the functions that need them;
no torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from models.predictor import INPUT_NAME, OnnxPredictor, RuntimeOptions, preprocess
from models.registry import ModelRecord
from prelabel.metrics import confusion_matrix, mean_iou

logger = logging.getLogger(__name__)

MAX_MIOU_LOSS_POINTS = 0.5
"""A variant may lose at most this much held-out mIoU, in points (mIoU x 100)."""
MIN_SPEEDUP = 1.05
"""A variant must be at least 5% faster than FP32 (p50): below that, timing noise decides."""
TIMING_SIDE_PX = 512


class Precision(StrEnum):
    """The numeric precision of a served ONNX artifact."""

    FP32 = "fp32"
    INT8 = "int8"
    FP16 = "fp16"
    BF16 = "bf16"


UNSUPPORTED = {
    Precision.BF16: "not built: onnxruntime's CPU execution provider has no bfloat16 "
    "convolution kernels (the CPU's AVX512-BF16/AMX would need the oneDNN provider)",
}


class PrecisionTrial(BaseModel):
    """One artifact scored and timed on the same held-out images.

    Attributes:
        precision: The artifact's precision.
        miou: Held-out mIoU in [0, 1] (dataset-level), None without held-out images.
        p50_ms: Median draft time of a ``TIMING_SIDE_PX`` square image.
        error: Why the variant could not be built or run (then nothing else is set).
    """

    model_config = ConfigDict(frozen=True)

    precision: Precision
    miou: float | None = None
    p50_ms: float | None = None
    error: str | None = None


class PrecisionDecision(BaseModel):
    """What a training run chose, stored with the version as ``metrics["precision"]``.

    Attributes:
        chosen: The precision the service serves.
        onnx_key: Blob key of the chosen artifact (None: FP32, the record's ``onnx_key``).
        onnx_sha256: Its sha256 (None for FP32).
        trials: FP32 first, then each candidate.
        verdicts: Why each candidate was adopted or refused.
        max_miou_loss_points: The rule's bound when it was applied.
    """

    model_config = ConfigDict(frozen=True)

    chosen: Precision = Precision.FP32
    onnx_key: str | None = None
    onnx_sha256: str | None = None
    trials: list[PrecisionTrial] = []
    verdicts: dict[str, str] = {}
    max_miou_loss_points: float = MAX_MIOU_LOSS_POINTS


def judge(
    baseline: PrecisionTrial,
    trial: PrecisionTrial,
    *,
    max_loss_points: float = MAX_MIOU_LOSS_POINTS,
    min_speedup: float = MIN_SPEEDUP,
) -> tuple[bool, str]:
    """Whether ``trial`` may replace the FP32 ``baseline``, and why.

    Adopted only if it ran, both have a held-out mIoU, it loses at most
    ``max_loss_points`` points of it, and its p50 is ``min_speedup`` times faster.
    """
    if trial.error is not None:
        return False, trial.error
    if baseline.miou is None or trial.miou is None:
        return False, "refused: no held-out images to check its quality on"
    if baseline.p50_ms is None or trial.p50_ms is None:
        return False, "refused: not timed"
    loss = (baseline.miou - trial.miou) * 100
    speedup = baseline.p50_ms / trial.p50_ms
    facts = f"mIoU {loss:+.2f} points lost, {speedup:.2f}x the speed of fp32"
    if loss > max_loss_points:
        return False, f"refused: {facts}; more than {max_loss_points} points lost"
    if speedup < min_speedup:
        return False, f"refused: {facts}; not at least {min_speedup}x faster"
    return True, f"adopted: {facts}"


def choose(
    baseline: PrecisionTrial,
    trials: Sequence[PrecisionTrial],
    *,
    max_loss_points: float = MAX_MIOU_LOSS_POINTS,
) -> tuple[Precision, dict[str, str]]:
    """The fastest trial ``judge`` adopts (FP32 when none), with every verdict."""
    verdicts: dict[str, str] = {}
    adopted: list[PrecisionTrial] = []
    for trial in trials:
        ok, reason = judge(baseline, trial, max_loss_points=max_loss_points)
        verdicts[trial.precision.value] = reason
        if ok:
            adopted.append(trial)
    if not adopted:
        return Precision.FP32, verdicts
    best = min(adopted, key=lambda t: t.p50_ms if t.p50_ms is not None else float("inf"))
    return best.precision, verdicts


class _Calibration:
    """onnxruntime's ``CalibrationDataReader`` protocol over preprocessed images."""

    def __init__(self, tensors: Sequence[npt.NDArray[np.float32]]) -> None:
        self._tensors: Iterator[npt.NDArray[np.float32]] = iter(tensors)

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        tensor = next(self._tensors, None)
        return None if tensor is None else {INPUT_NAME: tensor}


def build_variant(
    fp32: Path,
    precision: Precision,
    out: Path,
    *,
    calibration: Sequence[npt.NDArray[np.uint8]] = (),
) -> None:
    """Write the ``precision`` variant of the FP32 model ``fp32`` to ``out``.

    INT8: static quantization (QDQ, per-channel signed weights, unsigned activations,
    MinMax ranges) calibrated on ``calibration`` images, after onnxruntime's
    pre-processing (shape inference, graph optimisation). FP16: weights and activations
    in float16, inputs and outputs kept float32. The ``prelabel.*`` metadata is copied.

    Raises:
        ValueError: ``precision`` has no builder here, or INT8 without calibration images.
    """
    import onnx

    spec = OnnxPredictor.from_path(fp32, threads=1).spec
    if precision is Precision.INT8:
        if not calibration:
            raise ValueError("INT8 needs calibration images; got none")
        _quantize_int8(fp32, out, [preprocess(image, spec) for image in calibration])
    elif precision is Precision.FP16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
        onnx.save(model, str(out))
    else:
        raise ValueError(f"no builder for {precision.value}; choose from int8, fp16")
    _copy_metadata(fp32, out)


def _quantize_int8(fp32: Path, out: Path, tensors: list[npt.NDArray[np.float32]]) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(
        str(prepared),
        str(out),
        _Calibration(tensors),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink(missing_ok=True)


def _copy_metadata(source: Path, target: Path) -> None:
    import onnx

    model = onnx.load(str(target))
    have = {entry.key for entry in model.metadata_props}
    for entry in onnx.load(str(source)).metadata_props:
        if entry.key not in have:
            model.metadata_props.add(key=entry.key, value=entry.value)
    onnx.save(model, str(target))


def measure_trial(
    path: Path,
    precision: Precision,
    held_out: Sequence[tuple[npt.NDArray[np.uint8], npt.NDArray[np.integer]]],
    *,
    num_classes: int,
    ignore_index: int,
    runtime: RuntimeOptions | None = None,
    runs: int = 5,
) -> PrecisionTrial:
    """Score ``path`` on ``held_out`` (image, truth mask) pairs and time a 512² draft.

    The timed image is the first held-out image tiled to ``TIMING_SIDE_PX`` square (a
    grey mid-level image without held-out images); one untimed warm-up run.
    """
    predictor = OnnxPredictor.from_path(path, runtime=runtime)
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    for image, truth in held_out:
        total += confusion_matrix(
            predictor.predict(image).mask,
            truth,
            num_classes=num_classes,
            ignore_index=ignore_index,
        )
    sample = _timing_image(held_out[0][0] if held_out else None)
    predictor.predict(sample)
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        predictor.predict(sample)
        seconds.append(time.perf_counter() - started)
    return PrecisionTrial(
        precision=precision,
        miou=mean_iou(total) if held_out else None,
        p50_ms=round(float(np.median(seconds)) * 1e3, 3),
    )


def _timing_image(image: npt.NDArray[np.uint8] | None) -> npt.NDArray[np.uint8]:
    side = TIMING_SIDE_PX
    if image is None:
        return np.full((side, side), 128, dtype=np.uint8)
    reps = (-(-side // image.shape[0]), -(-side // image.shape[1])) + (1,) * (image.ndim - 2)
    return np.ascontiguousarray(np.tile(image, reps)[:side, :side])


def select_precision(
    fp32: Path,
    workdir: Path,
    *,
    calibration: Sequence[npt.NDArray[np.uint8]],
    held_out: Sequence[tuple[npt.NDArray[np.uint8], npt.NDArray[np.integer]]],
    num_classes: int,
    ignore_index: int,
    candidates: Sequence[Precision] = (Precision.INT8, Precision.FP16),
    max_loss_points: float = MAX_MIOU_LOSS_POINTS,
) -> tuple[PrecisionDecision, Path]:
    """Build, score and time each candidate against FP32; decide which one serves.

    Returns:
        The decision (without blob key and checksum: the caller stores the artifact)
        and the path of the chosen artifact (``fp32`` itself when FP32 stays).
    """

    def measure(path: Path, precision: Precision) -> PrecisionTrial:
        return measure_trial(
            path, precision, held_out, num_classes=num_classes, ignore_index=ignore_index
        )

    baseline = measure(fp32, Precision.FP32)
    trials: list[PrecisionTrial] = []
    paths = {Precision.FP32: fp32}
    for precision in candidates:
        if precision in UNSUPPORTED:
            trials.append(PrecisionTrial(precision=precision, error=UNSUPPORTED[precision]))
            continue
        path = workdir / f"model.{precision.value}.onnx"
        try:
            build_variant(fp32, precision, path, calibration=calibration)
            trials.append(measure(path, precision))
        except Exception as exc:  # any failure of a variant keeps FP32; the reason is recorded
            logger.warning("precision %s not usable: %s", precision.value, exc)
            trials.append(PrecisionTrial(precision=precision, error=f"failed: {exc}"[:500]))
            continue
        paths[precision] = path
    chosen, verdicts = choose(baseline, trials, max_loss_points=max_loss_points)
    logger.info("precision %s chosen: %s", chosen.value, verdicts)
    decision = PrecisionDecision(
        chosen=chosen,
        trials=[baseline, *trials],
        verdicts=verdicts,
        max_miou_loss_points=max_loss_points,
    )
    return decision, paths[chosen]


def served_onnx(record: ModelRecord) -> tuple[str, str]:
    """Blob key and sha256 of the artifact that serves ``record``: its chosen precision's."""
    decision = PrecisionDecision.model_validate(record.metrics.get("precision") or {})
    if decision.onnx_key and decision.onnx_sha256:
        return decision.onnx_key, decision.onnx_sha256
    return record.onnx_key, record.onnx_sha256


def served_precision(record: ModelRecord) -> Precision:
    """The precision ``record`` is served in (FP32 for versions decided before this existed)."""
    return PrecisionDecision.model_validate(record.metrics.get("precision") or {}).chosen
