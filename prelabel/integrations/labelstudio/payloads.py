"""The webhook payloads Label Studio sends, and the stored event that holds one.

Models ignore fields they do not name: Label Studio's payloads carry much more
than prelabel reads.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, JsonValue

_LOOSE = ConfigDict(extra="ignore")

MAX_LS_ID = 2**31 - 1
"""The largest task or annotation id: prelabel keeps them in 32-bit integer columns
(PostgreSQL's ``integer``)."""

LsId = Annotated[int, Field(ge=0, le=MAX_LS_ID)]
"""A Label Studio task or annotation id that prelabel's columns can hold."""


class LsUser(BaseModel):
    model_config = _LOOSE

    id: int | None = None
    email: str | None = None


class LsResultValue(BaseModel):
    model_config = _LOOSE

    format: str | None = None
    rle: list[int] | None = None
    brushlabels: list[str] | None = None


class LsRegion(BaseModel):
    """What every Label Studio region has: its tag names, type and image size."""

    model_config = _LOOSE

    id: str | None = None
    type: str
    from_name: str = ""
    to_name: str = ""
    original_width: int | None = None
    original_height: int | None = None


class LsResult(LsRegion):
    """One region of an annotation; only ``brushlabels`` regions are read."""

    value: LsResultValue = Field(default_factory=LsResultValue)


class LsAnnotation(BaseModel):
    """An annotation as Label Studio's webhooks serialize it (``completed_by`` is a user id)."""

    model_config = _LOOSE

    id: LsId
    task: LsId | None = None
    project: int | None = None
    result: list[LsResult] = Field(default_factory=list)
    completed_by: int | str | LsUser | None = None
    lead_time: float | None = None
    parent_prediction: int | None = None
    was_cancelled: bool = False


class LsTask(BaseModel):
    """A task as Label Studio sends it, to ``/predict`` and in webhooks: its id and data."""

    model_config = _LOOSE

    id: LsId
    data: dict[str, JsonValue] = Field(default_factory=dict)


class LsProjectRef(BaseModel):
    model_config = _LOOSE

    id: int
    label_config: str | None = None


class LsAnnotationRef(BaseModel):
    model_config = _LOOSE

    id: LsId


class LsWebhook(BaseModel):
    """A webhook call: an action and, depending on it, annotation(s), task(s), project."""

    model_config = _LOOSE

    action: str
    annotation: LsAnnotation | list[LsAnnotation] | None = None
    annotations: list[LsAnnotationRef] | None = None
    task: LsTask | list[LsTask] | None = None
    project: LsProjectRef | None = None


class StoredEvent(BaseModel):
    """What an ``integration_events`` row holds: the webhook and who sent it."""

    webhook: LsWebhook
    auth_user: str | None = None
    """The basic-auth user name Label Studio sent (a fallback annotator name)."""
    actor: str | None = None
    """The prelabel user whose token delivered it (recorded in the audit trail)."""


ANNOTATION_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"})
HANDLED_ACTIONS = ANNOTATION_ACTIONS | {"ANNOTATIONS_DELETED", "START_TRAINING"}
"""Webhook actions that are stored and processed; Label Studio sends every action to a
backend's webhook, the others are acknowledged and dropped."""
