"""Claims on drafts being computed: one winner per (image, version), on every backend."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from prelabel.draft_claims import interactive_claims, release_claim, try_claim
from prelabel.images import Image
from prelabel.tables import DraftClaimRow, utcnow
from prelabel.workspace import Workspace
from tests.shapes_project import project_with_image


def _image(workspace: Workspace) -> Image:
    return project_with_image(workspace, "claims")[1]


def _claim(workspace: Workspace, image: Image, holder: str, *, interactive: bool = False) -> bool:
    with workspace.sessions() as session, session.begin():
        return try_claim(
            session,
            project_id=image.project_id,
            image_id=image.id,
            model_version="v1",
            holder=holder,
            interactive=interactive,
            lease_s=60,
        )


def test_only_the_first_holder_wins_until_it_releases(workspace: Workspace) -> None:
    image = _image(workspace)

    assert _claim(workspace, image, "a", interactive=True)
    assert not _claim(workspace, image, "b")
    with workspace.sessions() as session:
        assert interactive_claims(session) == 1

    with workspace.sessions() as session, session.begin():
        release_claim(session, image_id=image.id, model_version="v1", holder="a")
    assert _claim(workspace, image, "b")
    with workspace.sessions() as session:
        assert interactive_claims(session) == 0


def test_an_expired_claim_is_taken_over(workspace: Workspace) -> None:
    image = _image(workspace)
    assert _claim(workspace, image, "dead")
    with workspace.sessions() as session, session.begin():
        session.execute(update(DraftClaimRow).values(expires_at=utcnow() - timedelta(seconds=1)))

    assert _claim(workspace, image, "alive")
    with workspace.sessions() as session:
        row = session.get(DraftClaimRow, (image.id, "v1"))
        assert row is not None and row.holder == "alive"
