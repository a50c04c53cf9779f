"""Least privilege and contained writes: the validation child's environment, production keys,
secrets files kept out of git, object keys that would write outside their destination."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from recstream.stream.registry import ModelRegistry
from recstream.stream.settings import SettingsError, load_settings
from recstream.stream.storage import UnsafeObjectKey, contained_path
from recstream.updater.validate import child_env

ROOT = Path(__file__).resolve().parents[2]


def test_the_validation_child_gets_no_credentials_and_still_runs() -> None:
    parent = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/x",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "TF_NUM_INTEROP_THREADS": "1",
        "LD_LIBRARY_PATH": "/opt/cuda/lib64",  # the loader: TensorFlow's libraries may be found here
        "TMPDIR": "/scratch/tmp",
        "OMP_NUM_THREADS": "2",
        "TF_VAR_db_password": "terraform-secret",
        "PYTHON_KEYRING_TOKEN": "keyring-secret",
        "MINIO_ACCESS_KEY": "svc-account",
        "MINIO_SECRET_KEY": "a-long-secret-key-value",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "KAFKA_BOOTSTRAP": "broker:9092",
        "TF_SERVING_GRPC": "serving:8500",
        "GITHUB_TOKEN": "ghp_x",
    }
    env = child_env(parent)
    kept = {"PATH", "HOME", "LANG", "PYTHONPATH", "TF_NUM_INTEROP_THREADS", "LD_LIBRARY_PATH", "TMPDIR"}
    assert set(env) == kept | {"OMP_NUM_THREADS"} | {
        "TF_CPP_MIN_LOG_LEVEL",
        "CUDA_VISIBLE_DEVICES",
    }
    # The real child's environment from this process's (with secrets added) is enough to import the validator.
    env = child_env({**os.environ, "MINIO_SECRET_KEY": "a-long-secret-key-value"})
    done = subprocess.run(
        [sys.executable, "-c", "import json, os, updater.validate; print(json.dumps(sorted(os.environ)))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    seen = set(json.loads(done.stdout.splitlines()[-1]))
    assert not {name for name in seen if name.startswith(("MINIO_", "AWS_", "KAFKA_"))}
    assert {"PATH", "LD_LIBRARY_PATH"} & set(os.environ) <= seen  # the runtime the parent had


@pytest.mark.parametrize(
    ("access", "secret", "problem"),
    [
        ("", "a-secret-of-24-characters", "MINIO_ACCESS_KEY of at least 8"),
        ("svc", "a-secret-of-24-characters", "MINIO_ACCESS_KEY of at least 8"),
        ("svc-account", "", "MINIO_SECRET_KEY of at least 16"),
        ("svc-account", "short-secret", "MINIO_SECRET_KEY of at least 16"),
        ("svc-account", " " * 20, "MINIO_SECRET_KEY of at least 16"),
    ],
)
def test_production_refuses_empty_and_short_keys(
    tmp_path: Path, access: str, secret: str, problem: str
) -> None:
    base = {"RECSTREAM_HOME": str(tmp_path), "RECSTREAM_ENV": "production"}
    with pytest.raises(SettingsError, match=problem):
        load_settings(environ={**base, "MINIO_ACCESS_KEY": access, "MINIO_SECRET_KEY": secret})
    ok = load_settings(environ={**base, "MINIO_ACCESS_KEY": "svc-account", "MINIO_SECRET_KEY": "s" * 16})
    assert ok.production
    local = load_settings(environ={"RECSTREAM_HOME": str(tmp_path), "MINIO_SECRET_KEY": "short"})
    assert not local.production  # local mode keeps working with the embedded store's keys


def test_secrets_files_are_ignored_by_git() -> None:
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False).returncode == 0

    assert ignored("deploy/compose/.env") and ignored("deploy/k8s/secret.yaml") and ignored(".env")
    assert not ignored("deploy/compose/.env.example") and not ignored("deploy/k8s/secret.template.yaml")


@pytest.mark.parametrize(
    "key",
    [
        "../escape",
        "a/../../escape",
        "a/../b",
        "/etc/passwd",
        "",
        "a//b",
        "./a",
        "a/.",
        "..",
        "a\\..\\b",
        "a\x00b",
    ],
)
def test_object_keys_that_leave_the_destination_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(UnsafeObjectKey):
        contained_path(tmp_path / "dest", key)


def test_contained_keys_and_symlinks(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert contained_path(dest, "variables/variables.index") == dest.resolve() / "variables/variables.index"
    assert contained_path(dest, "a..b/..c") == dest.resolve() / "a..b/..c"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "out").symlink_to(tmp_path)  # a link planted inside the destination
    with pytest.raises(UnsafeObjectKey, match="resolves outside"):
        contained_path(dest, "sub/out/escape")


class _Listing:
    """An S3 listing holding keys the minio SDK refuses to write but another S3 (AWS) may hold."""

    def __init__(self, names: list[str]) -> None:
        self.names, self.written = names, []

    def list_objects(self, bucket: str, prefix: str, recursive: bool = False) -> list[SimpleNamespace]:
        return [SimpleNamespace(object_name=n) for n in self.names if n.startswith(prefix)]

    def fget_object(self, bucket: str, name: str, path: str) -> None:
        self.written.append(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"x")


@pytest.mark.parametrize("bad", ["../../escape.txt", "/tmp/escape.txt", "a//b", "variables/../../escape.txt"])
def test_downloads_refuse_a_bad_key_before_writing_anything(tmp_path: Path, bad: str) -> None:
    from recstream.retrain.steps import RunObjects

    client = _Listing(["m/2/metadata.json", "m/2/saved_model.pb", f"m/2/{bad}"])
    registry = ModelRegistry(client, "models", "m")  # type: ignore[arg-type]
    with pytest.raises(UnsafeObjectKey):
        registry.download_version(2, tmp_path / "v2")
    assert client.written == [] and not (tmp_path / "v2").exists()

    run = RunObjects(
        _Listing([f"m/_runs/r1/candidate/{bad}", "m/_runs/r1/candidate/ok"]), "models", "m", "r1"
    )  # type: ignore[arg-type]
    with pytest.raises(UnsafeObjectKey):
        run.download_dir("candidate/", tmp_path / "candidate")
    assert run.client.written == []
    assert not list(tmp_path.rglob("escape.txt"))


def test_the_updater_rejects_a_version_whose_keys_leave_its_directory(tmp_path: Path) -> None:
    """A refused key is a rejection of the version (SwapFailed), not an error retried forever."""
    from recstream.updater.core import Updater
    from recstream.updater.errors import SwapFailed

    client = _Listing([f"m/2/{name}" for name in ("metadata.json", "saved_model.pb", "../../../escape.txt")])
    updater = Updater.__new__(Updater)  # only the download step: no servers needed
    updater.registry = ModelRegistry(client, "models", "m")  # type: ignore[arg-type]
    with pytest.raises(SwapFailed, match=r"^download: object key '\.\./\.\./\.\./escape\.txt'"):
        updater._download(2, tmp_path / "v2")
    assert client.written == [] and not (tmp_path / "v2").exists()
