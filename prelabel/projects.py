"""Projects: a label schema plus everything labelled with it. Nothing crosses projects."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from prelabel.audit import AuditAction, record_audit
from prelabel.errors import ConflictError, ProjectNotFound
from prelabel.policy import TrainingPolicy, check_finite
from prelabel.reviewing import ReviewSettings
from prelabel.schema import LabelClass, LabelSchema
from prelabel.tables import ProjectRow
from prelabel.text import holds_control_characters

logger = logging.getLogger(__name__)

ProjectName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^/\s][^/]*$")]

MAX_TRANSLATION_LENGTH = 200
"""The longest class name in another language (as long as a class name)."""


def validation_messages(exc: ValidationError) -> str:
    """Pydantic's errors as one line for a person: ``field: message; ...``."""
    return "; ".join(
        ".".join(str(part) for part in error["loc"])
        + ": " * bool(error["loc"])
        + error["msg"].removeprefix("Value error, ")
        for error in exc.errors()
    )


def _check_text(what: str, text: str) -> None:
    """Refuse control characters (``holds_control_characters``)."""
    if holds_control_characters(text):
        raise ValueError(f"{what} {text[:40]!r} holds control characters")


def _check_terms_name_one_class(classes: list[LabelClass]) -> None:
    """Refuse a name or translation shared by two classes: ``class_by_name`` takes any of
    them, in any language, so a shared one would silently pick the first class."""
    owners: dict[str, LabelClass] = {}
    for label_class in classes:
        for term in {label_class.name, *label_class.translations.values()}:
            owner = owners.setdefault(term.strip().casefold(), label_class)
            if owner.id != label_class.id:
                raise ValueError(
                    f"{term!r} names both class {owner.id} ({owner.name!r}) and class "
                    f"{label_class.id} ({label_class.name!r}): names and translations must be "
                    "unique across classes (case-insensitive), or a label picks one silently"
                )


class ProjectSpec(BaseModel):
    """What it takes to create a project (the body of ``POST /projects``)."""

    model_config = ConfigDict(extra="forbid")

    name: ProjectName
    classes: Annotated[list[LabelClass], Field(min_length=1)]
    ignore_index: Annotated[int, Field(ge=0, le=65535)] = 255
    background_id: int | None = None
    acceptance_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    training_policy: TrainingPolicy = TrainingPolicy()

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        _check_text("project name", value)
        return value

    @field_validator("classes")
    @classmethod
    def _check_class_names(cls, value: list[LabelClass]) -> list[LabelClass]:
        # Here and not on LabelClass: stored schemas are read back through LabelClass, and
        # a project created before these rules must stay readable.
        for label_class in value:
            if not label_class.name.strip():
                raise ValueError(f"class {label_class.id}'s name is blank")
            _check_text(f"class {label_class.id}'s name", label_class.name)
            for code, text in label_class.translations.items():
                what = f"class {label_class.id}'s {code!r} translation"
                if len(text) > MAX_TRANSLATION_LENGTH:
                    raise ValueError(
                        f"{what} is {len(text)} characters long, over {MAX_TRANSLATION_LENGTH}"
                    )
                _check_text(what, text)
        _check_terms_name_one_class(value)
        return value

    @model_validator(mode="after")
    def _check_schema(self) -> ProjectSpec:
        try:
            self.label_schema()
        except ValidationError as exc:
            raise ValueError(validation_messages(exc)) from exc
        return self

    def label_schema(self) -> LabelSchema:
        """The label schema this spec describes (validated)."""
        return LabelSchema(
            classes=self.classes, ignore_index=self.ignore_index, background_id=self.background_id
        )


class Project(BaseModel):
    """A project as stored."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    label_schema: LabelSchema
    acceptance_threshold: float
    training_policy: TrainingPolicy
    pinned_version: str | None
    review: ReviewSettings = ReviewSettings()
    created_at: datetime


def _to_project(row: ProjectRow) -> Project:
    return Project(
        id=row.id,
        name=row.name,
        label_schema=LabelSchema.model_validate(row.label_schema),
        acceptance_threshold=row.acceptance_threshold,
        training_policy=TrainingPolicy.model_validate(row.training_policy or {}),
        pinned_version=row.pinned_version,
        review=ReviewSettings(
            review_required=row.review_required,
            review_share=row.review_share,
            min_reviewers=row.min_reviewers,
        ),
        created_at=row.created_at,
    )


def create_project(session: Session, spec: ProjectSpec, *, actor: str) -> Project:
    """Create a project (audited).

    Raises:
        ConflictError: The name is taken.
        ValidationFailed: A training policy number is not finite.
    """
    label_schema = spec.label_schema()
    check_finite(spec.training_policy)
    if session.scalar(select(ProjectRow.id).where(ProjectRow.name == spec.name)):
        raise ConflictError(f"a project named {spec.name!r} already exists")
    row = ProjectRow(
        name=spec.name,
        label_schema=label_schema.model_dump(mode="json"),
        acceptance_threshold=spec.acceptance_threshold,
        training_policy=spec.training_policy.model_dump(mode="json"),
    )
    session.add(row)
    session.flush()
    record_audit(session, row.id, actor=actor, action=AuditAction.PROJECT_CREATED)
    logger.info("created project %s (%s) with %d classes", row.id, row.name, len(spec.classes))
    return _to_project(row)


def get_project(session: Session, project: str) -> Project:
    """The project with id or name ``project``; raises ProjectNotFound."""
    row = session.get(ProjectRow, project) or session.scalar(
        select(ProjectRow).where(ProjectRow.name == project)
    )
    if row is None:
        raise ProjectNotFound(project)
    return _to_project(row)


def list_projects(session: Session) -> list[Project]:
    """All projects, oldest first."""
    rows = session.scalars(select(ProjectRow).order_by(ProjectRow.created_at))
    return [_to_project(row) for row in rows]


def _project_row(session: Session, project_id: str) -> ProjectRow:
    row = session.get(ProjectRow, project_id)
    if row is None:
        raise ProjectNotFound(project_id)
    return row


def set_training_policy(
    session: Session, project_id: str, policy: TrainingPolicy, *, actor: str
) -> Project:
    """Replace the project's training policy (audited); raises ValidationFailed for a
    number that is not finite."""
    check_finite(policy)
    row = _project_row(session, project_id)
    record_audit(
        session,
        project_id,
        actor=actor,
        action=AuditAction.SET_TRAINING_POLICY,
        details=policy.model_dump(mode="json"),
    )
    row.training_policy = policy.model_dump(mode="json")
    logger.info("project %s training policy set to %s", project_id, row.training_policy)
    return _to_project(row)


def set_pinned_version(session: Session, project_id: str, version: str | None) -> Project:
    """Pin ``version`` (automatic promotion stops) or unpin with None."""
    row = _project_row(session, project_id)
    row.pinned_version = version
    logger.info("project %s pinned_version=%s", project_id, version)
    return _to_project(row)


def store_review_settings(session: Session, project_id: str, settings: ReviewSettings) -> Project:
    """Store the project's review settings; :func:`prelabel.reviews.change_review_settings`
    is the rule that calls this (audit, backlog draw)."""
    row = _project_row(session, project_id)
    row.review_required = settings.review_required
    row.review_share = settings.review_share
    row.min_reviewers = settings.min_reviewers
    session.flush()
    logger.info("project %s review settings set to %s", project_id, settings.model_dump())
    return _to_project(row)
