"""The S3-compatible blob store (AWS S3, MinIO, Ceph, ...) with boto3, the real client.

This is a client module at the edge (style guide §1): ``prelabel`` never imports
a network client, so the core finds :func:`open_s3_blob_store` through the
``prelabel.blob_stores`` entry point named ``s3`` when ``PRELABEL_BLOB_URL`` is
``s3://bucket/prefix``. Service, worker and CLI all open their stores there.

Keys map to ``<prefix>/<key>`` in the bucket. An object becomes visible only when its
upload completes (a single PUT, or the final CompleteMultipartUpload of a multipart
upload), which is the atomic ``put`` the protocol asks for; callers upload first and
commit the database row that references the key afterwards.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from prelabel.blobs import BlobNotFound, check_key
from prelabel.errors import IntegrationError
from prelabel.settings import StorageSettings

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


def parse_blob_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix")`` (the prefix may be empty).

    Raises:
        ValueError: not an ``s3://`` URL, no bucket, or an unsafe prefix.
    """
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}; use s3://bucket[/prefix]")
    return bucket, check_key(prefix) if prefix else ""


class S3BlobStore:
    """A ``BlobStore`` in an S3 bucket under a key prefix.

    Args:
        client: a boto3 S3 client (timeouts and retries configured by its maker).
        bucket: the bucket, which must exist.
        prefix: prepended to every key with a ``/``; empty for the bucket's root.
        transfer: when uploads go multipart, and in parts of what size.
    """

    def __init__(self, client: Any, bucket: str, prefix: str, transfer: TransferConfig) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.transfer = transfer

    def _object(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _failed(self, action: str, key: str, exc: Exception) -> IntegrationError:
        return IntegrationError(f"S3 {action} of s3://{self.bucket}/{key} failed: {exc}")

    def _upload(self, key: str, source: BinaryIO) -> None:
        name = self._object(key)
        try:
            self.client.upload_fileobj(source, self.bucket, name, Config=self.transfer)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("upload", name, exc) from exc

    def put(self, key: str, data: bytes) -> None:
        self._upload(key, io.BytesIO(data))

    def put_file(self, key: str, path: Path) -> None:
        with path.open("rb") as source:
            self._upload(key, source)

    def _body(self, key: str) -> Any:
        name = self._object(key)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise BlobNotFound(key) from exc
            raise self._failed("read", name, exc) from exc
        except BotoCoreError as exc:
            raise self._failed("read", name, exc) from exc

    def get(self, key: str) -> bytes:
        body = self._body(key)
        try:
            with body:
                data: bytes = body.read()
        except BotoCoreError as exc:
            raise self._failed("read", self._object(key), exc) from exc
        return data

    def iter_bytes(self, key: str, chunk_bytes: int = _MIB) -> Iterator[bytes]:
        return self._chunks(key, self._body(key), chunk_bytes)

    def _chunks(self, key: str, body: Any, chunk_bytes: int) -> Iterator[bytes]:
        try:
            with body:
                yield from body.iter_chunks(chunk_bytes)
        except BotoCoreError as exc:
            raise self._failed("read", self._object(key), exc) from exc

    def delete(self, key: str) -> None:
        name = self._object(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("delete", name, exc) from exc

    def delete_prefix(self, prefix: str) -> int:
        folder = self._object(prefix.rstrip("/")) + "/"
        removed = 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder
            )
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:  # a listing page holds at most 1000 keys, delete_objects' limit
                    self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                    )
                    removed += len(keys)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("delete", folder, exc) from exc
        return removed

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise IntegrationError(f"S3 bucket {self.bucket!r} is not reachable: {exc}") from exc


def make_s3_client(settings: StorageSettings) -> Any:
    """A boto3 S3 client from the settings; unset values fall back to boto3's usual chain
    (``AWS_*`` variables, profiles, instance roles)."""
    secret = settings.s3_secret_access_key
    session = boto3.session.Session(
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        region_name=settings.s3_region,
    )
    config = Config(
        connect_timeout=settings.s3_timeout_s,
        read_timeout=settings.s3_timeout_s,
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": settings.s3_addressing_style},
    )
    return session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


def open_s3_blob_store(settings: StorageSettings) -> S3BlobStore:
    """The store ``settings.blob_url`` names (the ``prelabel.blob_stores`` entry point ``s3``).

    Raises:
        ValueError: ``blob_url`` is unset or not an ``s3://`` URL.
    """
    if settings.blob_url is None:
        raise ValueError("PRELABEL_BLOB_URL is not set; expected s3://bucket[/prefix]")
    bucket, prefix = parse_blob_url(settings.blob_url)
    transfer = TransferConfig(
        multipart_threshold=settings.s3_multipart_threshold_mb * _MIB,
        multipart_chunksize=settings.s3_multipart_chunk_mb * _MIB,
    )
    logger.info("blob store s3://%s/%s (endpoint %s)", bucket, prefix, settings.s3_endpoint_url)
    return S3BlobStore(make_s3_client(settings), bucket, prefix, transfer)
