"""Response schemas derived from the core models keep exactly the published fields."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from prelabel.images import Image
from service.schemas import wire_model

PUBLISHED = {
    "ImageOut": {"id", "filename", "width", "height", "has_correction"},
    "UploadedImage": {"id", "filename"},
    "CorrectionOut": {
        *("id", "image_id", "draft_id", "model_version", "annotator", "lead_time_s"),
        *("supersedes", "created_at", "metrics", "clicks"),
        *("review_status", "review_reason", "resubmits", "reviewed_at"),
    },
    "TrainingRunOut": {
        *("id", "status", "trigger", "kind", "model_version", "decision", "error", "progress"),
        *("attempts", "retry_of", "candidate_miou", "serving_miou", "train_s", "created_at"),
        *("started_at", "finished_at"),
    },
    "ModelOut": {
        *("version", "status", "parent_version", "metrics", "reason", "onnx_sha256"),
        *("checkpoint_sha256", "training_run_id", "created_at", "promoted_at"),
        "trained_on_erased",
    },
}
PUBLISHED["ModelDetailOut"] = PUBLISHED["ModelOut"] | {
    *("config", "trained_on", "held_out", "review_states")
}
PUBLISHED["DraftComparison"] = {  # a correction's metrics
    *("per_class_iou", "mean_iou", "pixel_agreement", "changed_pixel_fraction"),
    *("changed_pixels", "changed_regions", "accepted", "strokes", "brush_strokes"),
    *("scratch_changed_pixels", "scratch_changed_regions"),
}


def test_derived_response_schemas_publish_the_same_fields(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]

    assert {name: set(schemas[name]["properties"]) for name in PUBLISHED} == PUBLISHED


def test_wire_model_refuses_to_hide_a_field_the_core_model_lacks() -> None:
    with pytest.raises(ValueError, match="no fields"):
        wire_model(Image, "Broken", hide={"blob_key", "nonexistent"}, doc="")
