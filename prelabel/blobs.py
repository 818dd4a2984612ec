"""Blob storage: images, masks, drafts and model artifacts, addressed by string keys.

Callers depend on the ``BlobStore`` protocol only; ``LocalBlobStore`` (a folder)
is the embedded default. ``PRELABEL_BLOB_URL=s3://bucket/prefix`` selects the
S3-compatible store of the ``objectstore`` package (boto3), found through the
``prelabel.blob_stores`` entry points so that the core never imports a network
client (``prelabel.workspace.open_blob_store``).

Every writer stores its blob before it commits the database row that names it
(upload, then reference), and each ``put`` is atomic, so a reader that finds a
row always finds whole bytes behind it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from prelabel.errors import IntegrationError, NotFoundError, StorageFull

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class BlobNotFound(NotFoundError):
    kind = "blob"


class BlobStore(Protocol):
    """Where prelabel keeps bytes. Keys look like ``projects/<id>/images/<id>.png``."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically (readers never see half a blob)."""

    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key`` atomically, without reading it into memory
        (large artifacts: multipart upload on S3)."""

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; raises BlobNotFound."""

    def iter_bytes(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The bytes under ``key`` in chunks of at most ``chunk_bytes`` (streaming reads).

        Raises BlobNotFound at the call, before the first chunk, when ``key`` is absent.
        """

    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key under ``prefix``; returns how many were removed."""

    def check(self) -> None:
        """Raise ``IntegrationError`` unless the store can be read and written (readiness)."""


def download(store: BlobStore, key: str, path: Path) -> None:
    """Write the blob ``key`` to the file ``path`` chunk by chunk; raises BlobNotFound."""
    chunks = store.iter_bytes(key)
    with path.open("wb") as handle:
        for chunk in chunks:
            handle.write(chunk)


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ValueError."""
    if not _KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}: use letters, digits, '_', '.', '-' and '/'")
    return key


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

STALE_TEMPORARY_S = 3600.0
"""A temporary blob file this old was left by a killed writer (a put takes seconds)."""

_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")
"""``.<name>.<random>.tmp``: the names ``tempfile.mkstemp`` gives a put in progress."""


def _fsync_directory(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore:
    """A ``BlobStore`` in a local folder.

    A put is durable when it returns: the bytes go to a temporary file in the
    target folder, which is fsynced, renamed over the key, and the folder fsynced.
    A full disk raises :class:`~prelabel.errors.StorageFull` and leaves nothing behind.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write(self, key: str, source: bytes | BinaryIO) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_durably(path, source)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise StorageFull(
                    f"no space left in the blob store ({os.strerror(exc.errno)}); "
                    f"nothing was stored"
                ) from exc
            raise

    @staticmethod
    def _write_durably(path: Path, source: bytes | BinaryIO) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                if isinstance(source, bytes):
                    handle.write(source)
                else:
                    shutil.copyfileobj(source, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)

    def put(self, key: str, data: bytes) -> None:
        self._write(key, data)

    def put_file(self, key: str, path: Path) -> None:
        with path.open("rb") as source:
            self._write(key, source)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise BlobNotFound(key) from exc

    def iter_bytes(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        try:
            handle = self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise BlobNotFound(key) from exc
        return _chunks_of(handle, chunk_bytes)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        removed = 0
        for path in sorted(folder.rglob("*"), reverse=True):
            if path.is_file():
                path.unlink()
                removed += 1
            else:
                path.rmdir()
        folder.rmdir()
        return removed

    def sweep_temporary(self, older_than_s: float = STALE_TEMPORARY_S) -> int:
        """Delete the temporary files of puts that never finished (their writer was killed).

        Only files named like a put in progress and last modified over ``older_than_s``
        ago go: a put of another live process (a replica, the worker) is never touched.

        Returns:
            How many files were removed.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                path = Path(folder) / name
                if not _TEMPORARY.match(name):
                    continue
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:  # renamed or swept by another process meanwhile
                    continue
        if removed:
            logger.warning(
                "removed %d unfinished temporary blob files under %s", removed, self.root
            )
        return removed

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as exc:
            raise IntegrationError(f"blob folder {self.root} is not writable: {exc}") from exc


def _chunks_of(handle: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(chunk_bytes):
            yield chunk


class _JournaledBlobs:
    """A ``BlobStore`` that remembers the keys put through it (see :func:`undo_puts_on_error`)."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.put_keys: list[str] = []

    def put(self, key: str, data: bytes) -> None:
        self.put_keys.append(key)
        self.blobs.put(key, data)

    def get(self, key: str) -> bytes:
        return self.blobs.get(key)

    def delete(self, key: str) -> None:
        self.blobs.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        return self.blobs.delete_prefix(prefix)

    def put_file(self, key: str, path: Path) -> None:
        self.put_keys.append(key)
        self.blobs.put_file(key, path)

    def iter_bytes(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        return self.blobs.iter_bytes(key, chunk_bytes)

    def check(self) -> None:
        self.blobs.check()


@contextmanager
def undo_puts_on_error(blobs: BlobStore) -> Iterator[BlobStore]:
    """A store whose new keys are deleted again if the block fails.

    Wrap a database transaction that writes blobs under fresh keys: when the
    transaction rolls back (bad input further on, a full disk, a lost lock), the
    blobs it wrote would point nowhere, so they go too. Only for fresh keys: an
    overwritten key would lose its earlier bytes.
    """
    journal = _JournaledBlobs(blobs)
    try:
        yield journal
    except BaseException:
        for key in reversed(journal.put_keys):
            try:
                journal.blobs.delete(key)
            except OSError:
                logger.exception("could not remove blob %s after a failed write", key)
        raise


def sweep_temporary(store: BlobStore, older_than_s: float = STALE_TEMPORARY_S) -> int:
    """At start: remove what killed writers left half-written in ``store`` (see
    :meth:`LocalBlobStore.sweep_temporary`); 0 for stores whose puts leave no
    temporary objects (S3 uploads are atomic)."""
    if isinstance(store, LocalBlobStore):
        return store.sweep_temporary(older_than_s)
    return 0
