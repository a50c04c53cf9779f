"""Shared fixtures: the embedded stack, brought up once per session on free ports, torn down at the end."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka_helpers import create_topic

from recstream.deploy.local.stack import Stack
from recstream.stream.settings import ENV_NAMES, Settings

SEED = Path(__file__).resolve().parents[2] / "shared" / "data" / "transactions.csv"


@pytest.fixture(scope="session")
def seed_file() -> Path:
    assert SEED.is_file(), f"seed data missing: {SEED}"
    return SEED


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A developer's own settings (endpoints, ports, credentials, topics) must not leak into the tests' stack.
    saved = {name: os.environ.pop(name) for name in ENV_NAMES if name in os.environ}
    home = tmp_path_factory.mktemp("recstream-home")
    os.environ["RECSTREAM_HOME"] = str(home)
    stack = Stack.from_environment()
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        os.environ.pop("RECSTREAM_HOME", None)
        os.environ.update(saved)


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    return stack.settings()


@pytest.fixture
def fresh_topic(settings: Settings) -> str:
    """A new topic per test, so tests never read each other's records."""
    return create_topic(settings.kafka_bootstrap, f"test-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def topic_settings(settings: Settings, fresh_topic: str) -> Settings:
    """Settings whose transactions topic is this test's fresh topic."""
    return dataclasses.replace(settings, transactions_topic=fresh_topic)
