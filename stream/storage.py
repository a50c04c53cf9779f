"""The object store, reached only through the minio SDK (MinIO in production, SeaweedFS locally)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import urllib3
from minio import Minio
from minio.error import S3Error

from recstream.stream.contracts.records import InvalidMessage
from recstream.stream.errors import RecstreamError
from recstream.stream.settings import Settings

log = logging.getLogger(__name__)


def make_client(settings: Settings, *, retries: int = 3, timeout_s: float = 10.0) -> Minio:
    """A client with bounded timeouts and retries, so a dead store fails a call instead of hanging it."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s),
        retries=urllib3.Retry(total=retries, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        maxsize=16,
    )
    return Minio(
        settings.require("minio_endpoint"),
        access_key=settings.minio_access_key,
        secret_key=settings.minio_secret_key,
        secure=settings.minio_secure,
        region=settings.minio_region,
        http_client=http,
    )


def ensure_buckets(client: Minio, buckets: list[str]) -> list[str]:
    """Create the buckets that do not exist yet; returns the ones created (idempotent)."""
    created = []
    for bucket in buckets:
        if client.bucket_exists(bucket):
            continue
        try:
            client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise
        else:
            created.append(bucket)
            log.info("created bucket %s", bucket)
    return created


def store_healthy(client: Minio) -> bool:
    """True when the store answers an authenticated request."""
    try:
        client.list_buckets()
    except Exception:  # any failure means "not healthy yet"
        return False
    return True


def read_object(client: Minio, bucket: str, name: str, limit: int | None = None) -> bytes:
    """The object's bytes; with `limit`, more than `limit` bytes is InvalidMessage (read no further)."""
    response = client.get_object(bucket, name)
    try:
        if limit is None:
            return response.read()
        data = response.read(limit + 1)
        if len(data) > limit:
            raise InvalidMessage(f"value: larger than {limit} bytes")
        return data
    finally:
        response.close()
        response.release_conn()


def read_object_or_none(client: Minio, bucket: str, name: str) -> bytes | None:
    """The object's bytes, None when it does not exist."""
    try:
        return read_object(client, bucket, name)
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            return None
        raise


def put_object(client: Minio, bucket: str, name: str, data: bytes, content_type: str) -> None:
    client.put_object(bucket, name, io.BytesIO(data), len(data), content_type=content_type)


def upload_dir(client: Minio, bucket: str, local: Path, prefix: str, last: str | None = None) -> list[str]:
    """Every file under `local` to `prefix` + its relative path (`last`, if given, after the others).

    Returns the relative paths uploaded, in upload order."""
    relative = sorted(
        (p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()),
        key=lambda rel: (rel == last, rel),
    )
    for rel in relative:
        client.fput_object(bucket, prefix + rel, str(local / rel))
    return relative


def download_dir(client: Minio, bucket: str, names: list[str], prefix: str, dest: Path) -> Path:
    """The objects `names` (all under `prefix`) into `dest` by their key below `prefix`.

    Every key is checked before any byte is written (UnsafeObjectKey)."""
    targets = [(name, contained_path(dest, name.removeprefix(prefix))) for name in names]
    for name, target in targets:
        client.fget_object(bucket, name, str(target))
    return dest


class UnsafeObjectKey(RecstreamError, ValueError):
    """An object key that would write outside the download's destination; nothing was written."""


def contained_path(dest: Path, relative_key: str) -> Path:
    """Where the object named `relative_key` (its key below the downloaded prefix) goes in `dest`.

    Refused before any byte is written: an empty key, an absolute one, empty / `.` / `..` parts,
    NUL or backslashes, and anything that resolves (symlinks included) outside `dest`.
    """
    parts = relative_key.split("/")
    if (
        not relative_key
        or relative_key.startswith("/")
        or "\\" in relative_key
        or "\x00" in relative_key
        or any(part in {"", ".", ".."} for part in parts)
    ):
        raise UnsafeObjectKey(f"object key {relative_key!r} is not a plain relative path")
    root = dest.resolve()
    target = (root / relative_key).resolve()
    if not target.is_relative_to(root) or target == root:
        raise UnsafeObjectKey(f"object key {relative_key!r} resolves outside {dest}")
    return target
