"""The model registry on the real object store: version numbers, atomic upload, the event log."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from recstream.stream.contracts.model_events import ACTIVATED, PUBLISHED, REJECTED, ROLLED_BACK, ModelEvent
from recstream.stream.registry import ModelRegistry
from recstream.stream.settings import Settings
from recstream.stream.storage import make_client

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(settings: Settings) -> ModelRegistry:
    return ModelRegistry(make_client(settings), settings.models_bucket, f"m-{uuid.uuid4().hex[:8]}")


def version_dir(root: Path, payload: str) -> Path:
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_text(payload)
    (root / "variables" / "variables.index").write_text("index")
    (root / "metadata.json").write_text(json.dumps({"payload": payload}))
    return root


def test_versions_count_up_and_the_log_folds_into_a_state(registry: ModelRegistry, tmp_path: Path) -> None:
    assert registry.next_version() == 1 and registry.state().active is None
    for version in (1, 2, 3):
        registry.upload_version(version_dir(tmp_path / str(version), f"v{version}"), version)
        registry.record(ModelEvent(PUBLISHED, registry.model, version, {"hr@10": 0.2 + version / 100}))
    registry.record(ModelEvent(ACTIVATED, registry.model, 1))
    registry.record(ModelEvent(ACTIVATED, registry.model, 2))
    registry.record(ModelEvent(REJECTED, registry.model, 3, reason="canary failed"))
    state = registry.state()
    assert (state.active, state.previous) == (2, 1)
    assert state.status == {1: "previous", 2: "active", 3: REJECTED}
    assert state.metrics[3] == {"hr@10": 0.23}
    registry.record(ModelEvent(ROLLED_BACK, registry.model, 2, to=1))
    state = registry.state()
    assert (state.active, state.status[2], state.status[1]) == (1, ROLLED_BACK, "active")
    assert registry.next_version() == 4
    assert registry.metadata(2) == {"payload": "v2"}
    summary = registry._get(f"{registry.model}/registry.json")  # the one-object view for readers
    assert b'"active": 1' in summary


def test_a_crash_mid_upload_leaves_no_visible_version_and_its_number_is_skipped(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    client, bucket = registry.client, registry.bucket
    # What a crash between copying saved_model.pb and metadata.json leaves behind.
    client.fput_object(
        bucket,
        registry.prefix(1) + "saved_model.pb",
        str(version_dir(tmp_path / "x", "x") / "saved_model.pb"),
    )
    assert registry.state().published() == []
    with pytest.raises(FileNotFoundError):
        registry.download_version(1, tmp_path / "download")
    assert registry.next_version() == 2
    registry.upload_version(version_dir(tmp_path / "2", "v2"), 2)
    downloaded = registry.download_version(2, tmp_path / "download")
    assert (downloaded / "saved_model.pb").read_text() == "v2"
    assert (downloaded / "variables" / "variables.index").read_text() == "index"
    leftovers = list(client.list_objects(bucket, f"{registry.model}/_incoming/", recursive=True))
    assert leftovers == []


def test_upload_without_metadata_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    root = version_dir(tmp_path / "1", "v1")
    (root / "metadata.json").unlink()
    with pytest.raises(ValueError, match=r"metadata\.json"):
        registry.upload_version(root, 1)
