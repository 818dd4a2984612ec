"""A hand-built project whose report is computed by hand (the known answers below).

Six 10x10 images (100 labelled pixels each), uploaded 2025-03-03 08:00 UTC; v1
serves from 03-03 09:00, v2 from 03-05 12:00. Four corrections, through the real
core (``submit_correction`` compares each with its draft); only the timestamps are
set afterwards, and the serving history is written as the audit trail writes it.

| corr | image | annotator | draft | draft left to change | empty draft would have | at |
| c0 | img0 | ana | v1, identical | 0 px, 0 regions | disk 3x3: 9 px, 1 region | 03-03 10:00 |
| c1 | img1 | bo  | v1, all background | square 4x4: 16 px, 1 | 16 px, 1 | 03-03 11:30 |
| c2 | img2 | ana | v2, square missing | 4 px, 1 | disk 2x5 + square 2x2: 14, 2 | 03-05 14:00 |
| c3 | img3 | bo  | v2, identical | 0, 0 | disk 1 px: 1, 1 | 03-10 10:00 |

img4 has a precomputed v2 draft and no correction; img5 has neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
from sqlalchemy import update
from sqlalchemy.orm import Session

from models.registry import NewModelVersion, register_version
from prelabel.audit import AuditAction
from prelabel.corrections import submit_correction
from prelabel.database import transaction
from prelabel.drafts import store_draft
from prelabel.images import Image, add_image
from prelabel.projects import Project, ProjectSpec, create_project
from prelabel.tables import (
    AuditEventRow,
    CorrectionRow,
    DraftRow,
    ImageRow,
    JobRow,
    ModelStatus,
    ModelVersionRow,
)
from prelabel.workspace import Workspace
from tests.synthetic import SHAPES_CLASSES, png_bytes

SIZE = 10
UPLOADED = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)
V1_AT = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
V2_AT = datetime(2025, 3, 5, 12, 0, tzinfo=UTC)


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 3, day, hour, minute, tzinfo=UTC)


def _mask(*boxes: tuple[int, int, int, int, int]) -> npt.NDArray[np.uint8]:
    """A (10, 10) background mask with ``(class, row0, row1, col0, col1)`` boxes (ends excl.)."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for class_id, r0, r1, c0, c1 in boxes:
        mask[r0:r1, c0:c1] = class_id
    return mask


DISK_3x3 = (1, 1, 4, 1, 4)
SQUARE_4x4 = (2, 5, 9, 5, 9)
DISK_2x5 = (1, 0, 2, 0, 5)
SQUARE_2x2 = (2, 8, 10, 8, 10)
DOT = (1, 5, 6, 5, 6)

# (annotator, version, draft mask, correction mask, draft at, corrected at, lead time)
CORRECTIONS = [
    ("ana", "v1", _mask(DISK_3x3), _mask(DISK_3x3), _at(3, 9, 30), _at(3, 10), 30.0),
    ("bo", "v1", _mask(), _mask(SQUARE_4x4), _at(3, 9, 30), _at(3, 11, 30), 60.0),
    ("ana", "v2", _mask(DISK_2x5), _mask(DISK_2x5, SQUARE_2x2), _at(5, 13), _at(5, 14), 20.0),
    ("bo", "v2", _mask(DOT), _mask(DOT), _at(10, 9), _at(10, 10), 10.0),
]
QUEUED_DRAFT_AT = _at(5, 13)


@dataclass(frozen=True)
class FixtureProject:
    project: Project
    images: list[Image]
    corrections: list[str]
    """Correction ids c0..c3."""
    drafts: list[str]
    """Draft ids of img0..img4."""


def _images(workspace: Workspace, project: Project) -> list[Image]:
    rng = np.random.default_rng(0)
    with transaction(workspace.sessions) as session:
        images = [
            add_image(
                session,
                workspace.blobs,
                project_id=project.id,
                filename=f"img{i}.png",
                data=png_bytes(rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8)),
                max_pixels=10**6,
                actor="fixture",
            )
            for i in range(6)
        ]
        session.execute(
            update(ImageRow).where(ImageRow.project_id == project.id).values(created_at=UPLOADED)
        )
    return images


def _draft(
    workspace: Workspace, project: Project, image: Image, mask: npt.NDArray[np.uint8], version: str
) -> str:
    confidence = np.full(mask.shape, 0.9, np.float32)
    with transaction(workspace.sessions) as session:
        return store_draft(
            session,
            workspace.blobs,
            image=image,
            schema=project.label_schema,
            mask=mask,
            confidence=confidence,
            model_version=version,
        ).id


def _versions(workspace: Workspace, project: Project) -> None:
    """v1 (retired), v2 (serving), v3 (rejected), their runs, and the serving history."""
    with transaction(workspace.sessions) as session:
        outcomes = [("run1", ModelStatus.RETIRED), ("run2", ModelStatus.SERVING)]
        outcomes.append(("run3", ModelStatus.REJECTED))
        for number, (run, status) in enumerate(outcomes, start=1):
            register_version(
                session,
                NewModelVersion(
                    project_id=project.id,
                    parent_version=f"v{number - 1}" if number > 1 else None,
                    onnx_key="none",
                    onnx_sha256="0" * 64,
                    checkpoint_key="none",
                    checkpoint_sha256="0" * 64,
                    config={},
                    metrics={"held_out_miou": 0.5 + 0.1 * number},
                    trained_on=["x"] * (10 * number),
                    held_out=[],
                    training_run_id=f"{project.id[:26]}{run}",
                ),
            )
            session.execute(
                update(ModelVersionRow)
                .where(
                    ModelVersionRow.project_id == project.id,
                    ModelVersionRow.version == f"v{number}",
                )
                .values(
                    status=status,
                    reason="fixture gate" if status != ModelStatus.REJECTED else "worse by 0.04",
                )
            )
        for version, previous, at in (("v1", None, V1_AT), ("v2", "v1", V2_AT)):
            session.add(
                AuditEventRow(
                    project_id=project.id,
                    actor="promotion-gate",
                    action=AuditAction.PROMOTE.value,
                    details={"version": version, "previous": previous, "automatic": True},
                    created_at=at,
                )
            )
        _runs(session, project)


def _runs(session: Session, project: Project) -> None:
    """run1..run3 succeeded (30 min each), run4 failed, run5 runs on worker w1."""
    for run, status, version in (
        ("run1", "succeeded", "v1"),
        ("run2", "succeeded", "v2"),
        ("run3", "succeeded", "v3"),
        ("run4", "failed", None),
        ("run5", "running", None),
    ):
        started = _at(3, 8) if run != "run5" else _at(10, 11)
        session.add(
            JobRow(
                id=f"{project.id[:26]}{run}",
                project_id=project.id,
                status=status,
                task="train",
                model_version=version,
                error="CUDA out of memory" if status == "failed" else None,
                progress={"epoch": 2, "epochs": 5} if status == "running" else {},
                worker="w1",
                created_at=started,
                started_at=started,
                finished_at=None if status == "running" else started + timedelta(minutes=30),
                heartbeat_at=started,
            )
        )


def build_fixture_project(workspace: Workspace, name: str = "fixture") -> FixtureProject:
    """Build the project of the module docstring in ``workspace``."""
    spec = ProjectSpec.model_validate({"name": name, "classes": SHAPES_CLASSES})
    with transaction(workspace.sessions) as session:
        project = create_project(session, spec, actor="fixture")
    images = _images(workspace, project)
    _versions(workspace, project)
    drafts, corrections = [], []
    for image, (annotator, version, draft, mask, draft_at, at, lead) in zip(
        images, CORRECTIONS, strict=False
    ):
        draft_id = _draft(workspace, project, image, draft, version)
        drafts.append(draft_id)
        with transaction(workspace.sessions) as session:
            correction = submit_correction(
                session,
                workspace.blobs,
                project=project,
                image=image,
                mask=mask,
                annotator=annotator,
                lead_time_s=lead,
                draft_id=draft_id,
            )
            session.execute(
                update(DraftRow).where(DraftRow.id == draft_id).values(created_at=draft_at)
            )
            session.execute(
                update(CorrectionRow).where(CorrectionRow.id == correction.id).values(created_at=at)
            )
        corrections.append(correction.id)
    queued = _draft(workspace, project, images[4], _mask(DISK_3x3), "v2")
    with transaction(workspace.sessions) as session:
        session.execute(
            update(DraftRow).where(DraftRow.id == queued).values(created_at=QUEUED_DRAFT_AT)
        )
    return FixtureProject(project, images, corrections, [*drafts, queued])
