"""The service's start removes the temporary blob files a killed writer left behind."""

from __future__ import annotations

import os
import time

from fastapi.testclient import TestClient

from prelabel.blobs import STALE_TEMPORARY_S
from prelabel.settings import SecuritySettings, ServiceSettings, StorageSettings
from service.app import create_app


def test_service_start_sweeps_what_a_killed_writer_left(
    storage_settings: StorageSettings,
    service_settings: ServiceSettings,
    security_settings: SecuritySettings,
) -> None:
    folder = storage_settings.resolved_blob_dir / "projects" / "p" / "images"
    folder.mkdir(parents=True)
    left = folder / ".x.png.q1w2e3r4.tmp"
    recent = folder / ".y.png.z9y8x7w6.tmp"  # another process may be writing it right now
    for path in (left, recent):
        path.write_bytes(b"half a blob")
    long_ago = time.time() - 2 * STALE_TEMPORARY_S
    os.utime(left, (long_ago, long_ago))

    with TestClient(create_app(storage_settings, service_settings, security_settings)):
        assert not left.exists() and recent.exists()
