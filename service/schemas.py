"""Request and response bodies of the HTTP API (what crosses the wire, nothing more)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from prelabel.codecs import CocoRle
from prelabel.jobs import RunKind, RunStatus, RunTrigger
from prelabel.policy import TrainingPolicy
from prelabel.schema import LabelClass


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    version: str


class ProjectOut(BaseModel):
    id: str
    name: str
    classes: list[LabelClass]
    ignore_index: int
    background_id: int
    acceptance_threshold: float
    training_policy: TrainingPolicy
    pinned_version: str | None
    created_at: datetime


class ImageOut(BaseModel):
    id: str
    filename: str
    width: int
    height: int
    has_correction: bool


class UploadedImage(BaseModel):
    id: str
    filename: str


class UploadResult(BaseModel):
    images: list[UploadedImage]


class DraftJSON(BaseModel):
    """A draft as per-class COCO RLE; keys of ``classes`` are class ids (as strings)."""

    draft_id: str
    model_version: str | None
    width: int
    height: int
    classes: dict[str, CocoRle]


class CorrectionJSON(BaseModel):
    """A correction as per-class COCO RLE; pixels no class covers are background."""

    model_config = ConfigDict(extra="forbid")

    annotator: str = Field(min_length=1, max_length=200)
    classes: dict[str, CocoRle]
    lead_time_s: float | None = Field(default=None, ge=0)
    draft_id: str | None = None


class DraftMetricsOut(BaseModel):
    per_class_iou: dict[str, float]
    mean_iou: float
    pixel_agreement: float
    changed_pixel_fraction: float
    changed_pixels: int
    changed_regions: int
    accepted: bool
    strokes: int | None = None


class CorrectionOut(BaseModel):
    id: str
    image_id: str
    draft_id: str | None
    model_version: str | None
    annotator: str
    lead_time_s: float | None
    supersedes: str | None
    created_at: datetime
    metrics: DraftMetricsOut | None


class TrainingRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: RunKind = RunKind.INCREMENTAL


class TrainingRunOut(BaseModel):
    id: str
    status: RunStatus
    trigger: RunTrigger
    kind: RunKind
    model_version: str | None
    decision: str | None
    error: str | None
    progress: dict[str, Any]
    attempts: int
    retry_of: str | None
    candidate_miou: float | None
    serving_miou: float | None
    train_s: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ModelOut(BaseModel):
    version: str
    status: Literal["serving", "candidate", "retired", "rejected"]
    parent_version: str | None
    metrics: dict[str, Any]
    reason: str | None
    onnx_sha256: str
    checkpoint_sha256: str
    training_run_id: str | None
    created_at: datetime
    promoted_at: datetime | None


class ModelDetailOut(ModelOut):
    config: dict[str, Any]
    trained_on: list[str]
    held_out: list[str]


class ModelAction(BaseModel):
    """Who asks for a manual promotion, rollback or pin, and why (kept in the audit trail)."""

    model_config = ConfigDict(extra="forbid")

    actor: str = Field(min_length=1, max_length=200)
    reason: str = Field(default="", max_length=2000)


class AuditEventOut(BaseModel):
    id: str
    actor: str
    action: str
    details: dict[str, Any]
    created_at: datetime
