"""The `recstream` command line (a contract: see DESIGN.md).

Each command imports what it needs when it runs, so `recstream --help` and light
commands never pay for TensorFlow, pandas or Faust.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn, TypeVar

from recstream.stream.errors import RecstreamError
from recstream.stream.settings import load_settings, parse_log_level, positive_float, positive_int

T = TypeVar("T")
# The seed beside a checkout (DESIGN: ../shared/data), relative to where `recstream up` runs.
DEFAULT_SEED = Path("..") / "shared" / "data" / "transactions.csv"

log = logging.getLogger("recstream")


class _Parser(argparse.ArgumentParser):
    """Misuse prints one line, not argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _arg(parse: Callable[[str], T]) -> Callable[[str], T]:
    """A settings parser as an argparse type, keeping its message in the one-line error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _k(text: str) -> int:
    from recstream.stream.contracts.records import MAX_K

    value = positive_int(text)
    if value > MAX_K:
        raise ValueError(f"must be at most {MAX_K}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recstream", description="Streaming continuous training for recommenders.")
    parser.add_argument("--home", help="state directory (RECSTREAM_HOME, default ./.recstream)")
    parser.add_argument("--kafka-bootstrap", help="use this Kafka instead of the embedded broker")
    parser.add_argument("--minio-endpoint", help="use this S3 endpoint instead of the embedded store")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    up = sub.add_parser("up", help="start the stack and reuse a running one")
    up.add_argument(
        "--infra",
        action="store_true",
        help="start only the infrastructure (broker, object store, model server)",
    )
    up.add_argument(
        "--demo",
        action="store_true",
        help="also replay the seed data, ask for recommendations and show the loop live",
    )
    up.add_argument("--for", dest="for_s", type=_arg(positive_float), metavar="SECONDS", help="stop after")
    up.add_argument(
        "--rate", type=_arg(positive_float), default=200.0, help="demo: purchases per second (default 200)"
    )
    up.add_argument("--seed", type=Path, default=None, help=f"demo: the seed file (default {DEFAULT_SEED})")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop what `up` started")
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="the stack's parts, endpoints and health")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    report = sub.add_parser("report", help="the last run of `up` as one HTML page (timeline, versions)")
    report.add_argument(
        "--out", type=Path, metavar="FILE", help="where to write it (default $RECSTREAM_HOME/report.html)"
    )
    report.set_defaults(func=cmd_report)

    produce = sub.add_parser("produce", help="send purchase events from a seed, JSONL or CSV file")
    produce.add_argument("file", type=Path, help="customerId,products seed file, or events as JSONL/CSV")
    produce.add_argument(
        "--rate", type=_arg(positive_float), help="events per second (default: as fast as possible)"
    )
    produce.add_argument("--limit", type=_arg(positive_int), help="send at most N events")
    produce.set_defaults(func=cmd_produce)

    ingest = sub.add_parser(
        "ingest", help="run the ingest worker: transactions -> Parquet in the object store"
    )
    ingest.set_defaults(func=cmd_ingest)

    def run_id(text: str) -> str:
        from recstream.retrain.steps import check_run_id

        return check_run_id(text)

    retrain = sub.add_parser("retrain", help="one retrain now: train, gate, export, publish")
    retrain.add_argument(
        "--step",
        choices=("data", "train", "publish"),  # retrain.steps.STEPS
        help="run one step of the Kubeflow pipeline (with --run-id): data = read the window and "
        "split it; train = train and evaluate a candidate; publish = gate and publish or reject it",
    )
    retrain.add_argument(
        "--run-id",
        type=_arg(run_id),
        metavar="ID",
        help="the pipeline run whose steps hand over through the object store (with --step)",
    )
    retrain.add_argument(
        "--drift-from",
        type=_arg(positive_float),
        metavar="TS",
        help="a concept drift started at this event time (epoch seconds, the purchases' ts): weigh "
        "the purchases since then at least RETRAIN_DRIFT_SHARE and gate on them, as the scheduler "
        "does after a concept alert (one-shot or --step data; the later steps follow the data's)",
    )
    retrain.add_argument(
        "--rebuild",
        type=_arg(positive_int),
        metavar="VERSION",
        help="train again from exactly that version's records, window, parent and parameters into a "
        "new version, and show both versions' metrics side by side",
    )
    retrain.add_argument(
        "--tune",
        action="store_true",
        help="first try a few training settings (learning rate, dropout, table penalty) on the "
        "training data's own validation split, then train the best; metadata.json 'tuning' says "
        "what was tried (one-shot or --step train)",
    )
    retrain.add_argument(
        "--tune-budget",
        type=_arg(positive_float),
        metavar="SECONDS",
        help="with --tune: start no trial that, with the final training after it, would overrun "
        "this (the default configuration is always tried)",
    )
    retrain.set_defaults(func=cmd_retrain, usage_error=retrain.error)

    versions = sub.add_parser("versions", help="every version: window, offsets, metrics, status, lineage")
    versions.add_argument("--json", action="store_true", help="print JSON (one object per version)")
    versions.set_defaults(func=cmd_versions)

    scheduler = sub.add_parser(
        "scheduler", help="run the retrain loop: every RETRAIN_INTERVAL_S and on drift alerts"
    )
    scheduler.set_defaults(func=cmd_scheduler)

    updater = sub.add_parser(
        "updater", help="run the model updater: validate, stage and activate published versions"
    )
    updater.set_defaults(func=cmd_updater)

    scorer = sub.add_parser(
        "scorer", help="run the streaming scorer: answer recommendation requests, track drift"
    )
    scorer.set_defaults(func=cmd_scorer)

    request = sub.add_parser("request", help="ask the scorer for one user's recommendations")
    request.add_argument("user", help="the user_id")
    request.add_argument("--k", type=_arg(_k), default=10, help="how many items (1..100, default 10)")
    request.add_argument(
        "--timeout", type=_arg(positive_float), default=30.0, help="seconds to wait for the answer"
    )
    request.add_argument(
        "--http", action="store_true", help="ask the scorer's HTTP view instead of the request topic"
    )
    request.set_defaults(func=cmd_request)

    rollback = sub.add_parser("rollback", help="serve the previous (or given) version at once")
    rollback.add_argument("--to", type=_arg(positive_int), metavar="VERSION", help="the version to serve")
    rollback.set_defaults(func=cmd_rollback)

    modelserver = sub.add_parser(
        "modelserver", help="run the embedded TF-Serving-compatible model server in the foreground"
    )
    modelserver.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    modelserver.set_defaults(func=cmd_modelserver)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        "RECSTREAM_HOME": args.home,
        "KAFKA_BOOTSTRAP": args.kafka_bootstrap,
        "MINIO_ENDPOINT": args.minio_endpoint,
    }


def _settings(args: argparse.Namespace, *required: str):
    """The command's settings; each endpoint in `required` must be set (one-line error otherwise)."""
    settings = load_settings(_overrides(args))
    for attr in required:
        settings.require(attr)
    return settings


def _stack(args: argparse.Namespace):
    from recstream.deploy.local.stack import Stack

    return Stack.from_environment(_overrides(args))


def cmd_up(args: argparse.Namespace) -> int:
    if args.infra and (args.demo or args.for_s):
        raise RecstreamError("--infra starts only the infrastructure; --demo and --for need the services")
    if args.for_s and not args.demo:
        raise RecstreamError("--for goes with --demo")
    stack = _stack(args)
    parts = stack.status()
    already = {part.name for part in parts if part.pid}
    # Before anything starts, in one check: the pinned ports of the parts this `up` starts (not a
    # configured endpoint, not our own part still running) and of the services are free and distinct.
    infra = stack.pinned_ports_to_start()
    if args.infra:
        from recstream.deploy.local.processes import check_pinned_free

        check_pinned_free(infra)
    else:  # and no services of this home run
        from recstream.deploy.local.supervisor import check_services

        check_services(stack.home, stack.configured.metrics_host, infra=infra)
    settings = stack.up()
    for part in stack.status():
        origin = f"pid {part.pid}" if part.managed else "configured"
        print(f"{part.name:<14} {part.endpoint:<22} {origin}")
    print(f"endpoints written to {settings.stack_env_path}")
    if args.infra:
        return 0
    try:
        return _supervise(args, settings)
    finally:
        for part in reversed(stack.status()):  # what this command started goes with it, broker first
            if part.pid and part.name not in already:
                try:
                    stack.stop_part(part.name)
                except RecstreamError as exc:
                    print(f"recstream: {exc}", file=sys.stderr)


def _supervise(args: argparse.Namespace, settings) -> int:
    """Run every service (and the demo) in the foreground until Ctrl-C, SIGTERM or --for."""
    import signal
    import threading
    import time

    from recstream.deploy.console import demo as demo_mode
    from recstream.deploy.console import observe
    from recstream.deploy.console.timeline import Recorder
    from recstream.deploy.local.supervisor import Supervisor

    seed = args.seed or DEFAULT_SEED
    if args.demo and not seed.is_file():
        raise RecstreamError(f"seed file not found: {seed} (give one with --seed)")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
        signal.signal(signum, lambda *_: stop.set())
    supervisor = Supervisor(settings, env=demo_mode.DEMO_ENV if args.demo else None)
    demo = snap = recorder = None
    started = time.monotonic()
    try:
        supervisor.start()
        for service in supervisor.services:  # where each one's metrics are (chosen free unless pinned)
            pid = service.proc.pid if service.proc else "-"
            print(f"{service.name:<12} {service.metrics or '-':<22} pid {pid}", flush=True)
        recorder = Recorder(settings).start()  # the run's timeline, for `recstream report`
        if args.demo:
            demo = demo_mode.Demo(settings, seed, args.rate)
            demo.start(stop)
        demo_mode.watch(settings, supervisor, demo, stop, started, args.for_s)
    finally:
        stop.set()
        try:
            if demo is not None:
                demo.join()
                snap = observe.snapshot(settings)
        finally:
            if recorder is not None:
                recorder.stop()  # a last sample while the services still run
            supervisor.stop()
    if demo is not None and snap is not None:
        body = demo_mode.summary(demo, snap, time.monotonic() - started)
        path = demo_mode.write_summary(settings, body)
        print(json.dumps(body, indent=1))
        print(f"summary written to {path}")
        try:
            print(f"report written to {demo_mode.write_report(settings, body)}")
        except Exception as exc:  # the run itself went fine: its summary is written
            log.warning("the report could not be written: %s", exc)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from recstream.deploy.local.supervisor import stop_running

    stack = _stack(args)
    services = stop_running(stack.home)
    stopped = (["services"] if services else []) + stack.down()
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from recstream.deploy.console import observe
    from recstream.deploy.local.supervisor import services_status

    stack = _stack(args)
    parts = stack.status()
    services = services_status(stack.home)  # ports and last errors, also while the stack is down
    healthy = all(part.healthy for part in parts)
    snap = rates = None
    if healthy:
        settings = stack.settings()
        before = observe.snapshot(settings)
        time.sleep(1.0)
        snap = observe.snapshot(settings)
        rates = observe.rates(before, snap)
    if args.json:
        body: dict = {"parts": [asdict(part) for part in parts], "services": services}
        if snap is not None:
            body |= {"snapshot": snap.to_dict(), "rates": rates}
        print(json.dumps(body))
    else:
        for part in parts:
            health = "healthy" if part.healthy else "DOWN"
            where = part.endpoint or "-"
            origin = (f"pid {part.pid}" if part.pid else "not running") if part.managed else "configured"
            print(f"{part.name:<14} {where:<22} {origin:<14} {health}")
        for name, service in services.items():
            ports = " ".join(f"{setting}={port}" for setting, port in service["ports"].items())
            origin = f"pid {service['pid']}" if service["pid"] else "not running"
            restarts = f" {service['restarts']} restarts" if service["restarts"] else ""
            print(f"{name:<14} {service['metrics'] or '-':<22} {origin:<14} {ports}{restarts}")
            if service["last_error"] and (service["restarts"] or not service["pid"]):
                print(f"{'':<14} last error: {service['last_error']}")
        if snap is not None:
            for name, value in observe.figures(snap, rates).items():
                print(f"{name:<16} {value}")
    return 0 if healthy else 1


def cmd_report(args: argparse.Namespace) -> int:
    """Render the timeline `up` recorded (nothing needs to run)."""
    from recstream.deploy.console.report import write_report

    print(f"report written to {write_report(_settings(args).home, args.out)}")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    from recstream.stream.produce import produce_file
    from recstream.stream.producer import EventProducer
    from recstream.stream.sources import detect_format

    path: Path = args.file
    fmt = detect_format(path)  # fails fast with a one-line error before touching the broker
    settings = _settings(args)
    console = Console(stderr=True)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[sent]:>9,} events"),
        TimeRemainingColumn(),
    )
    # The bar is erased when done (the summary says it all) and off when stderr is not a terminal.
    progress = Progress(*columns, console=console, transient=True, disable=not console.is_terminal)
    with EventProducer(settings) as producer, progress as bar:
        task = bar.add_task(f"{path.name} ({fmt})", total=path.stat().st_size, sent=0)
        report = produce_file(
            producer,
            path,
            rate=args.rate,
            limit=args.limit,
            progress=lambda done, sent: bar.update(task, completed=done, sent=sent),
        )
    if report.sent == 0:
        first = (
            f"; first: line {report.rejected[0].line}: {report.rejected[0].reason}" if report.rejected else ""
        )
        raise RecstreamError(f"{path}: no valid event to send ({len(report.rejected):,} invalid rows{first})")
    for rejected in report.rejected[:20]:
        print(f"line {rejected.line}: {rejected.reason}", file=sys.stderr)
    if len(report.rejected) > 20:
        print(f"... and {len(report.rejected) - 20} more invalid rows", file=sys.stderr)
    print(
        f"sent {report.sent:,} events to {settings.transactions_topic} in {report.seconds:.1f}s "
        f"({report.rate:,.0f} events/s); {len(report.rejected):,} invalid rows"
    )
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from recstream.ingest.worker import run

    settings = _settings(args, "kafka_bootstrap", "minio_endpoint")
    run(settings)
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    """One-shot retrain, or one step of it (`--step`) in the Kubeflow pipeline's run `--run-id`."""
    from rich.console import Console

    from recstream.deploy.console import tables

    if args.step is not None and args.run_id is None:
        args.usage_error("--step needs --run-id (the pipeline run the steps share)")
    if args.run_id is not None and args.step is None:
        args.usage_error("--run-id needs --step (data, train or publish)")
    if args.drift_from is not None and args.step not in (None, "data"):
        args.usage_error("--drift-from goes with one-shot retrain or --step data (the later steps follow it)")
    if args.rebuild is not None and (args.step is not None or args.drift_from is not None or args.tune):
        args.usage_error("--rebuild goes alone: it reuses the version's own window, drift and parameters")
    if args.tune and args.step not in (None, "train"):
        args.usage_error("--tune goes with one-shot retrain or --step train (the step that trains)")
    if args.tune_budget is not None and not args.tune:
        args.usage_error("--tune-budget goes with --tune")
    settings = _settings(args)
    if args.step in (None, "publish"):  # the steps before publish announce nothing
        settings.require("kafka_bootstrap")
    settings.require("minio_endpoint")
    console = Console(stderr=True)

    progress = tables.epoch_printer(console)
    tune = None
    if args.tune:
        from recstream.retrain.job import TuneRequest

        tune = TuneRequest(args.tune_budget, settings.retrain_min_users, tables.trial_printer(console))

    if args.step == "data":
        from recstream.retrain.steps import data_step

        console.print(f"run {args.run_id}: reading the landed transactions", highlight=False)
        data = data_step(settings, args.run_id, drift_from=args.drift_from)
        print(
            f"data of run {data.run_id}: {data.window['events']:,} events, {data.train_events:,} to train "
            f"on, {data.holdout_users:,} held-out users ({tables.timing(data.seconds)}) in {data.where}"
        )
        return 0
    if args.step == "train":
        from recstream.retrain.steps import train_step

        console.print(f"run {args.run_id}: training", highlight=False)
        trained = train_step(settings, args.run_id, progress=progress, tune=tune)
        candidate = trained.candidate
        Console().print(
            tables.metrics_table(f"{settings.model_name} run {trained.run_id}: candidate", candidate.metrics)
        )
        print(
            f"trained run {trained.run_id} ({tables.timing(candidate.seconds)}): "
            f"candidate in {trained.where}, "
            f"stamped version {trained.provisional_version} (publish re-exports it if that number is taken)"
        )
        return 0
    if args.rebuild is not None:
        from recstream.retrain.rebuild import REBUILD_OF, rebuild

        rebuilt = rebuild(settings, args.rebuild, progress=progress)
        outcome, old, new = rebuilt.outcome, rebuilt.original, rebuilt.outcome.version
        title = f"{settings.model_name}: version {old} and its rebuild, version {new}"
        Console().print(tables.rebuild_table(title, old, new, rebuilt.original_metrics, outcome.metrics))
        kept = outcome.reason == f"{REBUILD_OF} {old}"  # passed the gate: uploaded, never served
        what = "uploaded for comparison, not served" if kept else f"{outcome.event}: {outcome.reason}"
        print(f"version {new}, a rebuild of version {old}: {what} ({tables.timing(outcome.seconds)})")
        return 0
    if args.step == "publish":
        from recstream.retrain.steps import publish_step

        outcome = publish_step(settings, args.run_id)
    else:
        from recstream.retrain.job import retrain_once

        outcome = retrain_once(settings, progress=progress, drift_from=args.drift_from, tune=tune)
    Console().print(
        tables.metrics_table(
            f"{settings.model_name} version {outcome.version}: {outcome.event}", outcome.metrics
        )
    )
    print(
        f"{outcome.event} version {outcome.version} ({tables.timing(outcome.seconds)})"
        + (f": {outcome.reason}" if outcome.reason else "")
    )
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    """The registry's versions (reads the object store only; no TensorFlow)."""
    from recstream.deploy.console.tables import format_history
    from recstream.stream.registry import ModelRegistry, version_history
    from recstream.stream.storage import make_client

    settings = _settings(args, "minio_endpoint")
    registry = ModelRegistry(make_client(settings), settings.models_bucket, settings.model_name)
    history = version_history(registry)
    if args.json:
        print(json.dumps({"model": settings.model_name, "versions": history}))
    else:
        print("\n".join(format_history(history)) or f"model {settings.model_name} has no version yet")
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from recstream.retrain.scheduler import run

    settings = _settings(args, "kafka_bootstrap", "minio_endpoint")
    logging.getLogger().setLevel(settings.log_level)
    run(settings)
    return 0


def cmd_updater(args: argparse.Namespace) -> int:
    from recstream.updater.service import run

    settings = _settings(args, "kafka_bootstrap", "minio_endpoint", "tf_serving_grpc")
    logging.getLogger().setLevel(settings.log_level)
    run(settings)
    return 0


def cmd_scorer(args: argparse.Namespace) -> int:
    from recstream.recommender.scorer import run

    settings = _settings(args, "kafka_bootstrap", "minio_endpoint", "tf_serving_grpc")
    run(settings)
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    from recstream.recommender.client import RecommendationClient, recommend_http

    if args.http:
        answer = recommend_http(_settings(args), args.user, args.k, timeout_s=args.timeout)
    else:
        with RecommendationClient(_settings(args)) as client:
            answer = client.request(args.user, args.k, timeout_s=args.timeout)
    print(json.dumps(answer, indent=1))
    return 0 if "error" not in answer else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    from recstream.updater.rollback import rollback

    settings = _settings(args, "kafka_bootstrap", "minio_endpoint", "tf_serving_grpc")
    event = rollback(settings, to=args.to)
    print(f"rolled back {event.model}: version {event.version} -> {event.to}")
    return 0


def cmd_modelserver(args: argparse.Namespace) -> int:
    """Serve MODEL_BASE_PATH on the TF_SERVING_GRPC/REST ports (TF Serving's 8500/8501 by default)."""
    from recstream.deploy.local.stack import EMPTY_MODEL_CONFIG, MODELSERVER_ARGS
    from recstream.deploy.modelserver.server import main as serve

    settings = load_settings(_overrides(args), use_stack_env=False)
    config = settings.model_config_file
    config.parent.mkdir(parents=True, exist_ok=True)
    if not config.exists():
        config.write_text(EMPTY_MODEL_CONFIG)
    grpc_port = settings.tf_serving_grpc.rpartition(":")[2] if settings.tf_serving_grpc else "8500"
    rest_port = settings.tf_serving_rest.rpartition(":")[2] if settings.tf_serving_rest else "8501"
    return serve(
        [
            "--model-config-file",
            str(config),
            "--grpc-port",
            grpc_port,
            "--rest-port",
            rest_port,
            "--host",
            args.host,
            *MODELSERVER_ARGS,
        ]
    )


def _configure_logging() -> None:
    """Commands are quiet (WARNING) unless LOG_LEVEL asks for more; services log at LOG_LEVEL."""
    import os

    raw = os.environ.get("LOG_LEVEL", "WARNING")
    try:
        level = parse_log_level(raw)
    except ValueError as exc:
        raise RecstreamError(f"LOG_LEVEL={raw.upper()!r}: {exc}") from None
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if level != "DEBUG":
        # kafka-python logs every refused connection; the command reports failures itself.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _configure_logging()
        return args.func(args)
    except RecstreamError as exc:
        print(f"recstream: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("recstream: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        log.debug("unexpected failure", exc_info=True)
        print(
            f"recstream: unexpected {type(exc).__name__}: {exc} (LOG_LEVEL=DEBUG shows the traceback)",
            file=sys.stderr,
        )
    return 1


if __name__ == "__main__":
    sys.exit(main())
