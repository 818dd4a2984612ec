"""Dashboard logins: the encrypted session cookie and the CSRF token of every form.

The session cookie holds the user's API token, sealed with the service's Fernet key
(encrypted and authenticated, with its issue time): every request re-authenticates
the token, so revoking it ends the session, and the cookie expires after
``SecuritySettings.session_ttl_s``. It is HttpOnly and SameSite=Strict and is
accepted only on dashboard pages (rules with ``page=True``); API clients keep
``Authorization: Bearer``.

CSRF: each form carries a random token that must equal the one sealed in the
``prelabel_csrf`` cookie (double submit; the cookie cannot be read or forged by
another site, and SameSite=Strict keeps it off cross-site posts anyway).
"""

from __future__ import annotations

import hmac
import json
import secrets

from cryptography.fernet import Fernet, InvalidToken
from fastapi import Request, Response

from prelabel.errors import Forbidden

SESSION_COOKIE = "prelabel_session"
CSRF_COOKIE = "prelabel_csrf"
CSRF_FIELD = "csrf"
_CSRF_TTL_S = 24 * 3600


def _fernet(request: Request) -> Fernet:
    fernet: Fernet = request.app.state.secret_box.fernet
    return fernet


def session_token(request: Request, ttl_s: int) -> str | None:
    """The API token of the request's session cookie, if it is valid and not expired."""
    sealed = request.cookies.get(SESSION_COOKIE)
    if not sealed:
        return None
    try:
        payload = json.loads(_fernet(request).decrypt(sealed.encode(), ttl=ttl_s))
    except (InvalidToken, ValueError):
        return None
    token = payload.get("token") if isinstance(payload, dict) else None
    return token if isinstance(token, str) else None


def start_session(request: Request, response: Response, token: str, ttl_s: int) -> None:
    """Set the session cookie for ``token`` on ``response``."""
    sealed = _fernet(request).encrypt(json.dumps({"token": token}).encode()).decode()
    secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE,
        sealed,
        max_age=ttl_s,
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
    )


def end_session(response: Response) -> None:
    """Remove the session cookie."""
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


def csrf_token(request: Request) -> str:
    """The request's CSRF token (from its cookie), or a fresh one to set with :func:`keep_csrf`."""
    sealed = request.cookies.get(CSRF_COOKIE)
    if sealed:
        try:
            return _fernet(request).decrypt(sealed.encode(), ttl=_CSRF_TTL_S).decode()
        except InvalidToken:
            pass
    fresh: str = request.state.__dict__.setdefault("csrf", secrets.token_urlsafe(32))
    return fresh


def keep_csrf(request: Request, response: Response, token: str) -> None:
    """Set the CSRF cookie for ``token`` (renewing it) on a page that shows a form."""
    sealed = _fernet(request).encrypt(token.encode()).decode()
    response.set_cookie(
        CSRF_COOKIE, sealed, max_age=_CSRF_TTL_S, httponly=True, samesite="strict", path="/"
    )


def check_csrf(request: Request, submitted: str | None) -> None:
    """Refuse a form POST whose CSRF field does not match its cookie.

    Raises:
        Forbidden: The field or the cookie is missing, or they differ.
    """
    sealed = request.cookies.get(CSRF_COOKIE)
    if not sealed or not submitted:
        raise Forbidden("the form's CSRF token is missing; reload the page and submit again")
    try:
        expected = _fernet(request).decrypt(sealed.encode(), ttl=_CSRF_TTL_S).decode()
    except InvalidToken as exc:
        raise Forbidden("the form's CSRF token expired; reload the page") from exc
    if not hmac.compare_digest(expected, submitted):
        raise Forbidden("the form's CSRF token is wrong; reload the page and submit again")
