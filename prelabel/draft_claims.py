"""Claims on drafts being computed, so that no two processes compute the same draft.

Before computing the draft of an image by a model version, a process (the
service answering ``GET …/draft``, or the worker running a bulk drafts job)
claims the pair (image, version): an INSERT into ``draft_claims`` that only one
process can win (the primary key; ``ON CONFLICT DO NOTHING`` on SQLite and
PostgreSQL alike). The winner computes, stores the draft and drops its claim in
the same transaction. A request that loses waits for the stored draft instead
of computing it again; a bulk job that loses skips the image (someone else is
making that draft). A holder that died loses its claim when its lease runs out.

Claims of interactive requests (``interactive``) also tell bulk jobs that a
person is waiting: a bulk job checks between images and yields until none is
left (:func:`interactive_claims`).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from prelabel.tables import DraftClaimRow, utcnow

logger = logging.getLogger(__name__)


def try_claim(
    session: Session,
    *,
    project_id: str,
    image_id: str,
    model_version: str,
    holder: str,
    interactive: bool,
    lease_s: float,
) -> bool:
    """Claim computing the draft of ``image_id`` by ``model_version`` for ``lease_s`` seconds.

    An expired claim (its holder died) is taken over. Returns whether ``holder`` won;
    the claim is visible to others once the caller's transaction commits.
    """
    if lease_s <= 0:
        raise ValueError(f"lease_s must be positive, got {lease_s}")
    now = utcnow()
    session.execute(
        delete(DraftClaimRow).where(
            DraftClaimRow.image_id == image_id,
            DraftClaimRow.model_version == model_version,
            DraftClaimRow.expires_at < now,
        )
    )
    values = {
        "image_id": image_id,
        "model_version": model_version,
        "project_id": project_id,
        "holder": holder,
        "interactive": interactive,
        "expires_at": now + timedelta(seconds=lease_s),
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # RETURNING, not rowcount: an ORM-enabled INSERT reports rowcount -1 on psycopg.
    inserted = session.scalars(
        insert(DraftClaimRow)
        .values(**values)
        .on_conflict_do_nothing()
        .returning(DraftClaimRow.image_id),
    ).first()
    won = inserted is not None
    if won:
        logger.debug("%s claimed the draft of image %s by %s", holder, image_id, model_version)
    return won


def release_claim(session: Session, *, image_id: str, model_version: str, holder: str) -> None:
    """Drop ``holder``'s claim (its draft is stored, or computing it failed)."""
    session.execute(
        delete(DraftClaimRow).where(
            DraftClaimRow.image_id == image_id,
            DraftClaimRow.model_version == model_version,
            DraftClaimRow.holder == holder,
        )
    )


def interactive_claims(session: Session) -> int:
    """How many people's requests are computing a draft right now (unexpired claims)."""
    count = session.scalar(
        select(func.count())
        .select_from(DraftClaimRow)
        .where(DraftClaimRow.interactive.is_(True), DraftClaimRow.expires_at >= utcnow())
    )
    return int(count or 0)
