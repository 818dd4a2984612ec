"""Rendering dashboard pages: Jinja2 templates (``service/templates``), the language of the
request, the CSRF token of the page's forms, and errors as HTML pages."""

from __future__ import annotations

import base64
import io
from functools import cache
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image as PILImage

from service.catalogue import LANGUAGES, STRINGS, choose_language
from service.sessions import csrf_token, keep_csrf


@cache
def environment() -> Environment:
    """The template environment (autoescaping HTML)."""
    return Environment(
        loader=PackageLoader("service", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def language(request: Request) -> str:
    """The page language: ``?lang=`` if supported, else from ``Accept-Language``."""
    return choose_language(request.headers.get("accept-language"), request.query_params.get("lang"))


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` in the request's language, with a CSRF token for its forms."""
    lang = language(request)
    csrf = csrf_token(request)
    html = (
        environment()
        .get_template(template)
        .render(t=STRINGS[lang], lang=lang, languages=LANGUAGES, csrf=csrf, **context)
    )
    response = HTMLResponse(html, status_code=status_code)
    keep_csrf(request, response, csrf)
    return response


def error_page(request: Request, status: int, code: str, detail: str) -> Response:
    """A dashboard error: a redirect to the login form for 401, else an HTML page.

    The stable error code travels in ``X-Error-Code`` as it does in JSON answers.
    """
    if status == 401:
        target = f"/login?next={quote(request.url.path)}"
        return RedirectResponse(target, status_code=303)
    response = render(request, "error.html", status_code=status, status=status, detail=detail)
    response.headers["X-Error-Code"] = code
    return response


def png_data_uri(image: PILImage.Image) -> str:
    """A ``data:image/png;base64,...`` URI of ``image`` (inline, no extra request)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
