"""The database tables (SQLAlchemy 2 ORM). Alembic migrations in ``migrations/`` create them.

Every row below a project carries ``project_id``: queries always filter on it,
so nothing crosses projects.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class ModelStatus(StrEnum):
    """Lifecycle of a model version: exactly one per project serves."""

    SERVING = "serving"
    CANDIDATE = "candidate"
    RETIRED = "retired"
    REJECTED = "rejected"


def new_id() -> str:
    """A fresh random id (32 hex characters)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` as timezone-aware UTC; a time without an offset is read as UTC.

    Raises:
        ValueError: In UTC the time falls outside the years 1 to 9999.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{value.isoformat()} is outside the years 1 to 9999 in UTC") from exc


def check_window(since: datetime | None, until: datetime | None) -> None:
    """A time window's rule: ``since`` (inclusive) before ``until`` (exclusive); None is open.

    Raises:
        ValueError: ``since`` is not before ``until``.
    """
    if since is not None and until is not None and since >= until:
        raise ValueError(f"since ({since}) must be before until ({until})")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware UTC time")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[str]: JSON,
        datetime: UTCDateTime,
    }


class ProjectRow(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    label_schema: Mapped[dict[str, Any]]
    acceptance_threshold: Mapped[float] = mapped_column(Float, default=0.01)
    training_policy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    pinned_version: Mapped[str | None] = mapped_column(String(32))
    review_required: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    review_share: Mapped[float] = mapped_column(Float, default=1.0, server_default="1.0")
    min_reviewers: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImageRow(Base):
    __tablename__ = "images"
    __table_args__ = (Index("ix_images_project", "project_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(500))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (Index("ix_model_versions_project", "project_id", "number", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    parent_version: Mapped[str | None] = mapped_column(String(32))
    onnx_key: Mapped[str] = mapped_column(String(500))
    onnx_sha256: Mapped[str] = mapped_column(String(64))
    checkpoint_key: Mapped[str] = mapped_column(String(500))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    trained_on: Mapped[list[str]]
    held_out: Mapped[list[str]]
    reason: Mapped[str | None] = mapped_column(Text)
    training_run_id: Mapped[str | None] = mapped_column(String(32))
    trained_on_erased: Mapped[bool] = mapped_column(Boolean, default=False)
    """Some of the data it learnt from (or was scored on) has since been erased."""
    review_states: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Correction id -> its review status when the run used it (train and held out)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None]


class DraftRow(Base):
    __tablename__ = "drafts"
    __table_args__ = (Index("ix_drafts_image", "project_id", "image_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version: Mapped[str | None] = mapped_column(String(32))
    mask_key: Mapped[str] = mapped_column(String(500))
    confidence_key: Mapped[str] = mapped_column(String(500))
    mean_confidence: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CorrectionRow(Base):
    __tablename__ = "corrections"
    __table_args__ = (Index("ix_corrections_image", "project_id", "image_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    draft_id: Mapped[str | None] = mapped_column(ForeignKey("drafts.id", ondelete="SET NULL"))
    model_version: Mapped[str | None] = mapped_column(String(32))
    annotator: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(32), default="api")
    lead_time_s: Mapped[float | None] = mapped_column(Float)
    mask_key: Mapped[str] = mapped_column(String(500))
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)
    supersedes: Mapped[str | None] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    accepted: Mapped[bool | None] = mapped_column(Boolean)
    clicks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    review_status: Mapped[str] = mapped_column(
        String(16), default="not_required", server_default="not_required"
    )
    review_reason: Mapped[str | None] = mapped_column(String(32))
    """Why it got its first review status (``prelabel.reviewing.ReviewReason``)."""
    resubmits: Mapped[str | None] = mapped_column(String(32))
    """The rejected correction this one resubmits."""
    reviewed_at: Mapped[datetime | None]
    """When its review status last became approved or rejected."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReviewRow(Base):
    """One reviewer's decision on one correction, with reviewer-vs-annotator agreement.

    ``edited_correction_id`` is the correction made from the reviewer's edited
    mask (approve with edits); agreement (``mean_iou``, ``changed_pixels``,
    ``per_class_iou``) compares it with the reviewed one, and is 1.0 / 0 for a
    plain approval and None for a rejection.
    """

    __tablename__ = "reviews"
    __table_args__ = (
        Index("ix_reviews_correction", "correction_id"),
        Index("ix_reviews_project", "project_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    correction_id: Mapped[str] = mapped_column(ForeignKey("corrections.id", ondelete="CASCADE"))
    annotator: Mapped[str] = mapped_column(String(200))
    reviewer: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text, default="")
    edited_correction_id: Mapped[str | None] = mapped_column(
        ForeignKey("corrections.id", ondelete="SET NULL")
    )
    mean_iou: Mapped[float | None] = mapped_column(Float)
    changed_pixels: Mapped[int | None] = mapped_column(Integer)
    changed_pixel_fraction: Mapped[float | None] = mapped_column(Float)
    per_class_iou: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    review_time_s: Mapped[float | None] = mapped_column(Float)
    """How long the reviewer says it spent (sent by the client, like ``lead_time_s``)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RefinementRow(Base):
    """One refinement call: the clicks on one class of an image, from the draft it started at.

    ``positive``/``negative`` hold ``[[x, y], ...]`` pixel coordinates and ``box``
    ``[x1, y1, x2, y2]``; ``base`` is ``draft``, ``correction`` or ``draft_id``
    (a named draft). The calls since the image's last correction tell that
    correction how many clicks it took.
    """

    __tablename__ = "refinements"
    __table_args__ = (Index("ix_refinements_image", "project_id", "image_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    draft_id: Mapped[str | None] = mapped_column(ForeignKey("drafts.id", ondelete="SET NULL"))
    model_version: Mapped[str | None] = mapped_column(String(32))
    class_id: Mapped[int] = mapped_column(Integer)
    positive: Mapped[list[Any]] = mapped_column(JSON)
    negative: Mapped[list[Any]] = mapped_column(JSON)
    box: Mapped[list[Any] | None] = mapped_column(JSON)
    base: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(32))
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEventRow(Base):
    """Who did what to which data, and when. Append-only: a database trigger refuses
    updates and deletes. ``project_id`` is empty for global actions (users, tokens);
    no foreign keys, so entries outlive what they name (erasure keeps its ids)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_project", "project_id", "created_at"),
        Index("ix_audit_events_action", "project_id", "action", "created_at"),
        Index("ix_audit_events_image", "image_id"),
        Index("ix_audit_events_time", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str | None] = mapped_column(String(32))
    image_id: Mapped[str | None] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobRow(Base):
    """A queued job (``task``): a training run, or precomputing the serving version's drafts.

    The training columns (``kind``, ``model_version``, scores, ``decision``) stay
    empty for draft jobs.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_queue", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    task: Mapped[str] = mapped_column(String(16), default="train")
    trigger: Mapped[str] = mapped_column(String(16), default="manual")
    kind: Mapped[str] = mapped_column(String(16), default="incremental")
    model_version: Mapped[str | None] = mapped_column(String(32))
    decision: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retry_of: Mapped[str | None] = mapped_column(String(32))
    candidate_miou: Mapped[float | None] = mapped_column(Float)
    serving_miou: Mapped[float | None] = mapped_column(Float)
    train_s: Mapped[float | None] = mapped_column(Float)
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """What a drafts job drafts: ``{}`` every image without a correction, or ``image_ids``."""


class DraftClaimRow(Base):
    """Who is computing the draft of an image by a version right now, until ``expires_at``.

    One row per (image, version): the primary key makes claiming an INSERT that
    only one process can win, on SQLite and PostgreSQL alike. Others wait for the
    stored draft instead of computing it again; a holder that died loses its
    claim when the lease runs out. ``interactive`` marks a person's request
    waiting for its draft, for which bulk drafting yields.
    """

    __tablename__ = "draft_claims"

    image_id: Mapped[str] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    model_version: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    holder: Mapped[str] = mapped_column(String(200))
    interactive: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[datetime]


class CorrectionWithdrawalRow(Base):
    """A correction taken back (its annotation was deleted in the annotation tool).

    Kept apart from ``corrections`` so that a withdrawn correction is never made
    current again when a later one is withdrawn too.
    """

    __tablename__ = "correction_withdrawals"

    correction_id: Mapped[str] = mapped_column(
        ForeignKey("corrections.id", ondelete="CASCADE"), primary_key=True
    )
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LabelStudioBindingRow(Base):
    """A Label Studio project bound to a prelabel project.

    ``access_token`` is the token Label Studio sends in ``/setup``; it is kept to
    fetch task images later (webhooks carry no token), so the database holds a
    Label Studio credential.
    """

    __tablename__ = "labelstudio_bindings"

    ls_project: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    hostname: Mapped[str | None] = mapped_column(String(500))
    access_token: Mapped[str | None] = mapped_column(Text)
    label_mapping: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class LabelStudioTaskRow(Base):
    """Which prelabel image a Label Studio task shows, and the draft last sent for it."""

    __tablename__ = "labelstudio_tasks"

    ls_project: Mapped[str] = mapped_column(
        ForeignKey("labelstudio_bindings.ls_project", ondelete="CASCADE"), primary_key=True
    )
    task_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    draft_id: Mapped[str | None] = mapped_column(ForeignKey("drafts.id", ondelete="SET NULL"))
    model_version: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class LabelStudioAnnotationRow(Base):
    """One correction made from a Label Studio annotation (updated twice: three rows)."""

    __tablename__ = "labelstudio_annotations"
    __table_args__ = (Index("ix_labelstudio_annotations", "ls_project", "annotation_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    ls_project: Mapped[str] = mapped_column(
        ForeignKey("labelstudio_bindings.ls_project", ondelete="CASCADE")
    )
    annotation_id: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[int] = mapped_column(Integer)
    correction_id: Mapped[str] = mapped_column(ForeignKey("corrections.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IntegrationEventRow(Base):
    """A call from an annotation tool, stored before it is processed (``queued|done|failed``)."""

    __tablename__ = "integration_events"
    __table_args__ = (Index("ix_integration_events_queue", "source", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    source: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None]


class UserRow(Base):
    """A person or a machine (a Label Studio connection) that calls prelabel."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiTokenRow(Base):
    """An API token, kept only as the SHA-256 of its text."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_user", "user_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class MembershipRow(Base):
    """A user's role in a project: one role per user and project."""

    __tablename__ = "memberships"
    __table_args__ = (Index("ix_memberships_user", "user_id"),)

    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
