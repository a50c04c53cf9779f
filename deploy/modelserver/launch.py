"""How the stack starts and checks the model server, without importing TensorFlow.

`command()` is the daemon's command line and environment; `rest_healthy()` asks the
REST API for a model's status, which both this server and tensorflow/serving answer
(200 with the versions, or 404 while the model has none yet), so it proves the server
is up and speaking the API whatever is loaded.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote


def command(
    model_base_path: str | os.PathLike[str],
    model_name: str,
    grpc_port: int,
    rest_port: int,
    host: str = "127.0.0.1",
    model_config_file: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """argv and env for `python -m recstream.deploy.modelserver`; argv[0] is this interpreter."""
    argv = [
        sys.executable,
        "-m",
        "recstream.deploy.modelserver",
        "--model-name",
        model_name,
        "--model-base-path",
        str(Path(model_base_path).absolute()),
        "--grpc-port",
        str(grpc_port),
        "--rest-port",
        str(rest_port),
        "--host",
        host,
    ]
    if model_config_file:
        argv += ["--model-config-file", str(model_config_file)]
    argv += list(extra_args)
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2")})
    return argv, env


def rest_healthy(rest_endpoint: str, model_name: str, timeout: float = 2.0) -> bool:
    """True when host:port answers GET /v1/models/<name> the way TF Serving does (200, or 404 + error)."""
    url = f"http://{rest_endpoint}/v1/models/{quote(model_name, safe='')}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return "model_version_status" in json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code == 404 and "error" in json.loads(exc.read())
        except ValueError:
            return False
    except (OSError, ValueError):
        return False


def grpc_healthy(grpc_endpoint: str, model_name: str, timeout: float = 2.0) -> bool:
    """The same check over gRPC (ModelService.GetModelStatus); imports the serving protos (slow)."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model_name
    with grpc.insecure_channel(grpc_endpoint) as channel:
        try:
            model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
    return True
