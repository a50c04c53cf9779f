"""The Faust app factory's configuration: the group timeouts that make a join take seconds on Tansu."""

from __future__ import annotations

import asyncio

from recstream.stream.faust_app import create_app
from recstream.stream.faust_transport import Transport
from recstream.stream.settings import load_settings


def test_group_timeouts_and_loopback_defaults(tmp_path) -> None:
    settings = load_settings(
        environ={"RECSTREAM_HOME": str(tmp_path), "KAFKA_BOOTSTRAP": "127.0.0.1:19092,127.0.0.1:19093"}
    )
    conf = create_app("unit", settings).conf

    # The recstream:// transport: Faust's aiokafka driver with the fetch wait as a setting.
    assert [str(url) for url in conf.broker] == ["recstream://127.0.0.1:19092", "recstream://127.0.0.1:19093"]
    assert conf.broker_session_timeout == settings.broker_session_timeout_s == 6
    assert conf.broker_rebalance_timeout == settings.broker_rebalance_timeout_s == 4
    assert conf.broker_heartbeat_interval == 1
    assert conf.consumer_auto_offset_reset == "earliest"
    assert conf.web_enabled is False  # Faust's web server would bind 0.0.0.0
    assert str(conf.datadir).startswith(str(tmp_path))


def test_worker_consumers_take_the_fetch_wait_setting(tmp_path) -> None:
    settings = load_settings(
        environ={
            "RECSTREAM_HOME": str(tmp_path),
            "KAFKA_BOOTSTRAP": "127.0.0.1:19092",
            "KAFKA_FETCH_MAX_WAIT_MS": "7",
        }
    )
    app = create_app("unit", settings)
    assert isinstance(app.transport, Transport)  # found by Faust through the faust.transports entry point

    async def worker_consumer_wait() -> int:
        consumer = app.consumer._thread._create_worker_consumer(app.transport)  # built, never started
        try:
            return consumer._fetch_max_wait_ms  # what aiokafka hands its fetcher at start()
        finally:
            await consumer.stop()

    assert asyncio.run(worker_consumer_wait()) == 7  # Faust's own driver hard-codes 1500
