"""Hostile and odd inputs: each gets a 4xx naming the problem, stores nothing, and the next
request is served as usual.

Decided (README, "Robustness"): 16-bit greyscale, CMYK, palette and alpha images are
accepted (normalised to L or RGB, alpha dropped); EXIF-rotated images and multi-frame
GIF/TIFF are refused (the pixels to label would be ambiguous); folder parts of a file
name are dropped but ``..``, control and format characters and names over 255 bytes are
refused; unknown query parameters are refused; a full blob store is 507 ``storage_full``.
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, TiffImagePlugin

from prelabel.codecs import encode_rle
from prelabel.images import get_image
from prelabel.settings import SecuritySettings, ServiceSettings, StorageSettings
from prelabel.workspace import Workspace
from tests.conftest import admin_token
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample

Refused = Callable[..., None]


def _blob_files(storage: StorageSettings) -> list[Path]:
    root = storage.resolved_blob_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def project(make_project: Callable[[str], str]) -> str:
    return make_project("shapes")


@pytest.fixture
def refused(client: TestClient, project: str, storage_settings: StorageSettings) -> Refused:
    """Check an answer: the status, words of the detail, nothing stored, next request fine."""
    images_before = client.get(f"/projects/{project}/images").json()
    blobs_before = _blob_files(storage_settings)

    def check(response: httpx.Response, status: int, *words: str) -> None:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"detail", "code"}, body
        for word in words:
            assert word.lower() in body["detail"].lower(), body
        assert client.get(f"/projects/{project}/images").json() == images_before
        assert _blob_files(storage_settings) == blobs_before
        good = _upload(client, project, "good.png", png_bytes(shapes_sample(1)[0]))
        assert good.status_code == 201, good.text
        image_id = good.json()["images"][0]["id"]
        assert client.delete(f"/projects/{project}/images/{image_id}").status_code == 200
        images_before[:] = client.get(f"/projects/{project}/images").json()
        blobs_before[:] = _blob_files(storage_settings)

    return check


def _upload(client: TestClient, project: str, name: str, data: bytes) -> httpx.Response:
    return client.post(f"/projects/{project}/images", files={"files": (name, data)})


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def _png_declaring(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header declares ``width`` x ``height`` greyscale pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 marker is patched to declare ``width`` x ``height``."""
    data = bytearray(_jpeg(Image.new("L", (8, 8))))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# --- images ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data"),
    [("bomb.png", _png_declaring(60_000, 60_000)), ("bomb.jpg", _jpeg_declaring(60_000, 60_000))],
)
def test_decompression_bombs_are_413(
    client: TestClient, project: str, refused: Refused, name: str, data: bytes
) -> None:
    assert len(data) < 1_000
    refused(_upload(client, project, name, data), 413, name, "60000")


def test_truncated_corrupt_and_empty_images_are_422(
    client: TestClient, project: str, refused: Refused
) -> None:
    good = png_bytes(shapes_sample(2)[0])
    refused(_upload(client, project, "cut.png", good[: len(good) // 2]), 422, "truncated")
    corrupt = good[:40] + bytes(range(256)) * 4
    refused(_upload(client, project, "corrupt.png", corrupt), 422, "corrupt.png")
    refused(_upload(client, project, "empty.png", b""), 422, "empty.png", "0 bytes")


def test_svg_and_html_with_an_image_extension_are_422(
    client: TestClient, project: str, refused: Refused
) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    refused(_upload(client, project, "x.png", svg), 422, "x.png", "not a readable image")
    html = b"<!doctype html><html><body onload='alert(1)'></body></html>"
    refused(_upload(client, project, "y.jpg", html), 422, "y.jpg", "not a readable image")


@pytest.mark.parametrize(
    ("name", "data", "channels"),
    [
        ("grey16.png", _encoded(Image.fromarray(np.full((8, 8), 40_000, np.uint16)), "PNG"), 1),
        ("cmyk.jpg", _jpeg(Image.new("CMYK", (8, 8), (0, 255, 255, 0))), 3),
        ("palette.png", _encoded(Image.new("RGB", (8, 8), "red").convert("P"), "PNG"), 3),
        ("alpha.png", _encoded(Image.new("RGBA", (8, 8), (0, 0, 255, 10)), "PNG"), 3),
    ],
)
def test_wide_colour_palette_and_alpha_images_are_accepted(
    client: TestClient,
    project: str,
    workspace: Workspace,
    name: str,
    data: bytes,
    channels: int,
) -> None:
    answer = _upload(client, project, name, data)
    assert answer.status_code == 201, answer.text
    image_id = answer.json()["images"][0]["id"]
    with workspace.sessions() as session:
        stored = get_image(session, project, image_id)
    assert (stored.width, stored.height, stored.channels) == (8, 8, channels)
    assert client.get(f"/projects/{project}/images/{image_id}/file").content == data


def test_exif_rotated_images_are_refused(
    client: TestClient, project: str, refused: Refused
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees clockwise
    rotated = _jpeg(Image.new("RGB", (16, 8), "white"), exif=exif.tobytes())
    refused(_upload(client, project, "phone.jpg", rotated), 422, "EXIF orientation 6", "upright")
    upright = Image.Exif()
    upright[0x0112] = 1
    plain = _jpeg(Image.new("RGB", (16, 8), "white"), exif=upright.tobytes())
    assert _upload(client, project, "upright.jpg", plain).status_code == 201
    # A TIFF's orientation tag was applied on loading: its drafts were upright while the
    # file handed back to the annotation tool was not. Now refused like a JPEG's.
    for orientation, status in ((6, 422), (3, 422), (1, 201)):
        tags = TiffImagePlugin.ImageFileDirectory_v2()
        tags[0x0112] = orientation
        tiff = io.BytesIO()
        Image.new("L", (16, 8), 255).save(tiff, format="TIFF", tiffinfo=tags)
        answer = _upload(client, project, f"scan-{orientation}.tif", tiff.getvalue())
        assert answer.status_code == status, answer.text
        if status == 422:
            assert f"TIFF orientation {orientation}" in answer.json()["detail"]


def test_multi_frame_gif_and_tiff_are_refused(
    client: TestClient, project: str, refused: Refused
) -> None:
    frames = [Image.new("L", (8, 8), value) for value in (0, 128, 255)]
    for fmt, name in (("GIF", "anim.gif"), ("TIFF", "stack.tif")):
        data = _encoded(frames[0], fmt, save_all=True, append_images=frames[1:])
        refused(_upload(client, project, name, data), 422, "3 frames", "one image per frame")


def _unreadable_to_pillow() -> list[tuple[str, bytes]]:
    """Files Pillow fails on with other errors than OSError (each was a 500)."""
    frames = [Image.new("L", (8, 8), value) for value in (0, 128, 255)]
    plain = _encoded(frames[0], "PNG")
    # A text chunk that inflates past PngImagePlugin.MAX_TEXT_CHUNK (ValueError).
    text_bomb = _png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"\x00" * (2 << 20)))
    # An animated PNG whose frame control chunk is cut short (ValueError).
    apng = _encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])
    fctl = apng.index(b"fcTL") - 4
    (length,) = struct.unpack(">I", apng[fctl : fctl + 4])
    cut_fctl = _png_chunk(b"fcTL", apng[fctl + 8 : fctl + 18])
    # A TIFF stack whose second page has no width (TypeError while counting frames).
    stack = bytearray(_encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:]))
    (first,) = struct.unpack("<I", stack[4:8])
    (entries,) = struct.unpack("<H", stack[first : first + 2])
    (second,) = struct.unpack("<I", stack[first + 2 + 12 * entries : first + 6 + 12 * entries])
    stack[second + 2 : second + 4] = struct.pack("<H", 255)  # ImageWidth (256) -> 255
    # A GIF whose last frame's descriptor is cut (struct.error while counting frames).
    gif = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    return [
        ("text-bomb.png", plain[:33] + text_bomb + plain[33:]),
        ("cut-fctl.png", apng[:fctl] + cut_fctl + apng[fctl + 12 + length :]),
        ("no-width.tif", bytes(stack)),
        ("cut-frame.gif", gif[: gif.rindex(b"\x2c") + 3]),
    ]


@pytest.mark.parametrize(("name", "data"), _unreadable_to_pillow())
def test_files_pillow_fails_on_without_an_oserror_are_422(
    client: TestClient, project: str, refused: Refused, name: str, data: bytes
) -> None:
    refused(_upload(client, project, name, data), 422, name)


# --- masks and RLE ---------------------------------------------------------


@pytest.fixture
def image_id(client: TestClient, project: str) -> str:
    answer = _upload(client, project, "a.png", png_bytes(shapes_sample(3)[0]))
    assert answer.status_code == 201
    return str(answer.json()["images"][0]["id"])


def _put_mask(client: TestClient, project: str, image: str, data: bytes) -> httpx.Response:
    return client.put(
        f"/projects/{project}/images/{image}/correction", files={"mask": ("m.png", data)}
    )


def _put_rles(client: TestClient, project: str, image: str, body: object) -> httpx.Response:
    return client.put(f"/projects/{project}/images/{image}/correction", json=body)


def test_masks_of_another_mode_or_size_are_422(
    client: TestClient, project: str, image_id: str, refused: Refused
) -> None:
    rgb = png_bytes(np.zeros((64, 64, 3), dtype=np.uint8))
    refused(_put_mask(client, project, image_id, rgb), 422, "single-channel", "'RGB'")
    small = png_bytes(np.zeros((32, 64), dtype=np.uint8))
    refused(_put_mask(client, project, image_id, small), 422, "32", "64")
    assert client.get(f"/projects/{project}/images/{image_id}/corrections").json() == []


def test_rle_counts_overflowing_the_size_and_unknown_classes_are_422(
    client: TestClient, project: str, image_id: str, refused: Refused
) -> None:
    overflow = {"classes": {"1": {"size": [64, 64], "counts": [0, 64 * 64 + 1]}}}
    refused(_put_rles(client, project, image_id, overflow), 422, "counts")
    huge_run = {"classes": {"1": {"size": [64, 64], "counts": "0" + "o" * 7 + "Q"}}}
    refused(_put_rles(client, project, image_id, huge_run), 422)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:8] = 9
    refused(_put_mask(client, project, image_id, png_bytes(mask)), 422, "9")
    assert client.get(f"/projects/{project}/images/{image_id}/corrections").json() == []


def test_class_keys_that_name_no_class_of_the_schema_are_422(
    client: TestClient, project: str, image_id: str, refused: Refused
) -> None:
    # int() refuses '²' (a 500) and reads ARABIC-INDIC DIGIT ONE as class 1; ids past uint8
    # overflowed the mask (500s).
    top, bottom = np.zeros((64, 64), dtype=np.bool_), np.zeros((64, 64), dtype=np.bool_)
    top[:32], bottom[32:] = True, True
    rle = encode_rle(top).model_dump()
    for key in ("²", "\u0661", "1 "):
        refused(_put_rles(client, project, image_id, {"classes": {key: rle}}), 422, "class key")
    for key, named in (("300", "300"), ("70000", "70000"), ("9" * 5000, "999")):
        answer = _put_rles(client, project, image_id, {"classes": {key: rle}})
        refused(answer, 422, f"class id {named}", "not in the schema")
    # "1" and "01" both name class 1: one RLE would silently replace the other.
    twice = {"classes": {"1": rle, "01": encode_rle(bottom).model_dump()}}
    refused(_put_rles(client, project, image_id, twice), 422, "class 1", "twice")
    assert client.get(f"/projects/{project}/images/{image_id}/corrections").json() == []


def test_unstorable_lead_times_annotators_and_draft_ids_are_422(
    client: TestClient, project: str, image_id: str, refused: Refused
) -> None:
    # NaN and infinity were stored (shown as null); a multipart annotator skipped the
    # 200-character limit of JSON and of its column; a draft_id sent as a file was ignored.
    mask = ("m.png", png_bytes(np.zeros((64, 64), dtype=np.uint8)))
    url = f"/projects/{project}/images/{image_id}/correction"
    for lead in ("nan", "inf", "1e400"):
        answer = client.put(url, files={"mask": mask}, data={"lead_time_s": lead})
        refused(answer, 422, "lead_time_s", "finite")
    as_json = b'{"classes": {}, "lead_time_s": 1e400}'
    answer = client.put(url, content=as_json, headers={"content-type": "application/json"})
    refused(answer, 422, "lead_time_s", "finite")
    refused(client.put(url, files={"mask": mask}, data={"annotator": "a" * 201}), 422, "200")
    refused(client.put(url, files={"mask": mask}, data={"annotator": "a\x00b"}), 422, "control")
    answer = client.put(url, files={"mask": mask, "draft_id": ("d.txt", b"x")})
    refused(answer, 422, "draft_id", "text")
    assert client.get(f"/projects/{project}/images/{image_id}/corrections").json() == []


# --- request bodies ---------------------------------------------------------


def test_json_nested_ten_thousand_deep_is_4xx(
    client: TestClient, project: str, image_id: str, refused: Refused
) -> None:
    deep = b"[" * 10_000 + b"]" * 10_000
    headers = {"content-type": "application/json"}
    answer = client.post("/projects", content=deep, headers=headers)
    assert answer.status_code in (400, 422), answer.text
    assert client.get("/projects").status_code == 200
    nested = b'{"classes": {"1": ' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_001 + b"}"
    put = client.put(
        f"/projects/{project}/images/{image_id}/correction", content=nested, headers=headers
    )
    refused(put, 422, "recursion")


def test_json_of_50_mb_is_413(client: TestClient, project: str, refused: Refused) -> None:
    body = json.dumps({"name": "x" * (50 * 1024 * 1024), "classes": []}).encode()
    answer = client.post("/projects", content=body, headers={"content-type": "application/json"})
    refused(answer, 413, "JSON body", "limit")
    assert [p["name"] for p in client.get("/projects").json()] == ["shapes"]


def _multipart(parts: list[tuple[bytes, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A raw multipart body: (Content-Disposition value, content) per part, bytes as given."""
    boundary = b"prelabelboundary"
    body = b"".join(
        b"--"
        + boundary
        + b"\r\nContent-Disposition: "
        + disposition
        + b"\r\n\r\n"
        + content
        + b"\r\n"
        for disposition, content in parts
    )
    body += b"--" + boundary + b"--\r\n"
    return body, {"content-type": f"multipart/form-data; boundary={boundary.decode()}"}


def test_multipart_with_ten_thousand_fields_is_400(
    client: TestClient, project: str, refused: Refused
) -> None:
    parts = [(f'form-data; name="f{i}"'.encode(), b"x") for i in range(10_000)]
    body, headers = _multipart(parts)
    answer = client.post(f"/projects/{project}/images", content=body, headers=headers)
    refused(answer, 400, "too many fields")


@pytest.mark.parametrize(
    ("filename", "words"),
    [
        (b"../../etc/passwd.png", ("'..'",)),
        (b"a\x00.png", ("U+0000",)),
        ("gnp\u202e.exe".encode(), ("U+202E",)),
        (b"a" * 1_000 + b".png", ("1004 bytes", "255")),
    ],
)
def test_hostile_file_names_are_422(
    client: TestClient, project: str, refused: Refused, filename: bytes, words: tuple[str, ...]
) -> None:
    data = png_bytes(shapes_sample(4)[0])
    disposition = b'form-data; name="files"; filename="' + filename + b'"'
    body, headers = _multipart([(disposition, data)])
    answer = client.post(f"/projects/{project}/images", content=body, headers=headers)
    refused(answer, 422, "file name", *words)


def test_folder_parts_of_a_file_name_are_dropped_and_odd_names_read_back(
    client: TestClient, project: str
) -> None:
    data = png_bytes(shapes_sample(5)[0])
    answer = _upload(client, project, "scans/week 1/scan 7 画像.png", data)
    assert answer.status_code == 201, answer.text
    assert answer.json()["images"][0]["filename"] == "scan 7 画像.png"
    image = answer.json()["images"][0]["id"]
    fetched = client.get(f"/projects/{project}/images/{image}/file")
    assert fetched.status_code == 200
    assert (
        "filename*=UTF-8''scan%207%20%E7%94%BB%E5%83%8F.png"
        in (fetched.headers["content-disposition"])
    )


def test_unknown_query_parameters_are_422(
    client: TestClient, project: str, image_id: str, refused: Refused
) -> None:
    answer = client.get(f"/projects/{project}/queue", params={"limt": 3})
    refused(answer, 422, "limt", "limit", "strategy")
    draft = client.get(f"/projects/{project}/images/{image_id}/draft", params={"fromat": "json"})
    refused(draft, 422, "fromat", "format")
    assert client.get(f"/projects/{project}/queue", params={"limit": 3}).status_code == 200


def test_nul_in_a_path_or_query_parameter_is_422(
    client: TestClient, project: str, image_id: str, refused: Refused
) -> None:
    # PostgreSQL holds no NUL in text: every lookup by such a value was a 500 there.
    for method, path, params in (
        ("GET", "/projects/a%00b", {}),
        ("GET", f"/projects/{project}/images/%00", {}),
        ("DELETE", f"/projects/{project}/images/x%00", {}),
        ("POST", f"/projects/{project}/bulk-drafts/%00/cancel", {}),
        ("DELETE", "/users/ad%00min/tokens", {}),
        ("GET", "/audit", {"actor": "ad\x00min"}),
        ("GET", f"/projects/{project}/metrics", {"annotator": "\x00"}),
        ("GET", f"/projects/{project}/queue", {"assignee": "\x00"}),
    ):
        answer = client.request(method, path, params=params)
        refused(answer, 422, "NUL", "U+0000")
    assert client.get(f"/projects/{project}/images/{image_id}").status_code == 200


def test_nul_in_a_request_body_is_422_and_stores_nothing(
    client: TestClient, project: str, image_id: str, refused: Refused
) -> None:
    # PostgreSQL holds no NUL in text (psycopg refuses it: a 500), while SQLite looked the
    # value up (404) or stored it: the database layer refuses it on both.
    # (The refine body's base: tests/unit/service/test_refine.py.)
    mask = ("m.png", png_bytes(np.zeros((64, 64), dtype=np.uint8)))
    url = f"/projects/{project}/images/{image_id}/correction"
    answer = client.put(url, files={"mask": mask}, data={"draft_id": "d\x00"})
    refused(answer, 422, "NUL character (U+0000)", "'d\\x00'")
    answer = client.put(url, json={"classes": {}, "draft_id": "d\x00", "lead_time_s": 3})
    refused(answer, 422, "NUL character (U+0000)", "'d\\x00'")
    assert client.get(f"/projects/{project}/images/{image_id}/corrections").json() == []


@pytest.mark.parametrize("field", ["mask", "annotator", "draft_id", "lead_time_s"])
def test_a_repeated_multipart_field_of_a_correction_is_422(
    client: TestClient, project: str, image_id: str, refused: Refused, field: str
) -> None:
    # Starlette keeps the last of repeated parts: one of two masks was silently recorded.
    zeros = png_bytes(np.zeros((64, 64), dtype=np.uint8))
    values = {"annotator": ["admin", "admin"], "draft_id": ["", ""], "lead_time_s": ["1", "2"]}
    files = [("mask", ("a.png", zeros))] * (2 if field == "mask" else 1)
    data = {field: values[field]} if field in values else {}
    answer = client.put(f"/projects/{project}/images/{image_id}/correction", files=files, data=data)
    refused(answer, 422, f"one {field} part, got 2")
    assert client.get(f"/projects/{project}/images/{image_id}/corrections").json() == []


def test_an_unknown_multipart_field_of_a_correction_is_422(
    client: TestClient, project: str, image_id: str, refused: Refused
) -> None:
    # A typo was dropped without a word: the correction recorded the caller's own name.
    zeros = png_bytes(np.zeros((64, 64), dtype=np.uint8))
    answer = client.put(
        f"/projects/{project}/images/{image_id}/correction",
        files={"mask": ("a.png", zeros)},
        data={"annotater": "alice"},
    )
    refused(answer, 422, "unknown multipart field(s) 'annotater'", "annotator")
    assert client.get(f"/projects/{project}/images/{image_id}/corrections").json() == []


# --- a full disk ------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only: ``mount -t tmpfs``), unmounted afterwards."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.fail(
            "the full-disk test mounts a 4 MiB tmpfs and needs root (or CAP_SYS_ADMIN); "
            "run it as root, e.g. in the CI container",
            pytrace=False,
        )
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def _fill(folder: Path) -> Path:
    """Write a file into ``folder`` until the filesystem refuses with ENOSPC."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_full_disk_is_507_stores_nothing_and_recovers(
    small_tmpfs: Path,
    storage_settings: StorageSettings,
    service_settings: ServiceSettings,
    security_settings: SecuritySettings,
) -> None:
    from service.app import create_app

    storage = storage_settings.model_copy(update={"blob_dir": small_tmpfs / "blobs"})
    app = create_app(storage, service_settings, security_settings)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {admin_token(storage)}"
        project = client.post("/projects", json={"name": "full", "classes": SHAPES_CLASSES})
        project_id = project.json()["id"]
        image, mask = shapes_sample(6)
        first = _upload(client, project_id, "a.png", png_bytes(image))
        image_id = first.json()["images"][0]["id"]
        blobs_before = _blob_files(storage)
        filler = _fill(small_tmpfs)

        upload = _upload(client, project_id, "b.png", png_bytes(shapes_sample(7)[0]))
        assert upload.status_code == 507, upload.text
        assert upload.json()["code"] == "storage_full"
        assert "no space left" in upload.json()["detail"]
        correction = _put_mask(client, project_id, image_id, png_bytes(mask))
        assert correction.status_code == 507, correction.text
        assert [i["id"] for i in client.get(f"/projects/{project_id}/images").json()] == [image_id]
        assert client.get(f"/projects/{project_id}/images/{image_id}/corrections").json() == []
        assert _blob_files(storage) == blobs_before  # no temporary file, no orphan
        assert client.get("/health").status_code == 200

        filler.unlink()
        assert _upload(client, project_id, "b.png", png_bytes(image)).status_code == 201
        again = _put_mask(client, project_id, image_id, png_bytes(mask))
        assert again.status_code == 200, again.text
        stored = client.get(f"/projects/{project_id}/images/{image_id}/correction")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored.content))), mask)
