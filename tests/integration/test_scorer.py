"""The streaming scorer on the real stack with a trained model.

A CF model trained on a seed slice is published and activated by the updater on this
module's own model server; `recstream scorer` runs as a subprocess on this module's
topics, and requests go through the consumer-side client. The tests run in file order:
the first expects the training popularity for strangers, before any purchase enters the live
item mix; the drift test comes after the tests that buy little, so that what they feed the
drift tracker stays well below its minimum window; the burst of purchases that re-ranks the
lists comes after the drift test, whose alerts it would raise.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from ingest_helpers import Worker
from kafka_helpers import create_topic, read_json_until_idle
from modelserver_helpers import Servers

from recstream.deploy.console import observe
from recstream.deploy.local.processes import free_port
from recstream.recommender.client import NoAnswer, RecommendationClient
from recstream.retrain import cf_model, savedmodel
from recstream.retrain.dataset import Interactions, build_interactions, read_seed
from recstream.retrain.job import reference_distributions
from recstream.stream.contracts.alerts import parse_drift_alert
from recstream.stream.contracts.records import Transaction
from recstream.stream.producer import EventProducer
from recstream.stream.settings import Settings
from recstream.updater.activate import publish_and_activate
from recstream.updater.errors import UpdaterError

pytestmark = pytest.mark.integration

SLICE_ROWS = 20_000
DRIFT_ENV = {
    "DRIFT_CHECK_S": "1",
    "DRIFT_WINDOW_EVENTS": "400",
    "DRIFT_MIN_EVENTS": "200",
    "DRIFT_MIN_OUTCOMES": "40",
    "DRIFT_ALERT_COOLDOWN_S": "600",
    "DRIFT_HORIZON_S": "600",
}


@dataclass
class Scoring:
    settings: Settings
    servers: Servers
    endpoint: str
    client: RecommendationClient
    scorer: Worker
    metrics_port: int
    http_port: int
    train: Interactions

    def metric(self, name: str, **labels: str) -> float | None:
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        page = observe.parse_metrics(text)
        found = [v for lbl, v in page.get(name, []) if all(lbl.get(k) == x for k, x in labels.items())]
        return found[0] if found else None

    def purchase(self, pairs: list[tuple[str, str]]) -> None:
        with EventProducer(self.settings) as producer:
            for user, item in pairs:
                producer.send_transaction(Transaction(uuid.uuid4().hex, user, item, 1, time.time()))
            producer.flush()


def _topics(settings: Settings, model: str) -> dict[str, str]:
    bootstrap, n = settings.kafka_bootstrap, settings.topic_partitions
    requests = settings.requests_kafka_bootstrap  # the request path's broker
    return {
        "transactions_topic": create_topic(bootstrap, f"{model}-transactions", partitions=n),
        "requests_topic": create_topic(requests, f"{model}-requests", partitions=n),
        "recommendations_topic": create_topic(requests, f"{model}-recommendations", partitions=n),
        "model_updates_topic": create_topic(bootstrap, f"{model}-model-updates", partitions=1),
        "drift_alerts_topic": create_topic(bootstrap, f"{model}-drift-alerts", partitions=1),
    }


@pytest.fixture(scope="module")
def scoring(
    settings: Settings, seed_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scoring]:
    root = tmp_path_factory.mktemp("scorer")
    model = f"sc-{uuid.uuid4().hex[:8]}"
    (root / "serving").mkdir()
    servers = Servers(root / "serving", model)
    scorer = client = None
    try:
        (endpoint,) = servers.start(1)
        s = dataclasses.replace(
            settings,
            model_name=model,
            model_base_path_setting=str(servers.root),
            tf_serving_grpc=endpoint,
            tf_serving_targets=None,
            **_topics(settings, model),
        )
        train = build_interactions(read_seed(seed_file).iloc[:SLICE_ROWS])
        trained = cf_model.train(train, dataclasses.replace(cf_model.Params(), epochs=3))
        export = savedmodel.export(
            trained, root / "export-1", 1, {"version": 1, "reference": reference_distributions(train)}, model
        )
        publish_and_activate(s, export, 1)

        port, http_port = free_port(), free_port()
        scorer = Worker(
            s,
            root / "scorer.log",
            "scorer",
            TF_SERVING_GRPC=endpoint,
            SCORER_METRICS_PORT=str(port),
            SCORER_HTTP_PORT=str(http_port),
            SCORER_DEADLINE_S="60",
            **DRIFT_ENV,
        )
        client = RecommendationClient(s)
        first = client.send("warm-up-user")
        deadline = time.monotonic() + 120  # the group join and the first Predict
        while True:
            try:
                client.wait([first], timeout_s=2)
                break
            except NoAnswer:
                if not scorer.alive() or time.monotonic() > deadline:
                    pytest.fail(f"the scorer did not answer: {(root / 'scorer.log').read_text()[-3000:]}")
        yield Scoring(s, servers, endpoint, client, scorer, port, http_port, train)
    finally:
        if client is not None:
            client.close()
        if scorer is not None:
            scorer.kill(signal.SIGTERM)
        servers.kill_all()


def _bought(train: Interactions, user: str) -> set[str]:
    index = train.users.ids.index(user)
    return {train.item_vocab.ids[i] for i in train.sequence(index)}


def test_known_and_unknown_users(scoring: Scoring) -> None:
    known = scoring.train.users.ids[:3]
    ids = {scoring.client.send(user, k=7): user for user in [*known, "never-seen-1", "never-seen-2"]}
    answers = scoring.client.wait(ids, timeout_s=60)
    for request_id, user in ids.items():
        answer = answers[request_id]
        assert answer["user_id"] == user and answer["model_version"] == 1
        assert len(answer["items"]) == len(answer["scores"]) == 7 == len(set(answer["items"]))
        assert answer["scores"] == sorted(answer["scores"], reverse=True)
        assert answer["latency_ms"] > 0
        if user in known:
            assert answer["fallback"] is False
            assert not _bought(scoring.train, user) & set(answer["items"])
        else:
            assert answer["fallback"] is True
    unknown = [answers[r] for r, user in ids.items() if user.startswith("never-seen")]
    popularity = scoring.train.popularity()
    popular = [scoring.train.item_vocab.ids[i] for i in np.argsort(-popularity, kind="stable")[:7]]
    assert unknown[0]["items"] == unknown[1]["items"]
    assert set(unknown[0]["items"]) == set(popular)


def test_purchases_since_training_are_excluded_and_the_list_stays_k_long(scoring: Scoring) -> None:
    user = scoring.train.users.ids[10]
    before = scoring.client.request(user, k=10)
    newly_bought = before["items"][:4]
    scoring.purchase([(user, item) for item in newly_bought])
    deadline = time.monotonic() + 60
    while True:
        after = scoring.client.request(user, k=10)
        if not set(newly_bought) & set(after["items"]):
            break
        assert time.monotonic() < deadline, f"bought items still recommended: {after}"
        time.sleep(0.5)
    assert len(after["items"]) == 10 == len(set(after["items"]))


def _raw_records(settings: Settings, topic: str, bootstrap: str | None = None) -> list[dict[str, Any]]:
    return read_json_until_idle(bootstrap or settings.kafka_bootstrap, topic)


def test_invalid_requests_get_error_answers(scoring: Scoring) -> None:
    client = scoring.client
    bad = {
        "missing-user": {},
        "k-zero": {"user_id": "u1", "k": 0},
        "k-101": {"user_id": "u1", "k": 101},
        "k-string": {"user_id": "u1", "k": "10"},
        "k-float": {"user_id": "u1", "k": 2.5},
        "user-int": {"user_id": 42},
        "user-empty": {"user_id": ""},
        "user-long": {"user_id": "x" * 300},
    }
    tag = uuid.uuid4().hex[:6]
    for name, body in bad.items():
        client.send_raw(json.dumps({"request_id": f"{tag}-{name}", **body}).encode(), f"{tag}-{name}")
    huge = json.dumps({"request_id": f"{tag}-huge", "user_id": "x" * 100_000}).encode()  # refused unread
    without_id = [b"not json", b"[1, 2]", b"\xff\xfe\x00", b'{"user_id": "u1"}', huge]
    for value in without_id:
        client.send_raw(value)
    good = client.send("u1", k=3)  # valid requests in the same batches are still answered
    answers = client.wait([f"{tag}-{name}" for name in bad] + [good], timeout_s=60)
    assert len(answers.pop(good)["items"]) == 3
    for answer in answers.values():
        assert set(answer) == {"request_id", "error"} and answer["error"].startswith("invalid request:")
    field = {name: answers[f"{tag}-{name}"]["error"] for name in bad}
    assert "user_id: missing" in field["missing-user"] and "k:" in field["k-101"]
    assert "longer than" in field["user-long"]
    anonymous = [
        r
        for r in _raw_records(
            scoring.settings,
            scoring.settings.recommendations_topic,
            scoring.settings.requests_kafka_bootstrap,
        )
        if r.get("request_id") is None
    ]
    assert len(anonymous) == len(without_id) and all("error" in r for r in anonymous)
    assert scoring.scorer.alive()


def test_model_server_down_for_ten_seconds_loses_no_request(scoring: Scoring) -> None:
    client = scoring.client
    retries_before = scoring.metric("recstream_scorer_predict_retries_total") or 0.0
    scoring.servers.kill(scoring.endpoint)
    users = scoring.train.users.ids[100:200]
    sent = []
    started = time.monotonic()
    for user in users:  # 100 requests over the 10 s outage
        sent.append(client.send(user, k=5))
        client.producer.flush()
        time.sleep(max(0.0, started + len(sent) * 0.1 - time.monotonic()))
    scoring.servers.restart(scoring.endpoint)
    answers = client.wait(sent, timeout_s=120)
    assert len(answers) == len(sent)
    wrong = [a for a in answers.values() if "error" in a or len(a["items"]) != 5 or a["model_version"] != 1]
    assert not wrong, wrong[:3]
    assert max(a["latency_ms"] for a in answers.values()) > 5_000  # answered late, not lost
    assert (scoring.metric("recstream_scorer_predict_retries_total") or 0.0) > retries_before


def _ask_until(scoring: Scoring, user: str, done: Any, timeout_s: float) -> tuple[dict[str, Any], float]:
    """Ask for `user` until `done(answer)`; the answer and the seconds it took."""
    started = time.monotonic()
    while True:
        answer = scoring.client.request(user, k=10)
        elapsed = time.monotonic() - started
        if done(answer):
            return answer, elapsed
        assert elapsed < timeout_s, f"still {answer} after {elapsed:.1f}s"


def test_a_purchase_changes_the_next_answer_without_a_retrain(scoring: Scoring) -> None:
    train = scoring.train
    # An unknown customer buys three products of one taste: those a known customer bought.
    taste = next(
        list(dict.fromkeys(train.item_vocab.ids[i] for i in train.sequence(u)))[:3]
        for u in range(train.n_users)
        if len(set(train.sequence(u).tolist())) >= 3
    )
    stranger = f"stranger-{uuid.uuid4().hex[:8]}"
    popular = scoring.client.request(stranger, k=10)
    assert popular["fallback"] is True
    scoring.purchase([(stranger, item) for item in taste])

    def all_three_seen(answer: dict[str, Any]) -> bool:  # personalised, and none of them offered again
        return answer["fallback"] is False and not set(taste) & set(answer["items"])

    answer, took = _ask_until(scoring, stranger, all_three_seen, timeout_s=10)
    assert answer["items"] != popular["items"]
    assert answer["model_version"] == 1 and len(answer["items"]) == 10
    # A known customer buys one more product: the list changes, beyond leaving that product out.
    user = train.users.ids[20]
    before = scoring.client.request(user, k=10)
    new = next(
        item for item in train.item_vocab.ids if item not in _bought(train, user) | set(before["items"])
    )
    scoring.purchase([(user, new)])
    after, took_known = _ask_until(scoring, user, lambda a: a["items"] != before["items"], timeout_s=10)
    assert after["fallback"] is False and new not in after["items"]
    print(f"personalised after {took:.2f}s, known user's answer changed after {took_known:.2f}s")


def test_http_view_answers_one_user_with_the_answer_record(scoring: Scoring) -> None:
    base = f"http://127.0.0.1:{scoring.http_port}/recommendations"
    user = scoring.train.users.ids[30]
    answer = requests.get(f"{base}/{user}", params={"k": 5}, timeout=30).json()
    assert answer["user_id"] == user and answer["fallback"] is False and answer["model_version"] == 1
    assert len(answer["items"]) == 5 and not _bought(scoring.train, user) & set(answer["items"])
    assert answer["items"] == scoring.client.request(user, k=5)["items"]  # the same as the Kafka path
    stranger = requests.get(f"{base}/nobody-{uuid.uuid4().hex[:6]}", timeout=30)
    assert stranger.status_code == 200 and stranger.json()["fallback"] is True  # never a 404
    assert len(stranger.json()["items"]) == 10  # the default k
    for k in ("0", "101", "abc", "2.5", "9" * 50):
        bad = requests.get(f"{base}/{user}", params={"k": k}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"].startswith("invalid request: k"), (k, bad.text)
    too_long = requests.get(f"{base}/{'x' * 300}", timeout=30)
    assert too_long.status_code == 400 and "longer than" in too_long.json()["error"]


def _alerts(scoring: Scoring) -> list[Any]:
    return [
        parse_drift_alert(json.dumps(r).encode())
        for r in _raw_records(scoring.settings, scoring.settings.drift_alerts_topic)
    ]


def _round(scoring: Scoring, rng: np.random.Generator, hit_rate: float, pick: Any) -> None:
    """50 known users ask, then each buys: a recommended item with `hit_rate`, else `pick(rng)`."""
    users = rng.choice(scoring.train.users.ids[1000:], size=50, replace=False)
    ids = {scoring.client.send(str(user), k=10): str(user) for user in users}
    answers = scoring.client.wait(ids, timeout_s=60)
    purchases = []
    for request_id, user in ids.items():
        items = answers[request_id]["items"]
        purchases.append((user, items[0] if rng.random() < hit_rate else pick(rng, items)))
    scoring.purchase(purchases)


def test_a_stable_stream_raises_no_alert_and_a_launch_of_new_products_raises_both(scoring: Scoring) -> None:
    rng = np.random.default_rng(3)
    train = scoring.train
    counts = np.bincount(train.items, minlength=train.n_items).astype(float)
    share = counts / counts.sum()

    def like_training(rng: np.random.Generator, recommended: list[str]) -> str:
        while True:
            item = train.item_vocab.ids[int(rng.choice(train.n_items, p=share))]
            if item not in recommended:
                return item

    for _ in range(10):  # 500 purchases like the training data, a quarter of them hits
        _round(scoring, rng, 0.25, like_training)
    time.sleep(3)  # a few drift checks
    assert _alerts(scoring) == []
    psi_value = scoring.metric("recstream_drift_statistic", statistic="psi_item_popularity")
    assert psi_value is not None and psi_value < 0.2  # judged, and quiet
    assert scoring.metric("recstream_drift_outcomes", version="1", result="hit") > 50

    launch_started = time.time()
    for _ in range(8):  # a launch: every purchase is one of 20 new products
        _round(scoring, rng, 0.0, lambda rng, _items: f"launch-{int(rng.integers(20))}")
    deadline = time.monotonic() + 60
    while {a.kind for a in _alerts(scoring)} != {"concept", "data"}:
        assert time.monotonic() < deadline, f"alerts so far: {_alerts(scoring)}"
        time.sleep(1)
    alerts = _alerts(scoring)
    assert all(a.ts >= launch_started and a.model_version == 1 and a.value > a.threshold for a in alerts)
    statistics = sorted(a.statistic for a in alerts)
    assert "page_hinkley_hit_rate" in statistics and "unknown_item_share" in statistics
    assert len(statistics) == len(set(statistics))  # hysteresis: one alert per statistic


def test_a_product_selling_now_climbs_in_every_list(scoring: Scoring) -> None:
    """The live item mix re-ranks the model's answers (SCORER_PRIOR_WINDOW): a product many customers
    buy at once climbs into a stranger's top 10 and up a known customer's list, with no retrain.
    After the drift test, whose alerts it would otherwise raise."""
    train = scoring.train
    order = [train.item_vocab.ids[i] for i in np.argsort(-train.popularity(), kind="stable")]
    stranger, user = f"stranger-{uuid.uuid4().hex[:8]}", train.users.ids[30]
    before = scoring.client.request(stranger, k=10)
    known_before = scoring.client.request(user, k=100)["items"]
    trending = next(
        (
            item
            for item in order[40:]
            if item not in before["items"] and item in known_before[20:] and item not in _bought(train, user)
        ),
        None,
    )
    assert trending is not None, f"no product ranked 40th or lower for strangers and 21st or lower for {user}"
    scoring.purchase([(f"buyer-{uuid.uuid4().hex[:8]}", trending) for _ in range(200)])
    answer, _ = _ask_until(scoring, stranger, lambda a: trending in a["items"], timeout_s=30)
    assert answer["fallback"] is True and answer["model_version"] == 1
    assert answer["scores"] == sorted(answer["scores"], reverse=True)
    known_after = scoring.client.request(user, k=100)["items"]
    assert known_after.index(trending) < known_before.index(trending) - 10, (known_before, known_after)


def test_a_version_without_the_history_signature_is_served_through_serving_default(
    scoring: Scoring, tmp_path: Path
) -> None:
    from saved_models import build_version

    s = scoring.settings
    publish_and_activate(s, build_version(tmp_path / "v2", 2, model=s.model_name), 2)  # no history signature
    user = scoring.train.users.ids[40]
    answer, _ = _ask_until(scoring, user, lambda a: a.get("model_version") == 2, timeout_s=60)
    assert answer["items"] == [f"{user}-v2-{j}" for j in range(10)] and answer["fallback"] is False


def test_publish_and_activate_says_why_a_version_was_not_activated(scoring: Scoring, tmp_path: Path) -> None:
    """The shared helper's failure: the updater's rejection comes back as an error with its reason."""
    from saved_models import build_version

    s = scoring.settings
    broken = build_version(tmp_path / "v9", 9, flaw="wrong-input-name", model=s.model_name)
    with pytest.raises(UpdaterError, match=rf"version 9 of {s.model_name} was not activated \(rejected: "):
        publish_and_activate(s, broken, 9)
