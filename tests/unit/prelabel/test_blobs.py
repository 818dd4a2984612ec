"""LocalBlobStore: round trips, deletes, key validation, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from prelabel.blobs import BlobNotFound, LocalBlobStore, check_key
from prelabel.errors import NotFoundError


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def _files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_put_then_get_round_trips_and_overwrites(store: LocalBlobStore) -> None:
    store.put("projects/p1/images/a.png", b"first")
    first = store.get("projects/p1/images/a.png")
    store.put("projects/p1/images/a.png", b"\x00second\xff")

    assert first == b"first"
    assert store.get("projects/p1/images/a.png") == b"\x00second\xff"
    assert _files(store.root) == ["projects/p1/images/a.png"]


def test_empty_blob_round_trips(store: LocalBlobStore) -> None:
    store.put("empty", b"")

    assert store.get("empty") == b""


def test_get_of_a_missing_key_raises_blob_not_found(store: LocalBlobStore) -> None:
    with pytest.raises(BlobNotFound) as raised:
        store.get("projects/p1/missing.png")

    assert isinstance(raised.value, NotFoundError)
    assert raised.value.object_id == "projects/p1/missing.png"


def test_delete_removes_the_blob_and_tolerates_a_missing_one(store: LocalBlobStore) -> None:
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
    store: LocalBlobStore, prefix: str
) -> None:
    for key in ("projects/p1/images/a", "projects/p1/images/b", "projects/p1/models/m/x.onnx"):
        store.put(key, b"data")
    store.put("projects/p10/images/a", b"keep")  # shares the string prefix, not the folder
    store.put("projects/p2/images/a", b"keep")

    removed = store.delete_prefix(prefix)

    assert removed == 3
    assert _files(store.root) == ["projects/p10/images/a", "projects/p2/images/a"]
    assert not (store.root / "projects" / "p1").exists()


def test_delete_prefix_of_nothing_removes_nothing(store: LocalBlobStore) -> None:
    store.put("projects/p2/a", b"keep")

    assert store.delete_prefix("projects/p1") == 0
    assert _files(store.root) == ["projects/p2/a"]


@pytest.mark.parametrize(
    "key",
    ["../x", "/abs", "a//b", "", "a/../../x", "./a", "a/.", "a\\b", "a b", "a/\x00"],
)
def test_unsafe_keys_are_rejected_by_every_operation(
    store: LocalBlobStore, tmp_path: Path, key: str
) -> None:
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

    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_a_trailing_slash_names_a_prefix_not_a_key(store: LocalBlobStore) -> None:
    with pytest.raises(ValueError):
        store.put("a/", b"x")
    with pytest.raises(ValueError):
        store.get("a/")


@pytest.mark.parametrize("key", ["a", "projects/p1/images/x.png", "a-b_c.d/E9", "..."])
def test_safe_keys_are_accepted(key: str) -> None:
    assert check_key(key) == key


def test_put_leaves_no_temporary_file(store: LocalBlobStore) -> None:
    store.put("projects/p1/images/a.png", b"x" * 10_000)
    store.put("projects/p1/images/a.png", b"y")

    assert sorted(path.name for path in (store.root / "projects/p1/images").iterdir()) == ["a.png"]


def test_failed_put_keeps_the_old_blob_and_leaves_no_temporary_file(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
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
def test_get_of_a_key_that_is_not_a_blob_raises_blob_not_found(
    store: LocalBlobStore, key: str
) -> None:
    store.put("projects/p1/a.png", b"x")

    with pytest.raises(BlobNotFound):
        store.get(key)
