"""The Faust app factory's configuration: the group timeouts that make a join take seconds on Tansu."""

from __future__ import annotations

from stream.faust_app import create_app
from stream.settings import load_settings


def test_group_timeouts_and_loopback_defaults(tmp_path) -> None:
    settings = load_settings(
        environ={"RECSTREAM_HOME": str(tmp_path), "KAFKA_BOOTSTRAP": "127.0.0.1:19092,127.0.0.1:19093"}
    )
    conf = create_app("unit", settings).conf

    assert [str(url) for url in conf.broker] == ["kafka://127.0.0.1:19092", "kafka://127.0.0.1:19093"]
    assert conf.broker_session_timeout == settings.broker_session_timeout_s == 6
    assert conf.broker_rebalance_timeout == settings.broker_rebalance_timeout_s == 4
    assert conf.broker_heartbeat_interval == 1
    assert conf.consumer_auto_offset_reset == "earliest"
    assert conf.web_enabled is False  # Faust's web server would bind 0.0.0.0
    assert str(conf.datadir).startswith(str(tmp_path))
