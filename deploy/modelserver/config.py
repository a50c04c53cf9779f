"""Model configuration: TF Serving's ModelServerConfig, validated and reduced to plain values.

Validation follows ServerCore::ReloadConfig (duplicate names, absolute base paths, the
`tensorflow` platform), so a config the embedded server accepts is one the real
tensorflow/serving accepts too. Version directories are found the way
FileSystemStoragePathSource finds them: integer-named children of the base path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from recstream.deploy.modelserver.errors import invalid

log = logging.getLogger(__name__)

PLATFORM = "tensorflow"
_MODEL_TYPE_TENSORFLOW = 1  # tensorflow.serving.ModelType.TENSORFLOW (deprecated field)


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which of the versions on disk are aspired (ServableVersionPolicy)."""

    kind: Literal["latest", "specific", "all"] = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def select(self, on_disk: Mapping[int, str]) -> dict[int, str]:
        if self.kind == "all":
            chosen = sorted(on_disk)
        elif self.kind == "specific":
            missing = sorted(self.versions - on_disk.keys())
            if missing:
                log.warning("specific versions %s not found on disk", missing)
            chosen = sorted(self.versions & on_disk.keys())
        else:
            chosen = sorted(on_disk)[-max(self.num_versions, 1) :]
        return {version: on_disk[version] for version in chosen}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: Mapping[str, int] = field(default_factory=dict)


def single_model(name: str, base_path: str | os.PathLike[str]) -> list[ModelConfig]:
    """The config TF Serving builds from --model_name/--model_base_path: latest(1), no labels."""
    return [ModelConfig(name=name, base_path=str(Path(base_path).absolute()))]


def read_config_file(path: str | os.PathLike[str]) -> list[ModelConfig]:
    """A --model_config_file: ModelServerConfig in protobuf text format."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(Path(path).read_text(), config)
    except (OSError, text_format.ParseError) as exc:
        raise invalid(f"cannot read {path}: {exc}") from exc
    if config.WhichOneof("config") is None:
        return []  # an empty file: no models yet (TF Serving takes no action either)
    return from_proto(config)


def _platform(model: model_server_config_pb2.ModelConfig) -> str:
    if model.model_type:
        if model.model_platform:
            raise invalid(
                "Illegal setting both ModelServerConfig::model_type (deprecated) "
                "and ModelServerConfig::model_platform."
            )
        if model.model_type != _MODEL_TYPE_TENSORFLOW:
            raise invalid(f"ModelServerConfig::model_type choice {model.model_type} not supported.")
        return PLATFORM
    if not model.model_platform:
        raise invalid(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) "
            "nor ModelServerConfig::model_platform."
        )
    return model.model_platform


def _policy(model: model_server_config_pb2.ModelConfig) -> VersionPolicy:
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=frozenset(policy.specific.versions))
    if choice == "latest":
        return VersionPolicy("latest", num_versions=max(policy.latest.num_versions, 1))
    return VersionPolicy()


def from_proto(config: model_server_config_pb2.ModelServerConfig) -> list[ModelConfig]:
    """Validate a ModelServerConfig as ServerCore does and return its models; nothing is applied."""
    if config.WhichOneof("config") != "model_config_list":
        raise invalid(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported"
        )
    models: list[ModelConfig] = []
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if model.name in seen:
            raise invalid(f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
        if "://" in model.base_path:
            raise invalid(f"Model {model.name}: only local base paths are supported, got {model.base_path}")
        if not os.path.isabs(model.base_path):
            raise invalid(
                f"Expected model {model.name} to have an absolute path or URI; "
                f"got base_path()={model.base_path}"
            )
    for model in config.model_config_list.config:
        platform = _platform(model)
        if platform != PLATFORM:
            raise invalid(f"Model {model.name} requests unsupported platform {platform}")
        models.append(
            ModelConfig(
                name=model.name,
                base_path=model.base_path,
                policy=_policy(model),
                labels=dict(model.version_labels),
            )
        )
    return models


def list_versions(base_path: str) -> dict[int, str]:
    """Version directories under `base_path` ({version: path}); raises OSError if it is unreadable."""
    found: dict[int, str] = {}
    with os.scandir(base_path) as entries:
        for entry in entries:
            if entry.name.isascii() and entry.name.isdigit() and entry.is_dir():
                found[int(entry.name)] = entry.path
    return found
