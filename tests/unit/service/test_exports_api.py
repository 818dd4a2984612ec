"""``GET /projects/{project}/export``: a png export imports back; COCO decodes to the masks."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient
from pycocotools import mask as coco_mask

from prelabel.codecs import decode_index_png
from prelabel.importer import import_dataset
from prelabel.workspace import Workspace
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample

IGNORE = 255
MAX_PIXELS = 512 * 512


def _corrected_project(
    client: TestClient, make_project: Callable[[str], str], count: int = 3
) -> dict[str, npt.NDArray[np.uint8]]:
    """Upload ``count`` images to project "shapes" and correct each; returns {image id: mask}."""
    make_project("shapes")
    samples = [shapes_sample(seed) for seed in range(count)]
    response = client.post(
        "/projects/shapes/images",
        files=[
            ("files", (f"s{n}.png", png_bytes(img), "image/png"))
            for n, (img, _) in enumerate(samples)
        ],
    )
    assert response.status_code == 201, response.text
    masks: dict[str, npt.NDArray[np.uint8]] = {}
    for uploaded, (_, mask) in zip(response.json()["images"], samples, strict=True):
        mask[:3, :2] = IGNORE
        corrected = client.put(
            f"/projects/shapes/images/{uploaded['id']}/correction",
            files={"mask": ("m.png", png_bytes(mask), "image/png")},
            data={"annotator": "ana"},
        )
        assert corrected.status_code == 200, corrected.text
        masks[uploaded["id"]] = mask
    return masks


def _export(client: TestClient, query: str) -> zipfile.ZipFile:
    response = client.get(f"/projects/shapes/export?{query}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(response.content))


def _correction_mask(client: TestClient, project: str, image_id: str) -> npt.NDArray[np.integer]:
    response = client.get(f"/projects/{project}/images/{image_id}/correction")
    assert response.status_code == 200, response.text
    return decode_index_png(response.content, max_pixels=MAX_PIXELS)


def test_png_export_round_trips_through_import(
    client: TestClient, make_project: Callable[[str], str], tmp_path: Path
) -> None:
    masks = _corrected_project(client, make_project)
    response = client.get("/projects/shapes/export?format=png&model_version=&since=&until=")
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"].startswith(
        'attachment; filename="shapes-png.zip"'
    )
    assert response.headers["x-export-images"] == "3"
    zipfile.ZipFile(io.BytesIO(response.content)).extractall(tmp_path / "export")

    workspace: Workspace = client.app.state.workspace  # type: ignore[attr-defined]
    import_dataset(
        workspace, tmp_path / "export", project="copy", max_pixels=MAX_PIXELS, actor="test"
    )

    original, copy = client.get("/projects/shapes").json(), client.get("/projects/copy").json()
    for key in ("classes", "ignore_index", "background_id"):
        assert copy[key] == original[key]
    names = {image["filename"]: image["id"] for image in client.get("/projects/copy/images").json()}
    assert sorted(names) == ["s0.png", "s1.png", "s2.png"]
    for image in client.get("/projects/shapes/images").json():
        copied = _correction_mask(client, "copy", names[image["filename"]])
        np.testing.assert_array_equal(copied, masks[image["id"]])


def _decode(segmentation: dict[str, Any]) -> npt.NDArray[np.bool_]:
    with warnings.catch_warnings():
        # pycocotools' decode trips numpy 2's __array__(copy=...) deprecation.
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded: npt.NDArray[np.uint8] = coco_mask.decode(segmentation)
    return decoded.astype(bool)


def test_coco_export_decodes_to_the_index_masks(
    client: TestClient, make_project: Callable[[str], str]
) -> None:
    masks = _corrected_project(client, make_project)
    archive = _export(client, "format=coco")
    coco = json.loads(archive.read("annotations.json"))

    assert coco["categories"] == [{"translations": {}, **c} for c in SHAPES_CLASSES]
    by_image = {image["id"]: image for image in coco["images"]}
    assert sorted(image["prelabel_image_id"] for image in by_image.values()) == sorted(masks)
    for image in by_image.values():
        assert archive.read(f"images/{image['file_name']}")
        mask = masks[image["prelabel_image_id"]]
        assert (image["height"], image["width"]) == mask.shape
        annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert [a["category_id"] for a in annotations] == [
            c for c in (0, 1, 2) if (mask == c).any()
        ]
        for annotation in annotations:
            binary = mask == annotation["category_id"]
            np.testing.assert_array_equal(_decode(annotation["segmentation"]), binary)
            rows, cols = np.nonzero(binary)
            assert annotation["area"] == binary.sum() and annotation["iscrowd"] == 0
            assert annotation["bbox"] == [
                cols.min(),
                rows.min(),
                cols.max() - cols.min() + 1,
                rows.max() - rows.min() + 1,
            ]
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])


def test_filters_pass_through(client: TestClient, make_project: Callable[[str], str]) -> None:
    _corrected_project(client, make_project, count=2)
    # The corrections were sent without any draft: made without a model, not accepted.
    for query, count in [
        ("model_version=none", 2),
        ("model_version=v9", 0),
        ("approved_only=true", 0),
        ("since=2000-01-01T00:00:00Z", 2),
        ("until=2000-01-01", 0),
    ]:
        response = client.get(f"/projects/shapes/export?{query}")
        assert response.headers["x-export-images"] == str(count), query
    empty = _export(client, "approved_only=true")
    assert sorted(empty.namelist()) == ["labels.yaml", "manifest.json"]


@pytest.mark.parametrize(
    "path, status, code",
    [
        ("/projects/nope/export", 404, "project_not_found"),
        ("/projects/shapes/export?since=soon", 422, "invalid_request"),
        ("/projects/shapes/export?since=2025-02-01&until=2025-01-01", 422, "invalid_request"),
        # Beyond the calendar once in UTC (each was a 500).
        ("/projects/shapes/export?since=9999-12-31T23:00:00-05:00", 422, "invalid_request"),
        ("/projects/shapes/export?until=0001-01-01T00:00:00%2B01:00", 422, "invalid_request"),
    ],
)
def test_bad_export_requests(
    client: TestClient,
    make_project: Callable[[str], str],
    path: str,
    status: int,
    code: str,
) -> None:
    make_project("shapes")
    response = client.get(path)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def test_unknown_format_is_422(client: TestClient, make_project: Callable[[str], str]) -> None:
    make_project("shapes")
    response = client.get("/projects/shapes/export?format=voc")
    assert response.status_code == 422
    assert "png" in response.text and "coco" in response.text
