"""The object store, reached only through the minio SDK (MinIO in production, SeaweedFS locally)."""

from __future__ import annotations

import logging

import urllib3
from minio import Minio
from minio.error import S3Error

from stream.settings import Settings

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
