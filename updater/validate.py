"""Check a version directory against DESIGN's SavedModel contract before any model server sees it.

`validate()` runs the check in a child process (`python -m recstream.updater.validate DIR VERSION`):
a broken SavedModel can crash or bloat TensorFlow, and the updater lives for weeks, loading
a new version every retrain. `check()` is the check itself, usable in-process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recstream.stream.contracts.signatures import RECOMMEND, RECOMMEND_HISTORY, SCORE
from recstream.updater.errors import SwapFailed, one_line

# dtype names of tf.DType.name; rank None means "any".
RECOMMEND_INPUTS = {"user_id": ("string", 1), "k": ("int32", 0)}
HISTORY_INPUTS = {"user_id": ("string", 1), "history": ("string", 2), "k": ("int32", 0)}
RECOMMEND_OUTPUTS = {"items": ("string", 2), "scores": ("float32", 2), "model_version": ("int64", None)}
OPTIONAL_OUTPUTS = {"fallback": ("bool", 1)}  # our models' extra output; the scorer does without it
SCORE_INPUTS = ("users", "products")
SMOKE_USERS = ("1", "2", "42", "recstream-unknown-user-\u2603")  # the last one is never in a vocabulary
SMOKE_K = 5


class Invalid(SwapFailed):
    def __init__(self, reason: str) -> None:
        super().__init__("validation", reason)


def check(path: Path, version: int) -> dict[str, Any]:
    """Load the SavedModel, check both signatures' specs, smoke-call them; raises Invalid."""
    import tensorflow as tf

    _check_metadata(path, version)
    if not (path / "saved_model.pb").is_file():
        raise Invalid("no saved_model.pb")
    started = time.monotonic()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise Invalid(f"does not load: {type(exc).__name__}: {exc}") from None
    load_s = time.monotonic() - started
    missing = sorted({RECOMMEND, SCORE} - set(loaded.signatures))
    if missing:
        raise Invalid(f"missing signature(s) {', '.join(missing)}")
    recommend, score = loaded.signatures[RECOMMEND], loaded.signatures[SCORE]
    _check_specs(RECOMMEND, "input", _inputs(recommend), RECOMMEND_INPUTS)
    _check_specs(RECOMMEND, "output", recommend.structured_outputs, RECOMMEND_OUTPUTS, OPTIONAL_OUTPUTS)
    score_inputs = _inputs(score)
    _check_specs(SCORE, "input", score_inputs, {name: (None, 1) for name in SCORE_INPUTS})
    _check_specs(SCORE, "output", score.structured_outputs, {"scores": ("float32", 1)})

    n = len(SMOKE_USERS)
    try:
        out = recommend(user_id=tf.constant(SMOKE_USERS), k=tf.constant(SMOKE_K, tf.int32))
        pairs = {
            name: _values(score_inputs[name].dtype, n, name) for name in SCORE_INPUTS
        }  # one product per user
        scored = score(**{name: tf.constant(v, score_inputs[name].dtype) for name, v in pairs.items()})
    except Exception as exc:
        raise Invalid(f"smoke call failed: {type(exc).__name__}: {exc}") from None
    check_recommendations(
        {name: value.numpy() for name, value in out.items()}, version, n, SMOKE_K, what="smoke call"
    )
    scores = scored["scores"].numpy()
    if scores.shape != (n,) or not all(math.isfinite(float(s)) for s in scores):
        raise Invalid(f"score: expected {n} finite scores, got shape {scores.shape} {scores.tolist()[:4]}")
    if RECOMMEND_HISTORY in loaded.signatures:  # optional: versions exported before it lack it
        _check_history(loaded.signatures[RECOMMEND_HISTORY], version)
    return {"load_s": round(load_s, 3), "smoke_users": n}


def _check_history(signature: Any, version: int) -> None:
    import tensorflow as tf

    _check_specs(RECOMMEND_HISTORY, "input", _inputs(signature), HISTORY_INPUTS)
    _check_specs(
        RECOMMEND_HISTORY, "output", signature.structured_outputs, RECOMMEND_OUTPUTS, OPTIONAL_OUTPUTS
    )
    n = len(SMOKE_USERS)
    history = [[user, "", "recstream-unknown-item"] for user in SMOKE_USERS]  # any strings: unknown ignored
    try:
        out = signature(
            user_id=tf.constant(SMOKE_USERS), history=tf.constant(history), k=tf.constant(SMOKE_K, tf.int32)
        )
    except Exception as exc:
        raise Invalid(f"{RECOMMEND_HISTORY} smoke call failed: {type(exc).__name__}: {exc}") from None
    check_recommendations(
        {name: value.numpy() for name, value in out.items()}, version, n, SMOKE_K, what=RECOMMEND_HISTORY
    )


def check_recommendations(outputs: dict[str, Any], version: int, n: int, k: int, *, what: str) -> None:
    """Shapes, finiteness and the version stamp of a recommend answer (numpy arrays); shared with the
    canary, which raises the same errors under its own kind."""
    import numpy as np

    missing = sorted(set(RECOMMEND_OUTPUTS) - set(outputs))
    if missing:
        raise Invalid(f"{what}: output(s) {', '.join(missing)} missing")
    items, scores, stamp = (np.asarray(outputs[name]) for name in ("items", "scores", "model_version"))
    if items.shape != (n, k) or scores.shape != (n, k):
        raise Invalid(
            f"{what}: expected items and scores of shape ({n}, {k}), got {items.shape} and {scores.shape}"
        )
    if not np.all(np.isfinite(scores)):
        raise Invalid(f"{what}: scores are not all finite")
    if stamp.size == 0 or not np.all(stamp == version):
        raise Invalid(f"{what}: model_version is {stamp.ravel()[:3].tolist()}, expected {version}")


def _check_metadata(path: Path, version: int) -> None:
    try:
        metadata = json.loads((path / "metadata.json").read_text())
    except FileNotFoundError:
        raise Invalid("no metadata.json") from None
    except (OSError, ValueError) as exc:
        raise Invalid(f"metadata.json is unreadable: {exc}") from None
    if not isinstance(metadata, dict):
        raise Invalid("metadata.json is not an object")
    if metadata.get("version", version) != version:
        raise Invalid(f"metadata.json says version {metadata['version']}, expected {version}")


def _inputs(signature: Any) -> dict[str, Any]:
    _args, kwargs = signature.structured_input_signature
    return dict(kwargs)


def _check_specs(
    signature: str,
    kind: str,
    specs: dict[str, Any],
    expected: Mapping[str, tuple[str | None, int | None]],
    optional: Mapping[str, tuple[str | None, int | None]] | None = None,
) -> None:
    allowed = {**expected, **(optional or {})}
    if not set(expected) <= set(specs) <= set(allowed):
        raise Invalid(f"{signature}: {kind}s are {sorted(specs)}, expected {sorted(expected)}")
    for name, (dtype, rank) in allowed.items():
        if name not in specs:
            continue
        spec = specs[name]
        if dtype is not None and spec.dtype.name != dtype:
            raise Invalid(f"{signature}: {kind} {name} is {spec.dtype.name}, expected {dtype}")
        if rank is not None and spec.shape.rank is not None and spec.shape.rank != rank:
            raise Invalid(f"{signature}: {kind} {name} has rank {spec.shape.rank}, expected {rank}")


def _values(dtype: Any, n: int, name: str) -> list[Any]:
    if dtype.is_integer:
        return list(range(n))
    if dtype.name == "string":
        return [f"{name}-{i}" for i in range(n)]
    raise Invalid(f"{SCORE}: input {name} is {dtype.name}, expected strings or integers")


# -- the child process ----------------------------------------------------------------------------
# What the child may inherit: it reads a local directory, so no endpoint or credential (MINIO_*,
# AWS_*, KAFKA_*, tokens) is passed; only the non-secret runtime variables Python, TensorFlow,
# the dynamic loader, the math libraries and the locale need (a TensorFlow whose libraries are
# found through LD_LIBRARY_PATH must still load).
_CHILD_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "TEMP", "TMP", "LANG", "LANGUAGE", "TZ", "VIRTUAL_ENV"}
    | {"LD_LIBRARY_PATH", "LD_PRELOAD", "GLIBC_TUNABLES", "XDG_CACHE_HOME", "CONDA_PREFIX"}
)
_CHILD_PREFIXES = ("LC_", "PYTHON", "TF_", "OMP_", "KMP_", "MKL_", "OPENBLAS_", "ONEDNN_", "DNNL_", "MALLOC_")
# Never passed even under an allowed prefix: the model server's endpoints, Terraform's variables
# (TF_VAR_*, often secrets), and any name that says it holds a secret.
_CHILD_EXCLUDED_PREFIXES = ("TF_SERVING", "TF_VAR_")
_SECRET_MARKERS = (
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "TOKEN",
    "CREDENTIAL",
    "ACCESS_KEY",
    "PRIVATE_KEY",
    "API_KEY",
)


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The validation child's environment: an allow-list, never the parent's secrets."""
    env = {
        name: value
        for name, value in environ.items()
        if (name in _CHILD_NAMES or name.startswith(_CHILD_PREFIXES))
        and not name.startswith(_CHILD_EXCLUDED_PREFIXES)
        and not any(marker in name.upper() for marker in _SECRET_MARKERS)
    }
    return env | {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def validate(path: Path, version: int, timeout_s: float = 180.0) -> dict[str, Any]:
    """`check()` in a child process; raises Invalid with the child's reason (or how it died)."""
    env = child_env(os.environ)
    argv = [sys.executable, "-m", "recstream.updater.validate", str(path), str(version)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise Invalid(f"validation did not finish within {timeout_s:g}s") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = one_line(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output")
        raise Invalid(f"validator exited with status {done.returncode}: {tail}") from None
    if not result.get("ok"):
        raise Invalid(str(result.get("reason", "unknown reason")).removeprefix("validation: "))
    return result.get("report", {})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        print("usage: python -m recstream.updater.validate DIR VERSION", file=sys.stderr)
        return 2
    try:
        report = check(Path(args[0]), int(args[1]))
    except SwapFailed as exc:
        print(json.dumps({"ok": False, "reason": str(exc)}), flush=True)
        return 1
    print(json.dumps({"ok": True, "report": report}), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
