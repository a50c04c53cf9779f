"""The scorer's `bought` table keys: raw user_id bytes in the changelog, both ways (why:
recommender/scorer.py, where the table is declared; on the real stack: test_scale_out.py)."""

from __future__ import annotations

from typing import Any

import pytest

from recstream.recommender.scorer import Scorer
from recstream.stream.settings import load_settings


@pytest.fixture
def bought(tmp_path: Any) -> Any:
    settings = load_settings(environ={"RECSTREAM_HOME": str(tmp_path), "KAFKA_BOOTSTRAP": "127.0.0.1:19092"})
    return Scorer(settings).bought  # built, never started: no broker is reached


@pytest.mark.parametrize("user", ["12", "shopper-1", "é"])
def test_changelog_keys_are_read_back_as_written(bought: Any, user: str) -> None:
    written = user.encode()  # the key the purchases agent sets
    serializers = bought.app.serializers
    read = serializers.loads_key(bought.key_type, written, serializer=bought.key_serializer)
    assert read == written  # recovery's key is the agent's key: no int 12, no JSON error


@pytest.mark.parametrize("user", ["12", "shopper-1", "é"])
def test_http_route_hashes_the_producers_key(bought: Any, user: str) -> None:
    routed = bought.changelog_topic.prepare_key(user, None)[0]  # what table_route partitions by
    assert routed == user.encode()  # the producers' key (murmur2 of the same bytes, same partition)
