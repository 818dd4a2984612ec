"""The blob stores (local folder, S3 on moto's server): round trips, streaming, deletes,
key validation, atomic writes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from objectstore.s3 import S3BlobStore
from prelabel.blobs import (
    BlobNotFound,
    BlobStore,
    LocalBlobStore,
    check_key,
    download,
    sweep_temporary,
)
from prelabel.errors import NotFoundError
from prelabel.settings import StorageSettings
from prelabel.workspace import open_blob_store


@pytest.fixture
def local_store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Each store behind the protocol: the local folder, and S3 (boto3 on moto's server)."""
    if request.param == "local":
        return open_blob_store(StorageSettings(home=tmp_path / "home"))
    settings: StorageSettings = request.getfixturevalue("s3_storage_settings")
    return open_blob_store(settings)


def _files(store: BlobStore) -> list[str]:
    """Every key the store holds, temporaries included."""
    if isinstance(store, LocalBlobStore):
        root = store.root
        if not root.exists():
            return []
        return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())
    assert isinstance(store, S3BlobStore)
    listed = store.client.list_objects_v2(Bucket=store.bucket)
    return sorted(
        item["Key"].removeprefix(f"{store.prefix}/") for item in listed.get("Contents", [])
    )


def test_put_then_get_round_trips_and_overwrites(store: BlobStore) -> None:
    store.put("projects/p1/images/a.png", b"first")
    first = store.get("projects/p1/images/a.png")
    store.put("projects/p1/images/a.png", b"\x00second\xff")

    assert first == b"first"
    assert store.get("projects/p1/images/a.png") == b"\x00second\xff"
    assert _files(store) == ["projects/p1/images/a.png"]


def test_empty_blob_round_trips(store: BlobStore) -> None:
    store.put("empty", b"")

    assert store.get("empty") == b""


def test_get_of_a_missing_key_raises_blob_not_found(store: BlobStore) -> None:
    with pytest.raises(BlobNotFound) as raised:
        store.get("projects/p1/missing.png")

    assert isinstance(raised.value, NotFoundError)
    assert raised.value.object_id == "projects/p1/missing.png"


def test_delete_removes_the_blob_and_tolerates_a_missing_one(store: BlobStore) -> None:
    store.put("a/b.bin", b"x")
    store.put("a/c.bin", b"y")

    store.delete("a/b.bin")
    store.delete("a/b.bin")
    store.delete("never/there")

    with pytest.raises(BlobNotFound):
        store.get("a/b.bin")
    assert store.get("a/c.bin") == b"y"


@pytest.mark.parametrize("prefix", ["projects/p1", "projects/p1/"])
def test_delete_prefix_removes_everything_below_and_nothing_else(
    store: BlobStore, prefix: str
) -> None:
    for key in ("projects/p1/images/a", "projects/p1/images/b", "projects/p1/models/m/x.onnx"):
        store.put(key, b"data")
    store.put("projects/p10/images/a", b"keep")  # shares the string prefix, not the folder
    store.put("projects/p2/images/a", b"keep")

    removed = store.delete_prefix(prefix)

    assert removed == 3
    assert _files(store) == ["projects/p10/images/a", "projects/p2/images/a"]


def test_delete_prefix_of_nothing_removes_nothing(store: BlobStore) -> None:
    store.put("projects/p2/a", b"keep")

    assert store.delete_prefix("projects/p1") == 0
    assert _files(store) == ["projects/p2/a"]


@pytest.mark.parametrize(
    "key",
    ["../x", "/abs", "a//b", "", "a/../../x", "./a", "a/.", "a\\b", "a b", "a/\x00"],
)
def test_unsafe_keys_are_rejected_by_every_operation(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid blob key"):
        check_key(key)
    with pytest.raises(ValueError):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.get(key)
    with pytest.raises(ValueError):
        store.delete(key)
    with pytest.raises(ValueError):
        store.delete_prefix(key)
    with pytest.raises(ValueError):
        store.iter_bytes(key)

    assert _files(store) == []


def test_a_trailing_slash_names_a_prefix_not_a_key(store: BlobStore) -> None:
    with pytest.raises(ValueError):
        store.put("a/", b"x")
    with pytest.raises(ValueError):
        store.get("a/")


@pytest.mark.parametrize("key", ["a", "projects/p1/images/x.png", "a-b_c.d/E9", "..."])
def test_safe_keys_are_accepted(key: str) -> None:
    assert check_key(key) == key


def test_put_leaves_no_temporary_file(store: BlobStore) -> None:
    store.put("projects/p1/images/a.png", b"x" * 10_000)
    store.put("projects/p1/images/a.png", b"y")

    assert _files(store) == ["projects/p1/images/a.png"]


def test_failed_put_keeps_the_old_blob_and_leaves_no_temporary_file(
    local_store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = local_store
    store.put("dir/a.bin", b"old")

    def refuse(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("prelabel.blobs.os.replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        store.put("dir/a.bin", b"new")
    with pytest.raises(OSError, match="disk full"):
        store.put("dir/b.bin", b"new")
    monkeypatch.undo()

    assert store.get("dir/a.bin") == b"old"
    assert sorted(path.name for path in (store.root / "dir").iterdir()) == ["a.bin"]


@pytest.mark.parametrize("key", ["projects/p1", "projects/p1/a.png/more"])
def test_get_of_a_key_that_is_not_a_blob_raises_blob_not_found(store: BlobStore, key: str) -> None:
    store.put("projects/p1/a.png", b"x")

    with pytest.raises(BlobNotFound):
        store.get(key)


def test_put_file_and_streaming_reads_round_trip(store: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "artifact.bin"
    payload = bytes(range(256)) * 4099  # about 1 MiB, not a multiple of the chunk size
    source.write_bytes(payload)

    store.put_file("projects/p1/models/m/model.onnx", source)
    chunks = list(store.iter_bytes("projects/p1/models/m/model.onnx", chunk_bytes=100_000))
    download(store, "projects/p1/models/m/model.onnx", tmp_path / "copy.bin")

    assert b"".join(chunks) == payload
    assert max(len(chunk) for chunk in chunks) <= 100_000 and len(chunks) >= 11
    assert (tmp_path / "copy.bin").read_bytes() == payload


def test_streaming_a_missing_key_fails_before_the_first_chunk(store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        store.iter_bytes("projects/p1/missing.bin")


def test_check_passes_on_a_usable_store(store: BlobStore) -> None:
    store.check()


def test_sweep_removes_only_stale_temporaries_of_killed_puts(local_store: LocalBlobStore) -> None:
    local_store.put("projects/p/masks/a.png", b"whole")
    folder = local_store.root / "projects" / "p" / "masks"
    stale = folder / ".b.png.k3j_x9q.tmp"  # what mkstemp names a put in progress
    fresh = folder / ".c.png.a8b2zz1.tmp"
    lookalike = folder / "d.tmp"  # a key may end in .tmp: never swept
    for path in (stale, fresh, lookalike):
        path.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    for path in (stale, lookalike):
        os.utime(path, (two_hours_ago, two_hours_ago))

    assert sweep_temporary(local_store) == 1

    assert not stale.exists() and fresh.exists() and lookalike.exists()
    assert local_store.get("projects/p/masks/a.png") == b"whole"
    assert sweep_temporary(local_store, older_than_s=0) == 1 and not fresh.exists()
