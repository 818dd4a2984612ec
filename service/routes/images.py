"""``/projects/{project}/images``: upload, list, show and fetch images."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from prelabel.blobs import undo_puts_on_error
from prelabel.codecs import decode_image
from prelabel.database import transaction
from prelabel.errors import CodecError, ImageTooLarge
from prelabel.images import (
    Image,
    add_image,
    check_filename,
    get_image,
    list_images,
    read_image_file,
)
from prelabel.jobs import enqueue_drafts
from prelabel.model_versions import serving_version_name
from prelabel.projects import get_project
from prelabel.workspace import Workspace
from service.auth import CallerDep
from service.deps import SettingsDep, WorkspaceDep
from service.schemas import ImageOut, UploadResult

router = APIRouter(prefix="/projects/{project}/images", tags=["images"])


def _store_all(
    workspace: Workspace,
    project: str,
    files: list[tuple[str, bytes]],
    max_pixels: int,
    actor: str,
) -> list[Image]:
    # Decode every file before storing any, so a bad file in a batch stores nothing.
    decoded = []
    for name, data in files:
        check_filename(name)
        try:
            decoded.append(decode_image(data, max_pixels=max_pixels))
        except ImageTooLarge as exc:
            raise ImageTooLarge(f"{name}: {exc}") from exc
        except CodecError as exc:
            raise CodecError(f"{name}: {exc}") from exc
    # A batch is stored whole or not at all: blobs of a rolled-back batch are removed.
    with undo_puts_on_error(workspace.blobs) as blobs, transaction(workspace.sessions) as session:
        project_id = get_project(session, project).id
        stored = [
            add_image(
                session,
                blobs,
                project_id=project_id,
                filename=name,
                data=data,
                max_pixels=max_pixels,
                actor=actor,
                pixels=pixels,
            )
            for (name, data), pixels in zip(files, decoded, strict=True)
        ]
        if serving_version_name(session, project_id) is not None:
            # The worker drafts new images ahead of time (bulk pre-labeling).
            enqueue_drafts(session, project_id)
        return stored


def content_disposition(filename: str) -> str:
    """An ``inline`` disposition any name survives: ASCII fallback plus RFC 5987 UTF-8."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"inline; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.post("", status_code=status.HTTP_201_CREATED)
async def upload_images(
    project: str,
    files: Annotated[list[UploadFile], File()],
    workspace: WorkspaceDep,
    settings: SettingsDep,
    caller: CallerDep,
) -> UploadResult:
    """Upload one or more images (multipart field ``files``)."""
    payload: list[tuple[str, bytes]] = []
    for upload in files:
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ImageTooLarge(f"{upload.filename}: over {settings.max_upload_bytes} bytes")
        payload.append((upload.filename or "", data))
    stored = await run_in_threadpool(
        _store_all,
        workspace,
        caller.checked_project.id,
        payload,
        settings.max_image_pixels,
        caller.name,
    )
    return UploadResult(images=stored)


@router.get("")
def get_images(project: str, caller: CallerDep, workspace: WorkspaceDep) -> list[ImageOut]:
    """The project's images, with whether each has a correction."""
    with workspace.sessions() as session:
        return list_images(session, caller.checked_project.id)


@router.get("/{image}")
def get_one_image(project: str, image: str, caller: CallerDep, workspace: WorkspaceDep) -> ImageOut:
    """One image's metadata."""
    with workspace.sessions() as session:
        return get_image(session, caller.checked_project.id, image)


@router.get(
    "/{image}/file",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_image_file(
    project: str, image: str, caller: CallerDep, workspace: WorkspaceDep
) -> Response:
    """The image bytes as uploaded (the read is audited)."""
    found, data = read_image_file(workspace, caller.checked_project.id, image, actor=caller.name)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": content_disposition(found.filename)},
    )
