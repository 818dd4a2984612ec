"""Dataset export: the png layout imports back, filters select the right corrections, CLI."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image as PILImage
from sqlalchemy import update
from typer.testing import CliRunner
from typing_extensions import Buffer

from prelabel.cli import app
from prelabel.codecs import decode_image
from prelabel.corrections import (
    Correction,
    current_corrections,
    load_correction_mask,
    submit_correction,
)
from prelabel.database import transaction
from prelabel.dataset_export import (
    ExportFilter,
    ExportFormat,
    ExportManifest,
    parse_export_filter,
    select_corrections,
    write_export_zip,
)
from prelabel.datasets.folder import read_schema
from prelabel.drafts import empty_draft, store_draft
from prelabel.images import Image, add_image, list_images
from prelabel.importer import import_dataset
from prelabel.projects import Project, ProjectSpec, create_project, get_project
from prelabel.schema import LabelClass
from prelabel.settings import StorageSettings, get_storage_settings
from prelabel.tables import CorrectionRow
from prelabel.workspace import Workspace
from tests.backends import use_storage
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample

MAX_PIXELS = 512 * 512
IGNORE = 255


def _project(workspace: Workspace, name: str = "shapes") -> Project:
    classes = [LabelClass.model_validate(c) for c in SHAPES_CLASSES]
    with transaction(workspace.sessions) as session:
        return create_project(session, ProjectSpec(name=name, classes=classes), actor="test")


def _encoded(array: npt.NDArray[np.uint8], image_format: str) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format=image_format)
    return buffer.getvalue()


def _labelled(seed: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    image, mask = shapes_sample(seed)
    mask[:2, :3] = IGNORE
    return image, mask


def _add(workspace: Workspace, project: Project, filename: str, data: bytes) -> Image:
    with transaction(workspace.sessions) as session:
        return add_image(
            session,
            workspace.blobs,
            project_id=project.id,
            filename=filename,
            data=data,
            max_pixels=MAX_PIXELS,
            actor="test",
        )


def _correct(
    workspace: Workspace,
    project: Project,
    image: Image,
    mask: npt.NDArray[np.uint8],
    *,
    draft_mask: npt.NDArray[np.integer] | None = None,
    draft_version: str | None = None,
) -> Correction:
    """Store a correction, after a draft by ``draft_version`` to start from if ``draft_mask``."""
    with transaction(workspace.sessions) as session:
        draft_id = None
        if draft_mask is not None:
            draft_id = store_draft(
                session,
                workspace.blobs,
                image=image,
                schema=project.label_schema,
                mask=draft_mask,
                confidence=np.ones(draft_mask.shape, dtype=np.float32),
                model_version=draft_version,
            ).id
        return submit_correction(
            session,
            workspace.blobs,
            project=project,
            image=image,
            mask=mask,
            annotator="ana",
            draft_id=draft_id,
        )


def _export(
    workspace: Workspace,
    project: Project,
    export_format: ExportFormat = ExportFormat.PNG,
    export_filter: ExportFilter | None = None,
) -> zipfile.ZipFile:
    with workspace.sessions() as session:
        corrections = select_corrections(session, project, export_filter or ExportFilter())
    buffer = io.BytesIO()
    write_export_zip(workspace, project, corrections, export_format, buffer)
    return zipfile.ZipFile(buffer)


def _manifest(archive: zipfile.ZipFile) -> ExportManifest:
    return ExportManifest.model_validate_json(archive.read("manifest.json"))


def test_png_export_is_a_dataset_folder_that_imports_back(
    workspace: Workspace, tmp_path: Path
) -> None:
    project = _project(workspace)
    samples = [_labelled(seed) for seed in range(5)]
    rgb = np.stack([samples[1][0]] * 3, axis=-1)
    uploads = [
        ("a.png", png_bytes(samples[0][0])),
        ("a.png", png_bytes(rgb)),  # the same name twice
        ("A.jpeg", _encoded(samples[2][0], "JPEG")),  # the same stem but for case
        ("scan.tif", _encoded(samples[3][0], "TIFF")),  # not readable by a dataset folder
        ("b.PNG", png_bytes(samples[4][0])),
    ]
    images = [_add(workspace, project, name, data) for name, data in uploads]
    for image, (_, mask) in zip(images, samples, strict=True):
        _correct(workspace, project, image, mask)

    archive = _export(workspace, project)
    manifest = _manifest(archive)
    files = [entry.image_file for entry in manifest.images]
    assert files == [
        "images/a.png",
        f"images/a-{images[1].id}.png",
        f"images/A-{images[2].id}.jpeg",
        "images/scan.png",
        "images/b.PNG",
    ]
    assert [entry.reencoded for entry in manifest.images] == [False, False, False, True, False]
    assert archive.read(files[2]) == uploads[2][1]  # bytes as uploaded
    assert manifest.images[0].mask_file == "masks/a.png" and manifest.images[0].accepted is None

    folder = tmp_path / "export"
    archive.extractall(folder)
    assert read_schema(folder) == project.label_schema
    report = import_dataset(workspace, folder, project="copy", max_pixels=MAX_PIXELS, actor="test")
    assert (report.images_added, report.corrections_added) == (5, 5)
    with workspace.sessions() as session:
        copy = get_project(session, "copy")
        by_name = {image.filename: image for image in list_images(session, copy.id)}
        copied = {c.image_id: c for c in current_corrections(session, copy.id)}
    assert copy.label_schema == project.label_schema
    for entry, (pixels_sent, mask) in zip(manifest.images, samples, strict=True):
        imported = by_name[Path(entry.image_file).name]
        np.testing.assert_array_equal(
            load_correction_mask(workspace.blobs, copied[imported.id]), mask
        )
        pixels = decode_image(workspace.blobs.get(imported.blob_key), max_pixels=MAX_PIXELS)
        if not entry.image_file.endswith(".jpeg"):
            np.testing.assert_array_equal(
                pixels if pixels.ndim == 2 else pixels[..., 0], pixels_sent
            )


class _Unseekable(io.RawIOBase):
    """A write-only stream without seek or tell, like an HTTP body or a pipe."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk: Buffer) -> int:
        view = memoryview(chunk)
        self.data.extend(view)
        return view.nbytes


def test_coco_export_streams_to_an_unseekable_stream(workspace: Workspace) -> None:
    project = _project(workspace)
    image, mask = _labelled(0)
    _correct(workspace, project, _add(workspace, project, "x.png", png_bytes(image)), mask)
    with workspace.sessions() as session:
        corrections = select_corrections(session, project, ExportFilter())
    stream = _Unseekable()
    with io.BufferedWriter(stream) as buffered:
        summary = write_export_zip(workspace, project, corrections, ExportFormat.COCO, buffered)
        buffered.flush()

    archive = zipfile.ZipFile(io.BytesIO(bytes(stream.data)))
    assert sorted(archive.namelist()) == ["annotations.json", "images/x.png", "manifest.json"]
    coco = json.loads(archive.read("annotations.json"))
    assert [a["category_id"] for a in coco["annotations"]] == [0, 1, 2]
    assert (summary.images, summary.annotations) == (1, 3)
    assert _manifest(archive).images[0].mask_file is None


@pytest.fixture
def varied(workspace: Workspace) -> tuple[Project, dict[str, Correction]]:
    """Current corrections created on Jan 1..5: a, e accepted drafts of v1, v2; b edited
    from v1; c from an empty draft; d without any draft. a was corrected twice."""
    project = _project(workspace)
    masks = {name: _labelled(seed)[1] for seed, name in enumerate("abcde")}
    images = {n: _add(workspace, project, f"{n}.png", png_bytes(m)) for n, m in masks.items()}
    empty, _ = empty_draft(project.label_schema, 64, 64)
    other = masks["e"]
    _correct(workspace, project, images["a"], masks["a"], draft_mask=other, draft_version="v1")
    made = {
        "a": _correct(
            workspace, project, images["a"], masks["a"], draft_mask=masks["a"], draft_version="v1"
        ),
        "b": _correct(
            workspace, project, images["b"], masks["b"], draft_mask=other, draft_version="v1"
        ),
        "c": _correct(workspace, project, images["c"], masks["c"], draft_mask=empty),
        "d": _correct(workspace, project, images["d"], masks["d"]),
        "e": _correct(
            workspace, project, images["e"], masks["e"], draft_mask=masks["e"], draft_version="v2"
        ),
    }
    with transaction(workspace.sessions) as session:
        for day, name in enumerate("abcde", start=1):
            session.execute(
                update(CorrectionRow)
                .where(CorrectionRow.id == made[name].id)
                .values(created_at=datetime(2025, 1, day, 12, tzinfo=UTC))
            )
    return project, made


@pytest.mark.parametrize(
    "export_filter, expected",
    [
        (ExportFilter(), "abcde"),
        (ExportFilter(approved_only=True), "ae"),
        (ExportFilter(model_version="v1"), "ab"),
        (ExportFilter(model_version="none"), "cd"),
        (ExportFilter(since=datetime(2025, 1, 3, tzinfo=UTC)), "cde"),
        (ExportFilter(until=datetime(2025, 1, 3, tzinfo=UTC)), "ab"),
        (ExportFilter(since=datetime(2025, 1, 4)), "de"),  # naive: read as UTC
        (ExportFilter(approved_only=True, model_version="v2"), "e"),
        (ExportFilter(approved_only=True, model_version="none"), ""),
    ],
)
def test_filters_select_current_corrections(
    workspace: Workspace,
    varied: tuple[Project, dict[str, Correction]],
    export_filter: ExportFilter,
    expected: str,
) -> None:
    project, made = varied
    with workspace.sessions() as session:
        selected = [c.id for c in select_corrections(session, project, export_filter)]
    assert selected == [made[name].id for name in expected]


def test_filter_parsing() -> None:
    parsed = parse_export_filter(
        model_version="", since="2025-01-02", until="2025-01-03T12:00:00+02:00"
    )
    assert parsed.model_version is None
    assert parsed.since == datetime(2025, 1, 2, tzinfo=UTC)
    assert parsed.until == datetime(2025, 1, 3, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="since: "):
        parse_export_filter(since="yesterday")
    with pytest.raises(ValueError, match="must be before until"):
        parse_export_filter(since="2025-01-02", until="2025-01-02")


@pytest.fixture
def cli_home(storage_settings: StorageSettings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the CLI's cached settings at the test's storage."""
    use_storage(monkeypatch, storage_settings)
    get_storage_settings.cache_clear()
    yield
    get_storage_settings.cache_clear()


def test_cli_export(
    workspace: Workspace,
    varied: tuple[Project, dict[str, Correction]],
    cli_home: None,
    tmp_path: Path,
) -> None:
    project, made = varied
    out = tmp_path / "approved.zip"
    runner = CliRunner()
    args = ["export", "--project", project.name, "--format", "coco", "--approved-only"]
    result = runner.invoke(app, [*args, "--since", "2025-01-02", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 images, 3 annotations" in result.output
    with zipfile.ZipFile(out) as archive:
        manifest = _manifest(archive)
    assert [entry.correction_id for entry in manifest.images] == [made["e"].id]
    assert manifest.filter == ExportFilter(approved_only=True, since=datetime(2025, 1, 2))
    assert [p.name for p in tmp_path.iterdir()] == ["approved.zip", "home"]

    bad = runner.invoke(app, ["export", "--project", project.name, "--since", "soon", "--out", "x"])
    assert bad.exit_code == 2 and "since" in bad.output
