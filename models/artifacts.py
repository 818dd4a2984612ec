"""File helpers for model artifacts: checksums and atomic writes (no torch)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_CHUNK_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks.

    Args:
        path: File to hash.

    Returns:
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success, move it onto ``path``.

    Readers never see a half-written file: the temporary file lives in the
    same folder (same filesystem), and ``os.replace`` swaps it in at once. If
    the body raises, the temporary file is removed and ``path`` is untouched.

    Args:
        path: Final destination; its folder is created if missing.

    Yields:
        The temporary path to write to.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o644)  # mkstemp creates 0600; artifacts are meant to be read by others
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    Args:
        path: Destination file; its folder is created if missing.
        data: The complete file content.
    """
    with atomic_target(path) as tmp, tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
