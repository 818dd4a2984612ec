"""Request and response bodies of the HTTP API (what crosses the wire, nothing more).

Responses that show a core record are derived from its model by
:func:`wire_model`: the same fields, types and descriptions, less the internal
ones (storage keys, owning project, worker). Routes return the core objects and
FastAPI serializes them through these models.
"""

from __future__ import annotations

from collections.abc import Collection
from copy import copy
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from models.registry import ModelRecord
from prelabel.codecs import CocoRle
from prelabel.corrections import Correction
from prelabel.images import Image
from prelabel.jobs import Job, RunKind
from prelabel.policy import TrainingPolicy
from prelabel.refinement import MAX_CLICKS_PER_KIND
from prelabel.reviewing import ReviewDecision
from prelabel.reviews import Review
from prelabel.schema import LabelClass


def wire_model(
    core: type[BaseModel], name: str, *, hide: Collection[str], doc: str
) -> type[BaseModel]:
    """A response model with the fields of ``core`` except ``hide``.

    Fields keep their types, defaults and descriptions; the model reads any object
    with those attributes (the core record itself).

    Raises:
        ValueError: ``hide`` names a field ``core`` does not have.
    """
    unknown = set(hide) - set(core.model_fields)
    if unknown:
        raise ValueError(f"{core.__name__} has no fields {sorted(unknown)}")
    fields: dict[str, Any] = {
        field: (info.annotation, copy(info))
        for field, info in core.model_fields.items()
        if field not in hide
    }
    config = ConfigDict(from_attributes=True)
    return create_model(name, __config__=config, __doc__=doc, **fields)


if TYPE_CHECKING:
    # Statically, a response model is the core model it is derived from: routes
    # return core objects, and FastAPI drops the hidden fields when it serializes.
    ImageOut = Image
    UploadedImage = Image
    CorrectionOut = Correction
    TrainingRunOut = Job
    ModelOut = ModelRecord
    ModelDetailOut = ModelRecord
else:
    ImageOut = wire_model(
        Image,
        "ImageOut",
        hide={"project_id", "channels", "blob_key", "created_at"},
        doc="An image, with whether it has a current correction.",
    )
    UploadedImage = wire_model(
        Image,
        "UploadedImage",
        hide={
            "project_id",
            "width",
            "height",
            "channels",
            "blob_key",
            "has_correction",
            "created_at",
        },
        doc="An image just uploaded.",
    )
    CorrectionOut = wire_model(
        Correction,
        "CorrectionOut",
        hide={"project_id", "source", "mask_key", "is_current"},
        doc="A correction with its provenance and how it differs from its draft.",
    )
    TrainingRunOut = wire_model(
        Job,
        "TrainingRunOut",
        hide={"project_id", "task", "worker", "params"},
        doc="A training run: status, progress, the version it produced and the decision.",
    )
    ModelOut = wire_model(
        ModelRecord,
        "ModelOut",
        hide={
            "project_id",
            "onnx_key",
            "checkpoint_key",
            "config",
            "trained_on",
            "held_out",
            "review_states",
        },
        doc="A model version: status, scores, lineage, artifact checksums.",
    )
    ModelDetailOut = wire_model(
        ModelRecord,
        "ModelDetailOut",
        hide={"project_id", "onnx_key", "checkpoint_key"},
        doc="A model version with its config, training corrections and held-out images.",
    )


class UploadResult(BaseModel):
    images: list[UploadedImage]


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    version: str


class Readiness(BaseModel):
    """Whether this replica can serve: each store ``ok`` or what went wrong."""

    status: Literal["ready", "unavailable"]
    database: str
    blob_store: str


class ProjectOut(BaseModel):
    id: str
    name: str
    classes: list[LabelClass]
    ignore_index: int
    background_id: int
    acceptance_threshold: float
    training_policy: TrainingPolicy
    pinned_version: str | None
    review_required: bool
    review_share: float
    min_reviewers: int
    created_at: datetime


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

    annotator: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="whom the mask is attributed to; default: the caller. Naming someone "
        "else needs the correct_on_behalf permission (ml-engineer, manager)",
    )
    classes: dict[str, CocoRle]
    lead_time_s: float | None = Field(default=None, ge=0)
    draft_id: str | None = None


class BulkDraftsRequest(BaseModel):
    """What a bulk drafts job drafts: the images listed, or (``image_ids`` left out) every
    image without a correction."""

    model_config = ConfigDict(extra="forbid")

    image_ids: (
        list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z_-]+$")]] | None
    ) = Field(default=None, min_length=1, max_length=100_000)


class TrainingRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: RunKind = RunKind.INCREMENTAL


class ModelAction(BaseModel):
    """Who asks for a manual promotion, rollback or pin, and why (kept in the audit trail)."""

    model_config = ConfigDict(extra="forbid")

    actor: str | None = Field(
        default=None,
        max_length=200,
        description="deprecated and ignored: the audit trail records the authenticated caller",
    )
    reason: str = Field(default="", max_length=2000)


class RefineRequest(BaseModel):
    """``POST …/refine``: clicks on one class, in pixel coordinates (``[x, y]``, from top-left).

    ``base`` is ``"draft"`` (the serving version's draft, the default), ``"correction"``
    (the current correction) or the id of one of the image's drafts.
    """

    model_config = ConfigDict(extra="forbid")

    class_id: int | None = Field(default=None, ge=0)
    label: str | None = Field(default=None, min_length=1, max_length=200)
    positive: list[tuple[int, int]] = Field(default_factory=list, max_length=MAX_CLICKS_PER_KIND)
    negative: list[tuple[int, int]] = Field(default_factory=list, max_length=MAX_CLICKS_PER_KIND)
    box: tuple[int, int, int, int] | None = Field(
        default=None, description="[x1, y1, x2, y2], corners inclusive"
    )
    base: str = Field(default="draft", min_length=1, max_length=64)


class RefinedJSON(BaseModel):
    """A refined mask as per-class COCO RLE, like a draft, with the refinement's provenance."""

    refinement_id: str
    draft_id: str | None
    model_version: str | None
    method: str
    base: str
    clicks: int
    width: int
    height: int
    classes: dict[str, CocoRle]


class ReviewJSON(BaseModel):
    """``POST …/corrections/{correction}/review`` as JSON; ``classes`` (per-class COCO RLE,
    like a JSON correction) is the reviewer's edited mask, with ``approve`` only."""

    model_config = ConfigDict(extra="forbid")

    decision: ReviewDecision
    comment: str = Field(default="", max_length=5000)
    review_time_s: float | None = Field(
        default=None, ge=0, description="time the reviewer spent on it, as its client measured"
    )
    classes: dict[str, CocoRle] | None = None


class ReviewOutcomeOut(BaseModel):
    """What a review did; ``edited_correction`` is the reviewer's mask, now current."""

    review: Review
    correction: CorrectionOut
    edited_correction: CorrectionOut | None


class ReviewItemOut(BaseModel):
    """A correction to review, with links to see image, draft and correction side by side."""

    correction: CorrectionOut
    filename: str
    width: int
    height: int
    approvals: list[str]
    reviews: list[Review]
    image_url: str
    draft_url: str
    correction_url: str
