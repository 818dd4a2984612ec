"""Held-out evaluation through the ONNX predictor: the exact code path that serves drafts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.predictor import OnnxPredictor
from prelabel.metrics import confusion_matrix, iou_per_class, mean_iou
from prelabel.schema import LabelSchema
from training.data import Sample


def evaluate_onnx(
    onnx_path: Path, samples: Sequence[Sample], schema: LabelSchema
) -> dict[str, object]:
    """Score an ONNX model on full-size held-out samples.

    Returns:
        ``{"miou": float | None, "per_class_iou": {class_id: iou}, "images": n}``;
        ``miou`` is None when there are no samples. The confusion matrix is
        accumulated over all images before IoU is taken (dataset-level IoU).
    """
    if not samples:
        return {"miou": None, "per_class_iou": {}, "images": 0}
    predictor = OnnxPredictor.from_path(onnx_path)
    confusion = np.zeros((schema.num_classes, schema.num_classes), dtype=np.int64)
    for sample in samples:
        prediction = predictor.predict(sample.image)
        confusion += confusion_matrix(
            prediction.mask,
            sample.mask,
            num_classes=schema.num_classes,
            ignore_index=schema.ignore_index,
        )
    return {
        "miou": mean_iou(confusion),
        "per_class_iou": {str(k): v for k, v in iou_per_class(confusion).items()},
        "images": len(samples),
    }
