"""models.config handling and the registry-side decisions of the updater, without any server."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from recstream.deploy.modelserver.config import read_config_file
from recstream.stream.contracts.model_events import ACTIVATED, PUBLISHED, REJECTED, ROLLED_BACK, ModelEvent
from recstream.stream.registry import RegistryState
from recstream.stream.settings import load_settings
from recstream.updater.core import Options, desired_entry, ever_activated, pending
from recstream.updater.errors import Busy
from recstream.updater.locks import file_lock
from recstream.updater.serving import ConfigFile, Entry
from recstream.updater.staging import VersionDirs


def test_entries_replace_only_our_model_and_keep_the_others(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    other = (
        'model_config_list { config { name: "other" base_path: "/srv/other" model_platform: "tensorflow" '
        "model_version_policy { latest { num_versions: 2 } } } }"
    )
    path.write_text(other)
    config = ConfigFile(path)
    assert config.entry("rec") is None
    config.set_entry("rec", tmp_path / "rec", desired_entry(2, 1))
    assert config.entry("rec") == Entry(frozenset({1, 2}), {"stable": 2, "previous": 1})
    config.set_entry("rec", tmp_path / "rec", desired_entry(3, None))
    assert config.entry("rec") == Entry(frozenset({3}), {"stable": 3})

    parsed = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(path.read_text(), parsed)
    names = [m.name for m in parsed.model_config_list.config]
    assert names == ["other", "rec"]
    assert parsed.model_config_list.config[0].model_version_policy.latest.num_versions == 2
    # What the model server will make of it: absolute path, tensorflow platform, labels.
    models = {m.name: m for m in read_config_file(path)}
    assert models["rec"].base_path == str(tmp_path / "rec") and models["rec"].labels == {"stable": 3}
    assert models["rec"].policy.versions == frozenset({3})

    config.set_entry("rec", tmp_path / "rec", None)
    assert config.entry("rec") is None and [m.name for m in read_config_file(path)] == ["other"]
    config.set_entry("other", Path("/srv/other"), None)
    assert read_config_file(path) == []  # `model_config_list {}`: still a config the server accepts
    assert not list(tmp_path.glob(".models.config.*"))  # no temp file left behind


def test_a_missing_file_is_an_empty_config(tmp_path: Path) -> None:
    config = ConfigFile(tmp_path / "serving" / "models.config")
    assert config.entry("rec") is None
    config.set_entry("rec", tmp_path / "serving" / "rec", desired_entry(1, None))
    assert config.entry("rec") == Entry(frozenset({1}), {"stable": 1})


def test_registry_decisions() -> None:
    state = RegistryState("rec")
    events = [
        ModelEvent(PUBLISHED, "rec", 1),
        ModelEvent(ACTIVATED, "rec", 1),
        ModelEvent(PUBLISHED, "rec", 2),
        ModelEvent(ACTIVATED, "rec", 2),
        ModelEvent(PUBLISHED, "rec", 3),
        ModelEvent(REJECTED, "rec", 3, reason="validation: x"),
        ModelEvent(ROLLED_BACK, "rec", 2, to=1),
        ModelEvent(PUBLISHED, "rec", 4),
        ModelEvent(PUBLISHED, "rec", 5),
    ]
    for event in events:
        state.apply(event)
    assert pending(state) == [4, 5]
    assert ever_activated(state) == {1, 2}
    assert desired_entry(1, None) == Entry(frozenset({1}), {"stable": 1})


def test_options_default_to_the_one_grpc_endpoint() -> None:
    settings = load_settings(
        {"TF_SERVING_GRPC": "127.0.0.1:8500", "UPDATER_LOAD_TIMEOUT_S": "7"}, environ={}, use_stack_env=False
    )
    options = Options.from_settings(settings)
    assert options.targets == ("127.0.0.1:8500",) and options.load_timeout_s == 7
    assert (options.validate_timeout_s, options.reconcile_interval_s) == (
        settings.updater_validate_timeout_s,
        settings.updater_reconcile_s,
    )
    replicas = dataclasses.replace(settings, tf_serving_targets="a:1, b:2,")
    assert Options.from_settings(replicas).targets == ("a:1", "b:2")


def test_staging_is_all_or_nothing(tmp_path: Path) -> None:
    dirs = VersionDirs(tmp_path / "rec")

    def fetch(dest: Path) -> None:
        dest.mkdir()
        (dest / "saved_model.pb").write_text("graph")

    def refuse(dest: Path) -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        dirs.stage(1, fetch, refuse)
    assert dirs.on_disk() == set() and not list(dirs.root.iterdir())
    dirs.stage(1, fetch)
    dirs.stage(2, fetch)
    (dirs.root / ".staging-3-deadbeef").mkdir()  # a crash mid-download
    assert dirs.has(1) and dirs.on_disk() == {1, 2}
    assert dirs.prune({2}) == [1]
    assert sorted(p.name for p in dirs.root.iterdir()) == ["2"]


def test_lock_times_out_with_a_one_line_error(tmp_path: Path) -> None:
    with (
        file_lock(tmp_path / "x.lock", 1, "the lock"),
        pytest.raises(Busy, match="held by another"),
        file_lock(tmp_path / "x.lock", 0.1, "the lock"),
    ):
        pass
