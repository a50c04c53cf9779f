"""The object store through the minio SDK: put/get/list, and credentials enforced."""

from __future__ import annotations

import dataclasses
import io
import uuid

import pytest
from minio import Minio
from minio.error import S3Error

from recstream.stream.settings import Settings
from recstream.stream.storage import ensure_buckets, make_client

pytestmark = pytest.mark.integration


def test_put_get_list(settings: Settings) -> None:
    client = make_client(settings)
    prefix = f"t-{uuid.uuid4().hex[:8]}/"
    payloads = {f"{prefix}date=2026-11-2{i}/part-{i}.bin": bytes([i]) * (1000 + i) for i in range(3)}
    for name, data in payloads.items():
        client.put_object(settings.data_bucket, name, io.BytesIO(data), len(data))

    listed = {
        o.object_name: o.size for o in client.list_objects(settings.data_bucket, prefix, recursive=True)
    }
    assert listed == {name: len(data) for name, data in payloads.items()}
    for name, data in payloads.items():
        response = client.get_object(settings.data_bucket, name)
        try:
            assert response.read() == data
        finally:
            response.close()
            response.release_conn()


def test_buckets_exist_and_creation_is_idempotent(settings: Settings) -> None:
    client = make_client(settings)
    names = {b.name for b in client.list_buckets()}
    assert {settings.data_bucket, settings.models_bucket, settings.broker_bucket} <= names
    assert ensure_buckets(client, settings.buckets()) == []


def test_wrong_credentials_are_refused(settings: Settings) -> None:
    wrong = make_client(dataclasses.replace(settings, minio_secret_key="not-the-secret"), retries=0)
    with pytest.raises(S3Error) as error:
        wrong.list_objects(settings.data_bucket).__next__()
    assert error.value.code in {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"}

    anonymous = Minio(settings.minio_endpoint, secure=False)
    with pytest.raises(S3Error) as error:
        anonymous.put_object(settings.data_bucket, "anon.txt", io.BytesIO(b"x"), 1)
    assert error.value.code == "AccessDenied"
    assert not any(
        o.object_name == "anon.txt" for o in make_client(settings).list_objects(settings.data_bucket)
    )
