"""Bookkeeping written off the request path, in batches: audit entries of reads and the
last use of API tokens.

On SQLite every write transaction queues for the file's one write lock, so a draft fetch
that appended its own audit row waited behind every correction being stored (seconds at
the 99th percentile with 100 annotators). A read is now audited here: the entry is taken
with the time of the read, and :meth:`DeferredWrites.flush` appends all pending entries
in one transaction. The service flushes every ``audit_flush_s``, before it lists the
audit trail, and when it stops; a process killed outright loses at most that interval
of read entries. Actions that change data (uploads, corrections, access changes) are
still audited in their own transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from prelabel.accounts import stamp_token_uses
from prelabel.audit import AuditAction, PendingAudit, append_audits, log_audit
from prelabel.database import write_transaction
from prelabel.tables import utcnow

logger = logging.getLogger(__name__)


def _note_use(uses: dict[str, datetime], token_id: str, at: datetime) -> None:
    known = uses.get(token_id)
    uses[token_id] = at if known is None else max(known, at)


class DeferredWrites:
    """Pending read-audit entries and token uses of one process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._audits: list[PendingAudit] = []
        self._token_uses: dict[str, datetime] = {}

    def audit(
        self,
        project_id: str | None,
        *,
        actor: str,
        action: AuditAction,
        image_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Note a read now; it is appended to the audit trail at the next flush."""
        entry = PendingAudit(
            project_id=project_id,
            image_id=image_id,
            actor=actor,
            action=action,
            details=details or {},
            created_at=utcnow(),
        )
        with self._lock:
            self._audits.append(entry)
        log_audit(actor, action, project_id, image_id)

    def token_used(self, token_id: str, at: datetime) -> None:
        """Note that a token was used at ``at`` (its ``last_used_at`` at the next flush)."""
        with self._lock:
            _note_use(self._token_uses, token_id, at)

    @property
    def pending(self) -> int:
        """Entries and token uses not written yet."""
        with self._lock:
            return len(self._audits) + len(self._token_uses)

    def flush(self, sessions: sessionmaker[Session]) -> int:
        """Write everything pending in one transaction; returns how many items it wrote.

        If the write fails, the items stay pending for the next flush and the error is
        raised.
        """
        with self._taken() as (audits, token_uses):
            if audits or token_uses:

                def write(session: Session) -> None:
                    append_audits(session, audits)
                    stamp_token_uses(session, token_uses)

                write_transaction(sessions, write)
            return len(audits) + len(token_uses)

    @contextmanager
    def _taken(self) -> Iterator[tuple[list[PendingAudit], dict[str, datetime]]]:
        with self._lock:
            audits, token_uses = self._audits, self._token_uses
            self._audits, self._token_uses = [], {}
        try:
            yield audits, token_uses
        except SQLAlchemyError:
            with self._lock:
                self._audits[:0] = audits
                for token_id, at in token_uses.items():
                    _note_use(self._token_uses, token_id, at)
            raise


class PeriodicFlush:
    """A daemon thread flushing ``writes`` every ``interval_s`` until :meth:`stop`, which
    flushes once more."""

    def __init__(
        self, writes: DeferredWrites, sessions: sessionmaker[Session], interval_s: float
    ) -> None:
        self._writes = writes
        self._sessions = sessions
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deferred-writes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _flush(self) -> None:
        try:
            self._writes.flush(self._sessions)
        except SQLAlchemyError as exc:  # kept pending; the next flush tries again
            logger.error("could not write %d deferred items: %s", self._writes.pending, exc)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self._flush()

    def stop(self) -> None:
        """Stop the thread and write what is still pending."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        self._flush()
