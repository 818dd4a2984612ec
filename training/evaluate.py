"""Held-out evaluation through the ONNX predictor: the exact code path that serves drafts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.predictor import OnnxPredictor
from prelabel.metrics import confusion_matrix, iou_per_class, mean_iou
from prelabel.schema import LabelSchema
from training.data import Sample


@dataclass(frozen=True)
class HeldOutScores:
    """A model version scored on held-out images.

    ``miou`` and ``per_class_iou`` come from one confusion matrix accumulated over
    all images (dataset-level IoU); ``per_image`` is each image's own mean IoU over
    the classes present in its truth or prediction, for paired comparisons.
    """

    miou: float | None
    per_class_iou: dict[str, float] = field(default_factory=dict)
    per_image: dict[str, float] = field(default_factory=dict)

    @property
    def images(self) -> int:
        """How many images were scored."""
        return len(self.per_image)

    def to_dict(self) -> dict[str, object]:
        """The JSON stored with the model version (``images`` included)."""
        return {
            "miou": self.miou,
            "per_class_iou": self.per_class_iou,
            "per_image": self.per_image,
            "images": self.images,
        }


def evaluate_onnx(onnx_path: Path, samples: Sequence[Sample], schema: LabelSchema) -> HeldOutScores:
    """Score an ONNX model on full-size held-out samples (``miou`` None without samples)."""
    if not samples:
        return HeldOutScores(miou=None)
    predictor = OnnxPredictor.from_path(onnx_path)
    total = np.zeros((schema.num_classes, schema.num_classes), dtype=np.int64)
    per_image: dict[str, float] = {}
    for sample in samples:
        prediction = predictor.predict(sample.image)
        confusion = confusion_matrix(
            prediction.mask,
            sample.mask,
            num_classes=schema.num_classes,
            ignore_index=schema.ignore_index,
        )
        per_image[sample.image_id] = mean_iou(confusion)
        total += confusion
    return HeldOutScores(
        miou=mean_iou(total),
        per_class_iou={str(k): v for k, v in iou_per_class(total).items()},
        per_image=per_image,
    )
