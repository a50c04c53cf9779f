"""`recstream up --demo`: replay the seed into the running system and watch the loop turn.

The seed's purchases are sent at a steady rate, each customer's in file order. A seed row is
one basket, and shoppers fill their carts side by side: the items of a basket are spread
`2 × lead_s` apart (`spread_baskets`), not sent within milliseconds of each other. Once a
model version is active, customers are asked for recommendations before a sample
(`ask_share`) of their purchases, once their earlier purchases have been sent `lead_s` ago
(at least half that near the file's ends; the scorer has taken them into its table by then)
and `lead_s` before that purchase is sent,
so the answer is judged by it when that product is new to them: the next item given every
item before it, even mid-basket, as the offline leave-last-out holdout judges a model (answers
leave out what a customer bought, so a repeat purchase is no signal). That is the demo's own
hit rate, overall and per serving version (the scorer's online hit rate judges its answers the
same way). The summary puts it beside the active version's offline HR@10. A live view (rich)
shows what `recstream status` shows, refreshed; `--for` ends the demo and writes
`$RECSTREAM_HOME/demo-summary.json`.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recstream.deploy.console import observe
from recstream.stream.contracts.records import Transaction
from recstream.stream.settings import Settings
from recstream.stream.sources import Rejected, read_events

if TYPE_CHECKING:
    from recstream.deploy.local.supervisor import Supervisor

log = logging.getLogger(__name__)

DEMO_ENV = {"RETRAIN_INTERVAL_S": "60"}
LEAD_S = 2.0  # between a request and the purchase it is judged by


def spread_baskets(baskets: Iterable[list[Transaction]], spread: int) -> Iterator[Transaction]:
    """The purchases of `baskets` (in file order), a customer's purchases `spread` places apart.

    `spread` (at least 1) baskets are open at once and give one item each in turn; a finished basket makes
    room for the next. A customer's next basket joins their open one, so each customer's
    purchases keep their order (one per round: a customer with many items runs later than file
    order). Only the file's tail, with fewer baskets left, comes closer.

    >>> def t(user, item):
    ...     return Transaction(f"{user}{item}", user, item, 1, 0.0)
    >>> rows = [[t("a", "1"), t("a", "2")], [t("b", "3")], [t("c", "4"), t("c", "5")], [t("a", "6")]]
    >>> [e.item_id for e in spread_baskets(rows, spread=3)]
    ['1', '3', '4', '2', '5', '6']
    """
    if spread < 1:
        raise ValueError(f"spread must be at least 1, got {spread}")
    rows = iter(baskets)
    open_baskets: dict[str, collections.deque[Transaction]] = {}  # user -> items to send, in turn order
    turn: collections.deque[str] = collections.deque()

    def take() -> bool:
        """Open the next basket (or extend its customer's open one); False at the end of the file."""
        for row in rows:
            if not row:
                continue
            user = row[0].user_id
            if user in open_baskets:
                open_baskets[user].extend(row)
                continue
            open_baskets[user] = collections.deque(row)
            turn.append(user)
            return True
        return False

    while len(turn) < spread and take():
        pass
    while turn:
        user = turn.popleft()
        items = open_baskets[user]
        yield items.popleft()
        if items:
            turn.append(user)
        else:
            del open_baskets[user]
            take()


def seed_baskets(seed: Path) -> Iterator[list[Transaction]]:
    """The seed's valid purchases grouped by row (one row is one basket)."""
    row: list[Transaction] = []
    position = None
    for consumed, event in read_events(seed):
        if isinstance(event, Rejected):
            continue
        if consumed != position and row:  # every product of a row is read at one file position
            yield row
            row = []
        position = consumed
        row.append(event)
    if row:
        yield row


def lead_purchases(rate: float, lead_s: float = LEAD_S) -> int:
    """Purchases sent between a request and the one it is judged by, at `rate` purchases/s."""
    return max(int(rate * lead_s), 1)


def replay(seed: Path, rate: float, lead_s: float = LEAD_S) -> Iterator[Transaction]:
    """The demo's order of the seed's purchases: baskets spread twice the lead apart."""
    return spread_baskets(seed_baskets(seed), spread=2 * lead_purchases(rate, lead_s))


@dataclass
class DemoCounts:
    events_produced: int = 0
    requests_sent: int = 0
    recommendations_served: int = 0  # answers with items
    errors: int = 0
    # serving version -> [judged, hits]; judged: answers followed by a purchase of a product new
    # to the customer
    by_version: dict[int, list[int]] = field(default_factory=dict)

    def totals(self) -> tuple[int, int]:
        """(judged, hits) over every version."""
        counts = list(self.by_version.values())  # a copy: the answers thread may add a version meanwhile
        return sum(judged for judged, _ in counts), sum(hits for _, hits in counts)


class Demo:
    def __init__(
        self, settings: Settings, seed: Path, rate: float, lead_s: float = LEAD_S, ask_share: float = 0.2
    ) -> None:
        self.settings, self.seed, self.rate, self.lead_s = settings, seed, rate, lead_s
        self.lead = lead_purchases(rate, lead_s)
        self.ask_share = ask_share  # of the purchases that can be asked before (about 25/s at 200/s)
        self.sample = random.Random(0)  # seeded: runs differ only in when asking starts
        self.counts = DemoCounts()
        # request_id -> the product the customer buys next, None when they bought it before (no signal)
        self.expected: dict[str, str | None] = {}
        self.bought: collections.defaultdict[str, set[str]] = collections.defaultdict(set)
        self.threads: list[threading.Thread] = []
        self.failure: str | None = None
        self.last_sent: dict[str, float] = {}  # user -> when their latest purchase was sent
        self.asks: list[tuple[float, str, str]] = []  # heap of (due, request_id, user_id)
        self.client: Any = None
        self.producer: Any = None  # purchases go to the main broker; requests may have their own
        self.asking = threading.Event()  # set once a version is active: before that, answers are errors

    def start(self, stop: threading.Event) -> None:
        from recstream.recommender.client import RecommendationClient
        from recstream.stream.producer import EventProducer

        self.client = RecommendationClient(self.settings)
        self.producer = EventProducer(self.settings, client_id="recstream-demo")
        for target in (self._replay, self._answers):
            thread = threading.Thread(target=self._guarded, args=(target, stop), daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=10)
        if self.client is not None:
            self.client.close()
        if self.producer is not None:
            self.producer.close()

    def _guarded(self, target: Any, stop: threading.Event) -> None:
        try:
            target(stop)
        except Exception as exc:  # shown in the view; the services go on
            log.exception("demo %s failed", target.__name__)
            self.failure = f"{type(exc).__name__}: {exc}"

    def _replay(self, stop: threading.Event) -> None:
        ahead: collections.deque[Transaction] = collections.deque()
        queued: collections.Counter[str] = collections.Counter()  # user -> purchases not sent yet
        started = time.monotonic()
        for event in replay(self.seed, self.rate, self.lead_s):
            if stop.is_set():
                break
            # Ask when every earlier purchase of this customer is out, so that this one is
            # the next the scorer sees from them: the one the answer is judged by.
            if (
                event.user_id in self.last_sent
                and not queued[event.user_id]
                and self.asking.is_set()
                and self.sample.random() < self.ask_share
            ):
                request_id = uuid.uuid4().hex
                new = event.item_id not in self.bought[event.user_id]
                self.expected[request_id] = event.item_id if new else None
                # Steady state: their last purchase went out `lead` purchases ago, so this is due now.
                # At least half the lead after it in any case (near the file's ends): the scorer has
                # it by then, and the one judged is sent at least as long after the request.
                due = self.last_sent[event.user_id] + self.lead / self.rate / 2
                heapq.heappush(self.asks, (due, request_id, event.user_id))
            queued[event.user_id] += 1
            self.bought[event.user_id].add(event.item_id)
            ahead.append(event)
            if len(ahead) > self.lead:
                self._send(ahead.popleft(), started, queued)
        while ahead and not stop.is_set():
            self._send(ahead.popleft(), started, queued)
        self._ask(float("inf"))
        self.producer.flush()
        log.info("demo: the seed is replayed (%d events)", self.counts.events_produced)

    def _send(self, event: Transaction, started: float, queued: collections.Counter[str]) -> None:
        due = started + self.counts.events_produced / self.rate
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        self._ask(time.monotonic())
        # A fresh timestamp: the seed has none, and the drift tracker joins on arrival time.
        self.producer.send_transaction(
            Transaction(event.event_id, event.user_id, event.item_id, 1, time.time())
        )
        self.counts.events_produced += 1
        self.last_sent[event.user_id] = time.monotonic()
        queued[event.user_id] -= 1

    def _ask(self, now: float) -> None:
        """Send the requests due by `now` (each before that customer's next purchase is sent)."""
        while self.asks and self.asks[0][0] <= now:
            _, request_id, user_id = heapq.heappop(self.asks)
            self.client.send(user_id, k=10, request_id=request_id)
            self.counts.requests_sent += 1

    def _answers(self, stop: threading.Event) -> None:
        while not stop.is_set():
            for answer in self.client.poll(1.0):
                expected = self.expected.pop(answer["request_id"], None)
                if "error" in answer:
                    self.counts.errors += 1
                    continue
                self.counts.recommendations_served += 1
                if expected is not None:
                    judged = self.counts.by_version.setdefault(int(answer.get("model_version") or 0), [0, 0])
                    judged[0] += 1
                    judged[1] += expected in answer["items"]

    def hit_rate(self) -> float | None:
        judged, hits = self.counts.totals()
        return round(hits / judged, 4) if judged else None

    def hit_rate_by_version(self) -> dict[int, dict[str, float | int]]:
        return {
            version: {"hit_rate": round(hits / judged, 4), "judged": judged}
            for version, (judged, hits) in sorted(self.counts.by_version.items())
        }


def summary(demo: Demo, snap: observe.Snapshot, seconds: float) -> dict[str, Any]:
    return {
        "seconds": round(seconds, 1),
        "events_produced": demo.counts.events_produced,
        "events_ingested": int(snap.events_ingested),
        "versions_activated": snap.versions_activated,
        "recommendations_served": demo.counts.recommendations_served,
        "hit_rate": demo.hit_rate(),
        "answers_judged": demo.counts.totals()[0],
        "hit_rate_by_version": demo.hit_rate_by_version(),
        "online_hit_rate_by_version": {v: round(rate, 4) for v, rate in sorted(snap.hit_rate.items())},
        "active_version_offline_hr_at_10": (snap.versions.get(str(snap.active_version)) or {}).get("hr@10"),
        # from each landed purchase to the activation of the first version that learnt from it
        "median_purchase_to_served_s": observe.median_purchase_to_served(
            snap.activations, observe.purchase_times(demo.settings)
        ),
        "requests_sent": demo.counts.requests_sent,
        "request_errors": demo.counts.errors,
        "drift_alerts": int(snap.drift_alerts),
        "active_version": snap.active_version,
    }


def write_summary(settings: Settings, body: dict[str, Any]) -> Path:
    path = settings.home / "demo-summary.json"
    path.write_text(json.dumps(body, indent=1) + "\n")
    return path


def write_report(settings: Settings, body: dict[str, Any]) -> Path:
    """The run's HTML report (deploy/report.py) beside demo-summary.json, the summary in it."""
    from recstream.deploy.console import report, timeline

    timeline.append_summary(settings.home, body)
    return report.write_report(settings.home, settings.home / report.REPORT)


def render(snap: observe.Snapshot, rates: dict[str, float], demo: Demo | None, elapsed: float) -> Any:
    """The live view: one table of the figures `recstream status` prints."""
    from rich.table import Table

    table = Table(title=f"recstream — {elapsed:,.0f}s", show_header=False, min_width=60)
    table.add_column(style="bold")
    table.add_column()
    for name, row in observe.figures(snap, rates).items():
        table.add_row(name, row)
    if demo is not None:
        counts = demo.counts  # read, not copied: the answers thread adds versions to it meanwhile
        table.add_row(
            "demo",
            f"{counts.events_produced:,} sent, {counts.requests_sent:,} asked, "
            f"{counts.recommendations_served:,} answered, hit rate {demo.hit_rate() or 0:.3f}"
            + (f"  FAILED: {demo.failure}" if demo.failure else ""),
        )
    return table


def watch(
    settings: Settings,
    supervisor: Supervisor,
    demo: Demo | None,
    stop: threading.Event,
    started: float,
    for_s: float | None,
) -> None:
    """Supervise and show the figures: a live table on a terminal, a line every 10 s otherwise."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    registry = observe.registry_of(settings)  # one reader: it caches the event objects it read
    before = observe.snapshot(settings, registry=registry)
    live = Live(console=console, refresh_per_second=1) if console.is_terminal else None
    last_line = 0.0
    with live or contextlib.nullcontext():
        while not stop.wait(2.0):
            for event in supervisor.poll():
                console.print(event)
            now = time.monotonic()
            if for_s and now - started >= for_s:
                break
            after = observe.snapshot(settings, registry=registry)
            rates = observe.rates(before, after)
            before = after
            if demo is not None and after.active_version is not None:
                demo.asking.set()
            if live is not None:
                live.update(render(after, rates, demo, now - started))
            elif now - last_line >= 10:
                figures = observe.figures(after, rates)
                console.print(
                    f"[{now - started:,.0f}s] " + " | ".join(f"{k}: {v}" for k, v in figures.items())
                )
                last_line = now
