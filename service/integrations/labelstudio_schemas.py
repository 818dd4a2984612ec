"""Bodies of the Label Studio ML backend protocol under ``/labelstudio`` (wire models only).

Requests accept and ignore fields we do not use, since Label Studio adds fields
between versions. Webhook bodies are the core's ``LsWebhook`` (and tasks its
``LsTask``): they are stored and processed by ``prelabel.integrations.labelstudio``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from prelabel.integrations.labelstudio import LsTask, PredictParams, TaskPrediction

_LOOSE = ConfigDict(extra="ignore", populate_by_name=True)


class HealthOut(BaseModel):
    status: Literal["UP"] = "UP"
    model_class: str = "prelabel"


class SetupRequest(BaseModel):
    """``POST /setup``: ``project`` is ``"<id>.<created epoch>"``, ``schema`` the label config."""

    model_config = _LOOSE

    project: str
    label_config: str = Field(alias="schema")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: JsonValue = None


class SetupOut(BaseModel):
    model_version: str


class PredictRequest(BaseModel):
    model_config = _LOOSE

    tasks: list[LsTask] = Field(min_length=1)
    project: str
    label_config: str | None = None
    params: PredictParams | None = None


class TaskFailure(BaseModel):
    """A task without a prediction this time: Label Studio skips an entry with no ``result``
    (and logs it), keeps the others, and asks again on the next "retrieve predictions"."""

    error: str


class PredictOut(BaseModel):
    results: list[TaskPrediction | TaskFailure]
    model_version: str


class WebhookOut(BaseModel):
    status: Literal["queued", "ignored"]
    event_id: str | None = None


class BindingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = Field(min_length=1, description="prelabel project id or name")


class BindingOut(BaseModel):
    """A binding; the stored access token is never sent back, only whether there is one."""

    ls_project: str
    project_id: str
    hostname: str | None
    has_access_token: bool
    labels: dict[str, int] | None = Field(description="Label Studio label -> class id")
    created_at: datetime
    updated_at: datetime
