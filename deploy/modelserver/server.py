"""Process entry: `python -m recstream.deploy.modelserver --model-base-path DIR --model-name NAME ...`.

Flags take TF Serving's spellings too (--port, --rest_api_port, --model_base_path, ...),
so the same command line drives either server. Like tensorflow_model_server, it loads
the models found on disk before it listens, and a latest version that fails to load
stops the start (exit status 1). SIGTERM/SIGINT stop it cleanly (exit status 0): requests
in flight get 5 s, loads in progress a short grace (registry.Options.stop_grace_s), after
which they are abandoned rather than waited for.

Request limits (deploy/modelserver/limits.py) are flags whose defaults are the MODELSERVER_*
settings read from the environment (stream/settings.py), so the stack's child process, which
inherits the environment (launch.command), and `recstream modelserver` both follow them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from recstream.stream.settings import FIELDS, positive_float, positive_int

if TYPE_CHECKING:
    from recstream.deploy.modelserver.limits import Limits

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

log = logging.getLogger("recstream.deploy.modelserver")


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m recstream.deploy.modelserver", description="TF-Serving-compatible model server"
    )
    add = parser.add_argument
    add("--model-name", "--model_name", default="default", help="model name (without --model-config-file)")
    add("--model-base-path", "--model_base_path", help="directory of integer version directories")
    add("--model-config-file", "--model_config_file", help="ModelServerConfig in protobuf text format")
    add("--grpc-port", "--port", type=int, default=8500, help="gRPC port (default 8500)")
    add("--rest-port", "--rest_api_port", type=int, default=8501, help="REST port (default 8501, 0: none)")
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add(
        "--file-system-poll-wait-seconds",
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="seconds between scans of the base paths; 0 scans only at start and on reload",
    )
    add(
        "--model-config-file-poll-wait-seconds",
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0.0,
        help="re-read and apply --model-config-file this often (0: never), as TF Serving does",
    )
    add("--max-num-load-retries", "--max_num_load_retries", type=int, default=5)
    add("--load-retry-interval-micros", "--load_retry_interval_micros", type=int, default=60_000_000)
    add(
        "--enable-model-warmup",
        "--enable_model_warmup",
        type=_bool,
        default=True,
        help="replay assets.extra/tf_serving_warmup_requests before AVAILABLE (default true)",
    )
    add(
        "--allow-version-labels-for-unavailable-models",
        "--allow_version_labels_for_unavailable_models",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
    )
    try:
        limits = _limit_defaults(os.environ if environ is None else environ)
    except ValueError as exc:
        parser.error(str(exc))
    for flags, attr, kind, text in _LIMIT_FLAGS:
        add(*flags, dest=attr, type=kind, default=limits[attr], help=f"{text} (default {limits[attr]})")
    add("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if not args.model_config_file and not args.model_base_path:
        parser.error("--model-base-path (or --model-config-file) is required")
    try:
        args.limits = _limits(args)
    except ValueError as exc:
        parser.error(str(exc))
    return args


# (flags, Limits field = the setting's attribute without "modelserver_", type, help)
_LIMIT_FLAGS: tuple[tuple[tuple[str, ...], str, Callable[[str], float], str], ...] = (
    (("--max-grpc-message-bytes",), "max_grpc_message_bytes", positive_int, "largest gRPC message"),
    (("--max-batch",), "max_batch", positive_int, "largest leading dimension of an input"),
    (("--max-string-bytes",), "max_string_bytes", positive_int, "largest string element of an input"),
    (("--max-rest-body-bytes",), "max_rest_body_bytes", positive_int, "largest REST request body"),
    (("--rest-timeout-s",), "rest_timeout_s", positive_float, "time a REST request may take to arrive"),
    (("--rest-workers", "--rest_api_num_threads"), "rest_workers", positive_int, "threads answering REST"),
    (("--grpc-workers", "--grpc_max_threads"), "grpc_workers", positive_int, "threads answering gRPC"),
)


def _limit_defaults(environ: Mapping[str, str]) -> dict[str, object]:
    """The MODELSERVER_* limit settings from `environ` (their defaults where unset)."""
    values: dict[str, object] = {}
    wanted = {"modelserver_" + attr for _, attr, _, _ in _LIMIT_FLAGS}
    for field in FIELDS:
        if field.attr in wanted:
            raw = environ.get(field.env, field.default)
            try:
                values[field.attr.removeprefix("modelserver_")] = field.parse(raw)
            except ValueError as exc:
                raise ValueError(f"{field.env}={raw!r}: {exc}") from None
    return values


def _limits(args: argparse.Namespace) -> Limits:
    from recstream.deploy.modelserver.limits import Limits

    return Limits(**{attr: getattr(args, attr) for _, attr, _, _ in _LIMIT_FLAGS})


def _bool(text: str) -> bool:
    if text.lower() in {"1", "true", "yes", "on"}:
        return True
    if text.lower() in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text}")


def serve(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Load, listen, and block until `stop` is set (or a signal sets it); returns the exit status."""
    from recstream.deploy.modelserver import config as cfg
    from recstream.deploy.modelserver.errors import ServingError
    from recstream.deploy.modelserver.grpc_api import make_server
    from recstream.deploy.modelserver.rest_api import RestServer

    stop = stop or threading.Event()
    registry = _registry(args, stop)
    try:
        models = (
            cfg.read_config_file(args.model_config_file)
            if args.model_config_file
            else cfg.single_model(args.model_name, args.model_base_path)
        )
        registry.start(models)
        if stop.is_set():
            log.info("stopped during the initial load")
            registry.stop()
            return 0
        grpc_server = make_server(registry, args.host, args.grpc_port, args.limits)
        rest = RestServer(registry, args.host, args.rest_port, args.limits) if args.rest_port else None
    except (ServingError, OSError) as exc:
        stopped = stop.is_set()  # before registry.stop() sets it: the initial load was cut short
        registry.stop()
        if stopped:
            log.info("stopped during the initial load")
            return 0
        log.error("model server cannot start: %s", exc)
        return 1
    if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
        threading.Thread(
            target=_poll_config_file,
            args=(registry, args.model_config_file, args.model_config_file_poll_wait_seconds, stop),
            name="config-file",
            daemon=True,
        ).start()
    grpc_server.start()
    log.info("Running gRPC ModelServer at %s:%d with %s", args.host, args.grpc_port, args.limits)
    if rest:
        rest.start()
        log.info("Exporting HTTP/REST API at %s:%d", args.host, args.rest_port)
    stop.wait()
    log.info("stopping: gRPC (grace 5s), REST, model manager")
    grpc_server.stop(grace=5).wait()
    if rest:
        rest.stop()
    registry.stop()
    log.info("stopped")
    return 0


def _registry(args: argparse.Namespace, stop: threading.Event):
    """The version manager, loading with TensorFlow (and warmup) and logging every state change."""
    from recstream.deploy.modelserver.registry import Options, Registry, State, Status
    from recstream.deploy.modelserver.servable import Servable
    from recstream.deploy.modelserver.warmup import run_warmup

    def load(name: str, version: int, path: str) -> Servable:
        servable = Servable(name, version, path, args.limits)
        if args.enable_model_warmup:
            run_warmup(servable)
        return servable

    def log_state(name: str, version: int, state: State, status: Status) -> None:
        if status.code.name == "OK":
            log.info("model %s version %d: %s", name, version, state.name)
        else:
            error = f"{status.code.name}: {status.message}"
            log.error("model %s version %d: %s (%s)", name, version, state.name, error)

    registry = Registry(
        load,
        Options(
            poll_wait_s=args.file_system_poll_wait_seconds,
            max_load_retries=max(args.max_num_load_retries, 0),
            load_retry_interval_s=max(args.load_retry_interval_micros, 0) / 1e6,
            allow_labels_for_unavailable=args.allow_version_labels_for_unavailable_models,
        ),
        stop=stop,
    )
    registry.add_listener(log_state)
    return registry


def _poll_config_file(registry, path: str, interval: float, stop: threading.Event) -> None:
    """Apply the config file every `interval`, changed or not: like TF Serving, a poll
    replaces whatever config was pushed over gRPC since, so the file must be written first."""
    from recstream.deploy.modelserver import config as cfg
    from recstream.deploy.modelserver.errors import ServingError

    while not stop.wait(interval):
        try:
            registry.reload(cfg.read_config_file(path))
        except ServingError as exc:
            log.error("config file %s not applied: %s", path, exc)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger().setLevel(args.log_level.upper())  # `recstream modelserver` configured it already
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return serve(args, stop)
