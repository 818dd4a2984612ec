"""Users and their API tokens.

A token is 32 random bytes (``secrets.token_urlsafe``) behind the prefix ``plt_``; it is
shown once and stored only as its SHA-256 (a fast hash suffices for 256 random bits:
nothing to brute-force, unlike a password). Tokens can expire and be revoked;
``last_used_at`` is updated at most once a minute per token, so authentication does
not write on every request (the service defers even that write:
:mod:`prelabel.deferred_writes`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from prelabel.access import Principal
from prelabel.audit import AuditAction, record_audit
from prelabel.errors import ConflictError, UserNotFound
from prelabel.tables import ApiTokenRow, UserRow, utcnow

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "plt_"
TOKEN_BYTES = 32
LAST_USED_RESOLUTION = timedelta(minutes=1)
BOOTSTRAP_ADMIN = "admin"
ADMIN_TOKEN_FILE = "admin-token"
"""Where the first start writes the ``admin`` user's token, under ``PRELABEL_HOME``."""

UserName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][\w.@+-]*$")]


class User(BaseModel):
    """A user, as listed (never with a token)."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: str
    name: str
    is_admin: bool
    created_at: datetime
    active_tokens: int = 0
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class IssuedToken:
    """A token just made: its text exists only here, to be shown once."""

    user: User
    token: str
    expires_at: datetime | None


def hash_token(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored and looked up."""
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token_text() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def _user_row(session: Session, name: str) -> UserRow:
    row = session.scalar(select(UserRow).where(UserRow.name == name))
    if row is None:
        raise UserNotFound(name)
    return row


def _describe(session: Session, row: UserRow) -> User:
    now = utcnow()
    tokens = session.scalars(
        select(ApiTokenRow).where(ApiTokenRow.user_id == row.id, ApiTokenRow.revoked_at.is_(None))
    ).all()
    active = [t for t in tokens if t.expires_at is None or t.expires_at > now]
    used = [t.last_used_at for t in tokens if t.last_used_at is not None]
    return User(
        id=row.id,
        name=row.name,
        is_admin=row.is_admin,
        created_at=row.created_at,
        active_tokens=len(active),
        last_used_at=max(used, default=None),
    )


def issue_token(
    session: Session, name: str, *, actor: str, expires_in: timedelta | None = None
) -> IssuedToken:
    """A new token for the user (audited). Earlier tokens stay valid."""
    row = _user_row(session, name)
    token = _new_token_text()
    expires_at = utcnow() + expires_in if expires_in is not None else None
    token_row = ApiTokenRow(user_id=row.id, token_hash=hash_token(token), expires_at=expires_at)
    session.add(token_row)
    session.flush()
    record_audit(
        session,
        None,
        actor=actor,
        action=AuditAction.TOKEN_ISSUED,
        details={"user_id": row.id, "token_id": token_row.id, "expires_at": _iso(expires_at)},
    )
    return IssuedToken(user=_describe(session, row), token=token, expires_at=expires_at)


def add_user(
    session: Session,
    name: str,
    *,
    is_admin: bool,
    actor: str,
    expires_in: timedelta | None = None,
) -> IssuedToken:
    """Create a user with a first token (audited).

    Raises:
        ConflictError: The name is taken, in any letter case: ``Alice`` and ``alice``
            would be two people whom audit logs, exports and dashboards tell apart by
            case alone.
    """
    wanted = name.casefold()
    for taken in session.scalars(select(UserRow.name)):
        if taken.casefold() == wanted:
            shown = "" if taken == name else f" as {taken!r}"
            raise ConflictError(f"user {name!r} already exists{shown}")
    row = UserRow(name=name, is_admin=is_admin)
    session.add(row)
    session.flush()
    record_audit(
        session,
        None,
        actor=actor,
        action=AuditAction.USER_ADDED,
        details={"user_id": row.id, "is_admin": is_admin},
    )
    logger.info("user %s added (admin=%s) by %s", row.id, is_admin, actor)
    return issue_token(session, name, actor=actor, expires_in=expires_in)


def list_users(session: Session) -> list[User]:
    """Every user, by name."""
    rows = session.scalars(select(UserRow).order_by(UserRow.name))
    return [_describe(session, row) for row in rows]


def revoke_tokens(session: Session, name: str, *, actor: str, keep_an_admin: bool = True) -> int:
    """Revoke every active token of the user (audited); the number revoked.

    The user and its memberships stay: a new token (``issue_token``) lets it back in.

    Args:
        keep_an_admin: Refuse to revoke the tokens of the last admin with a valid
            token: over HTTP nobody could then issue one again. The CLI, which works
            on the database directly and can issue a new token, passes False.

    Raises:
        UserNotFound: No such user.
        ConflictError: ``keep_an_admin`` and the user is the last admin who can sign in.
    """
    row = _user_row(session, name)
    now = utcnow()
    if keep_an_admin and row.is_admin and not _other_signed_in_admins(session, row.id, now):
        raise ConflictError(
            f"{name!r} is the last admin with a valid token: revoking its tokens would leave "
            "nobody to administer the service over HTTP. Add another admin first, or revoke "
            "with the CLI (`prelabel users revoke`), which can issue a new token"
        )
    tokens = session.scalars(
        select(ApiTokenRow).where(ApiTokenRow.user_id == row.id, ApiTokenRow.revoked_at.is_(None))
    ).all()
    for token in tokens:
        token.revoked_at = now
    record_audit(
        session,
        None,
        actor=actor,
        action=AuditAction.TOKENS_REVOKED,
        details={"user_id": row.id, "token_ids": [t.id for t in tokens]},
    )
    logger.info("%d tokens of user %s revoked by %s", len(tokens), row.id, actor)
    return len(tokens)


def _other_signed_in_admins(session: Session, user_id: str, now: datetime) -> bool:
    """Whether an admin other than ``user_id`` holds a token neither revoked nor expired."""
    expiries = session.scalars(
        select(ApiTokenRow.expires_at)
        .join(UserRow, UserRow.id == ApiTokenRow.user_id)
        .where(UserRow.is_admin.is_(True), UserRow.id != user_id, ApiTokenRow.revoked_at.is_(None))
    )
    return any(expires_at is None or expires_at > now for expires_at in expiries)


@dataclass(frozen=True)
class TokenCheck:
    """A valid token's user, and whether its ``last_used_at`` is due to be recorded."""

    principal: Principal
    token_id: str
    used_at: datetime
    stamp_due: bool


def check_token(session: Session, token: str) -> TokenCheck | None:
    """The user a token belongs to, if the token is known, not revoked and not expired.

    Reads only; ``stamp_due`` says whether the token's ``last_used_at`` is older than
    ``LAST_USED_RESOLUTION`` (record it with :func:`stamp_token_uses`).
    """
    found = session.execute(
        select(ApiTokenRow, UserRow)
        .join(UserRow, UserRow.id == ApiTokenRow.user_id)
        .where(ApiTokenRow.token_hash == hash_token(token))
    ).one_or_none()
    if found is None:
        return None
    token_row, user = found
    now = utcnow()
    if token_row.revoked_at is not None or (
        token_row.expires_at is not None and token_row.expires_at <= now
    ):
        return None
    return TokenCheck(
        principal=Principal(user_id=user.id, name=user.name, is_admin=user.is_admin),
        token_id=token_row.id,
        used_at=now,
        stamp_due=token_row.last_used_at is None
        or now - token_row.last_used_at >= LAST_USED_RESOLUTION,
    )


def stamp_token_uses(session: Session, uses: Mapping[str, datetime]) -> None:
    """Record when tokens were last used (``{token id: time}``); never moves one back."""
    for token_id, used_at in uses.items():
        session.execute(
            update(ApiTokenRow)
            .where(
                ApiTokenRow.id == token_id,
                or_(ApiTokenRow.last_used_at.is_(None), ApiTokenRow.last_used_at < used_at),
            )
            .values(last_used_at=used_at)
        )


def authenticate(session: Session, token: str) -> Principal | None:
    """The user a token belongs to (see :func:`check_token`), recording ``last_used_at``
    in the caller's transaction when it is due; the caller commits the session."""
    check = check_token(session, token)
    if check is None:
        return None
    if check.stamp_due:
        stamp_token_uses(session, {check.token_id: check.used_at})
    return check.principal


def user_principal(session: Session, name: str) -> Principal:
    """The principal of a user by name (for the CLI acting as that user)."""
    row = _user_row(session, name)
    return Principal(user_id=row.id, name=row.name, is_admin=row.is_admin)


def bootstrap_admin(session: Session, *, actor: str) -> IssuedToken | None:
    """On a database without users: create ``admin`` and its token; else None."""
    if session.scalar(select(func.count()).select_from(UserRow)):
        return None
    return add_user(session, BOOTSTRAP_ADMIN, is_admin=True, actor=actor)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
