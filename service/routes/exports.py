"""``/projects/{project}/export``: the project's corrections as a zip, for ML staff."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from tempfile import SpooledTemporaryFile
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from prelabel.dataset_export import ExportFormat, export_project, parse_export_filter
from prelabel.errors import ValidationFailed
from service.auth import CallerDep
from service.deps import WorkspaceDep

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/projects/{project}", tags=["exports"])

SPOOL_MAX_BYTES = 32 * 1024 * 1024
"""Exports up to this size are built in memory; bigger ones spill to a temporary file."""

CHUNK_BYTES = 1024 * 1024

_TIME_HELP = "ISO 8601 time of the correction; without an offset it is UTC"


def _chunks(spool: SpooledTemporaryFile[bytes]) -> Iterator[bytes]:
    try:
        while chunk := spool.read(CHUNK_BYTES):
            yield chunk
    finally:
        spool.close()


def _content_disposition(filename: str) -> str:
    # Project names may hold any character but '/': an ASCII fallback plus RFC 5987.
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
def export_dataset(
    project: str,
    caller: CallerDep,
    workspace: WorkspaceDep,
    export_format: Annotated[
        ExportFormat, Query(alias="format", description="png: dataset folder; coco: COCO RLE")
    ] = ExportFormat.PNG,
    approved_only: Annotated[
        bool,
        Query(
            description="projects requiring review: only QA-approved corrections; others: "
            "only corrections whose draft was accepted (≤ threshold changed)"
        ),
    ] = False,
    model_version: Annotated[
        str | None,
        Query(description='only corrections of drafts by this version; "none": no model'),
    ] = None,
    since: Annotated[str | None, Query(description=f"from this time on; {_TIME_HELP}")] = None,
    until: Annotated[str | None, Query(description=f"before this time; {_TIME_HELP}")] = None,
) -> StreamingResponse:
    """The project's current corrections as a zip: images, masks and labels.yaml, or COCO JSON.

    The zip is built before the first byte is sent (so errors still get a
    status), in a spooled temporary file: memory holds at most
    ``SPOOL_MAX_BYTES``, bigger exports go to disk, then stream in chunks.
    """
    try:
        export_filter = parse_export_filter(
            approved_only=approved_only, model_version=model_version, since=since, until=until
        )
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc
    # Not a `with`: the spool outlives this function; _chunks closes it once streamed.
    spool: SpooledTemporaryFile[bytes] = SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES)  # noqa: SIM115
    try:
        summary = export_project(
            workspace,
            caller.checked_project.id,
            export_filter,
            export_format,
            spool,
            actor=caller.name,
        )
    except BaseException:
        spool.close()
        raise
    size = spool.tell()
    spool.seek(0)
    filename = f"{summary.project_name}-{export_format}.zip"
    return StreamingResponse(
        _chunks(spool),
        media_type="application/zip",
        headers={
            "Content-Disposition": _content_disposition(filename),
            "Content-Length": str(size),
            "X-Export-Images": str(summary.images),
        },
    )
