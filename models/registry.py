"""The model registry: every version of a project's network, pinned by sha256, with lineage.

Records live in the ``model_versions`` table; artifacts (ONNX for serving, a torch
checkpoint for fine-tuning) live in the blob store under keys the record names.
Exactly one version per project has status ``serving`` (or none before the first);
which one is looked up and changed by the core (``prelabel.model_versions``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from prelabel.model_versions import (
    GATE_ACTOR,
    ServingAction,
    ServingChange,
    change_serving_version,
    serving_version_row,
    version_row,
)
from prelabel.tables import ModelStatus, ModelVersionRow

logger = logging.getLogger(__name__)


class NewModelVersion(BaseModel):
    """What a training run hands to the registry."""

    model_config = ConfigDict(frozen=True)

    project_id: str
    parent_version: str | None
    onnx_key: str
    onnx_sha256: str
    checkpoint_key: str
    checkpoint_sha256: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    trained_on: list[str]
    held_out: list[str]
    training_run_id: str | None = None
    review_states: dict[str, str] = {}
    """Review status of each correction the run used (trained on or held out) when it ran."""


class ModelRecord(NewModelVersion):
    """One registered model version: what training handed over, plus its lifecycle."""

    version: str
    status: ModelStatus
    reason: str | None
    trained_on_erased: bool = False
    """Some images it learnt from or was scored on were erased since: retrain without them."""
    created_at: datetime
    promoted_at: datetime | None


def _to_record(row: ModelVersionRow) -> ModelRecord:
    return ModelRecord.model_validate(row, from_attributes=True)


def next_version(session: Session, project_id: str) -> str:
    """The name the project's next version will get (``v1``, ``v2``, ...)."""
    highest = session.scalar(
        select(func.max(ModelVersionRow.number)).where(ModelVersionRow.project_id == project_id)
    )
    return f"v{(highest or 0) + 1}"


def register_version(session: Session, new: NewModelVersion) -> ModelRecord:
    """Record a candidate version; it serves only once ``promote`` is called."""
    version = next_version(session, new.project_id)
    row = ModelVersionRow(
        number=int(version[1:]), version=version, status=ModelStatus.CANDIDATE, **new.model_dump()
    )
    session.add(row)
    session.flush()
    logger.info(
        "registered model_version %s of project %s (onnx sha256 %s)",
        version,
        new.project_id,
        new.onnx_sha256[:12],
    )
    return _to_record(row)


def get_version(session: Session, project_id: str, version: str) -> ModelRecord:
    """The project's version ``version``; raises ModelNotFound."""
    row = version_row(session, project_id, version)
    return _to_record(row)


def serving_version(session: Session, project_id: str) -> ModelRecord | None:
    """The version that serves drafts for the project, or None before the first model."""
    row = serving_version_row(session, project_id)
    return _to_record(row) if row else None


def list_versions(session: Session, project_id: str) -> list[ModelRecord]:
    """The project's versions, newest first."""
    rows = session.scalars(
        select(ModelVersionRow)
        .where(ModelVersionRow.project_id == project_id)
        .order_by(ModelVersionRow.number.desc())
    )
    return [_to_record(row) for row in rows]


def promote(session: Session, project_id: str, version: str, *, reason: str) -> ModelRecord:
    """The promotion gate's decision: make ``version`` serve, in the caller's transaction.

    Goes through the core rule (:func:`prelabel.model_versions.change_serving_version`):
    the previous serving version is retired, the new one's drafts are queued and
    the promotion is audited, with the gate as actor and the version's training run.

    Raises:
        ModelNotFound: no such version.
        ConflictError: the project is pinned to another version.
    """
    change = ServingChange(
        ServingAction.PROMOTE,
        version,
        actor=GATE_ACTOR,
        reason=reason,
        training_run_id=get_version(session, project_id, version).training_run_id,
    )
    change_serving_version(session, project_id, change)
    return get_version(session, project_id, version)


def reject(session: Session, project_id: str, version: str, *, reason: str) -> ModelRecord:
    """Keep ``version`` as rejected, with the reason."""
    session.execute(
        update(ModelVersionRow)
        .where(ModelVersionRow.project_id == project_id, ModelVersionRow.version == version)
        .values(status=ModelStatus.REJECTED, reason=reason)
    )
    logger.info("model_version %s of project %s rejected: %s", version, project_id, reason)
    return get_version(session, project_id, version)
