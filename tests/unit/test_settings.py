"""Settings precedence, parsing errors and production-mode refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from recstream.stream.settings import (
    ENV_NAMES,
    FIELDS,
    LOCAL_SECRET_KEY,
    Settings,
    SettingsError,
    default_settings,
    load_settings,
    read_env_file,
    write_env_file,
)


def test_precedence_flags_over_env_over_stack_env_over_defaults(tmp_path: Path) -> None:
    write_env_file(
        tmp_path / "stack.env",
        {"KAFKA_BOOTSTRAP": "127.0.0.1:1111", "MINIO_ENDPOINT": "127.0.0.1:2222", "MODEL_NAME": "from-stack"},
    )
    environ = {"RECSTREAM_HOME": str(tmp_path), "MINIO_ENDPOINT": "127.0.0.1:3333", "MODEL_NAME": "from-env"}

    settings = load_settings({"MODEL_NAME": "from-flag"}, environ=environ)

    assert settings.kafka_bootstrap == "127.0.0.1:1111"  # only stack.env sets it
    assert settings.minio_endpoint == "127.0.0.1:3333"  # env beats stack.env
    assert settings.model_name == "from-flag"  # flags beat everything
    assert settings.retrain_interval_s == 1800  # default
    assert load_settings(environ=environ, use_stack_env=False).kafka_bootstrap is None


def test_stack_env_round_trip_is_private(tmp_path: Path) -> None:
    path = tmp_path / "stack.env"
    write_env_file(path, {"A": "1", "B": "x=y"})
    assert read_env_file(path) == {"A": "1", "B": "x=y"}
    assert path.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("RETRAIN_INTERVAL_S", "soon", "RETRAIN_INTERVAL_S='soon'"),
        ("RETRAIN_INTERVAL_S", "-5", "must be a finite number >= 0"),
        ("TOPIC_PARTITIONS", "0", "must be >= 1"),
        ("MINIO_SECURE", "maybe", "expected true/false"),
        ("BROKER_PORT", "70000", "not a port"),
        ("RECSTREAM_ENV", "staging", "local or production"),
    ],
)
def test_malformed_values_name_the_variable(tmp_path: Path, name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment) as error:
        load_settings(environ={"RECSTREAM_HOME": str(tmp_path), name: value})
    assert "\n" not in str(error.value)


def test_production_refuses_local_credentials(tmp_path: Path) -> None:
    base = {"RECSTREAM_HOME": str(tmp_path), "RECSTREAM_ENV": "production"}
    with pytest.raises(SettingsError, match="refuses the local default"):
        load_settings(environ=base)
    with pytest.raises(SettingsError):
        load_settings(environ={**base, "MINIO_ACCESS_KEY": "svc", "MINIO_SECRET_KEY": LOCAL_SECRET_KEY})
    ok = load_settings(
        environ={**base, "MINIO_ACCESS_KEY": "svc-account", "MINIO_SECRET_KEY": "s3cr3t-from-a-secret"}
    )
    assert ok.production


def test_design_names_are_settings() -> None:
    design = {
        "KAFKA_BOOTSTRAP",
        "MINIO_ENDPOINT",
        "MINIO_ACCESS_KEY",
        "MINIO_SECRET_KEY",
        "MINIO_SECURE",
        "TF_SERVING_GRPC",
        "TF_SERVING_REST",
        "MODEL_NAME",
        "RETRAIN_INTERVAL_S",
        "INGEST_FLUSH_EVENTS",
        "INGEST_FLUSH_S",
        "DRIFT_HORIZON_S",
        "RETRAIN_COOLDOWN_S",
        "RECSTREAM_HOME",
    }
    assert design <= ENV_NAMES


def test_each_setting_is_declared_once_as_a_field_and_fields_lists_them_all() -> None:
    declared = [f.name for f in dataclasses.fields(Settings) if f.name != "home"]
    assert [f.attr for f in FIELDS] == declared  # every field is a setting, in declaration order
    assert len(ENV_NAMES) == len(FIELDS) + 1  # one environment name each, and RECSTREAM_HOME
    defaults = default_settings()
    for field in FIELDS:  # a field's Python default is its declared default text, parsed
        assert getattr(defaults, field.attr) == field.parse(field.default), field.env
    assert defaults == load_settings(environ={"RECSTREAM_HOME": str(defaults.home)}, use_stack_env=False)
