"""The S3 blob store against moto's standalone server: multipart uploads, settings, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from objectstore.s3 import S3BlobStore, make_s3_client, open_s3_blob_store, parse_blob_url
from prelabel.errors import IntegrationError
from prelabel.settings import StorageSettings
from prelabel.workspace import open_blob_store
from tests.backends import MotoServer, free_port


@pytest.fixture
def s3_store(s3_storage_settings: StorageSettings) -> S3BlobStore:
    store = open_blob_store(s3_storage_settings)
    assert isinstance(store, S3BlobStore)
    return store


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://bucket/a/b/", ("bucket", "a/b")),
    ],
)
def test_blob_urls_name_a_bucket_and_a_prefix(url: str, expected: tuple[str, str]) -> None:
    assert parse_blob_url(url) == expected


@pytest.mark.parametrize("url", ["s3://", "http://bucket/x", "s3://bucket/../x"])
def test_bad_blob_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_blob_url(url)


@pytest.mark.parametrize("url", ["s3://", "gs://bucket/x", "/var/blobs"])
def test_settings_refuse_a_blob_url_that_is_not_s3(url: str) -> None:
    with pytest.raises(ValidationError, match="PRELABEL_BLOB_URL"):
        StorageSettings(blob_url=url)


def test_settings_refuse_a_placeholder_secret_key() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        StorageSettings(blob_url="s3://b", s3_secret_access_key=SecretStr("change-me"))


def test_keys_live_under_the_prefix(s3_store: S3BlobStore) -> None:
    s3_store.put("projects/p1/a.png", b"x")

    listed = s3_store.client.list_objects_v2(Bucket=s3_store.bucket)["Contents"]
    assert [item["Key"] for item in listed] == ["prelabel/projects/p1/a.png"]


def test_large_artifacts_are_uploaded_in_parts(moto_s3: MotoServer, tmp_path: Path) -> None:
    settings = moto_s3.settings(tmp_path, "prelabel-multipart").model_copy(
        update={"s3_multipart_threshold_mb": 5, "s3_multipart_chunk_mb": 5}
    )
    store = open_s3_blob_store(settings)
    artifact = tmp_path / "model.ckpt"
    payload = bytes(range(251)) * (12 * 1024 * 1024 // 251)  # ~12 MiB: three parts of 5 MiB
    artifact.write_bytes(payload)

    store.put_file("projects/p1/models/v1/model.ckpt", artifact)
    head = store.client.head_object(
        Bucket=store.bucket, Key="prelabel/projects/p1/models/v1/model.ckpt"
    )

    assert head["ETag"].strip('"').endswith("-3")  # S3's ETag of a 3-part multipart upload
    assert head["ContentLength"] == len(payload)
    assert b"".join(store.iter_bytes("projects/p1/models/v1/model.ckpt")) == payload


def test_credentials_and_region_fall_back_to_the_aws_variables(
    moto_s3: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured = moto_s3.settings(tmp_path, "prelabel-env-credentials")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    settings = configured.model_copy(
        update={"s3_access_key_id": None, "s3_secret_access_key": None, "s3_region": None}
    )

    client = make_s3_client(settings)
    store = open_s3_blob_store(settings)
    store.put("a", b"through the environment")

    credentials = client._request_signer._credentials
    assert (credentials.access_key, client.meta.region_name) == ("from-env", "eu-west-1")
    assert store.get("a") == b"through the environment"


def test_an_unreachable_server_or_missing_bucket_is_an_integration_error(
    moto_s3: MotoServer, tmp_path: Path
) -> None:
    reachable = moto_s3.settings(tmp_path, "prelabel-exists")
    closed = reachable.model_copy(
        update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}", "s3_timeout_s": 1.0}
    )
    missing_bucket = reachable.model_copy(update={"blob_url": "s3://prelabel-never-made/x"})

    for settings in (closed, missing_bucket):
        store = open_s3_blob_store(settings)
        with pytest.raises(IntegrationError, match="is not reachable"):
            store.check()
        with pytest.raises(IntegrationError):
            store.put("a", b"x")
    with pytest.raises(IntegrationError):
        open_s3_blob_store(closed).get("a")
