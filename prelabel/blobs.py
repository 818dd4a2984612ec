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

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from prelabel.errors import IntegrationError, NotFoundError

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


class LocalBlobStore:
    """A ``BlobStore`` in a local folder; writes go to a temp file, then ``os.replace``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write(self, key: str, source: bytes | BinaryIO) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
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
