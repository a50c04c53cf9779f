"""The SavedModel contract check: good versions pass, each kind of broken one is refused with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from saved_models import build_version, corrupt

from recstream.updater.validate import Invalid, check, validate


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("validate")


def test_a_good_version_passes(root: Path) -> None:
    report = check(build_version(root / "good", 3), 3)
    assert report["smoke_users"] == 4 and report["load_s"] >= 0


@pytest.mark.parametrize(
    ("flaw", "reason"),
    [
        ("no-score", "missing signature(s) score"),
        ("wrong-input-name", "serving_default: inputs are ['k', 'user'], expected ['k', 'user_id']"),
        ("float-k", "serving_default: input k is float32, expected int32"),
        ("nan-scores", "smoke call: scores are not all finite"),
        ("wrong-version", "smoke call: model_version is [3], expected 2"),
    ],
)
def test_contract_breaches_are_refused_with_a_reason(root: Path, flaw: str, reason: str) -> None:
    with pytest.raises(Invalid) as refused:
        check(build_version(root / flaw, 2, flaw=flaw), 2)
    assert refused.value.kind == "validation"
    assert refused.value.reason == reason


def test_metadata_must_exist_and_agree(root: Path) -> None:
    path = build_version(root / "meta", 1)
    with pytest.raises(Invalid, match=r"metadata\.json says version 1, expected 4"):
        check(path, 4)
    (path / "metadata.json").unlink()
    with pytest.raises(Invalid, match=r"no metadata\.json"):
        check(path, 1)


def test_in_a_child_process(root: Path) -> None:
    """The updater's path: the reason crosses the process boundary, one line."""
    path = corrupt(build_version(root / "garbage", 5))
    with pytest.raises(Invalid) as refused:
        validate(path, 5, timeout_s=120)
    assert refused.value.reason.startswith("does not load: ")
    assert "\n" not in str(refused.value)
    empty = root / "empty"
    empty.mkdir()
    with pytest.raises(Invalid, match=r"no metadata\.json"):
        validate(empty, 1, timeout_s=120)
