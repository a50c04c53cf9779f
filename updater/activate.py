"""Publish a ready version directory and activate it now, in this process.

A retrain's publish step and the updater's handling of its `published` record, one after the
other, for programs that bring their own SavedModel (the benchmarks, the integration tests)
instead of running `recstream retrain` and waiting for `recstream updater`.
"""

from __future__ import annotations

from pathlib import Path

from recstream.stream.contracts.model_events import ACTIVATED, PUBLISHED, ModelEvent
from recstream.stream.producer import EventProducer
from recstream.stream.registry import ModelRegistry
from recstream.stream.settings import Settings
from recstream.stream.storage import make_client
from recstream.updater.core import Options, Updater
from recstream.updater.errors import UpdaterError


def publish_and_activate(
    settings: Settings, directory: Path, version: int, options: Options | None = None
) -> ModelEvent:
    """Upload `directory` as `version` (atomic: ModelRegistry.upload_version), announce it
    `published`, then validate, stage, load and announce it `activated` as the updater does.

    Returns the `activated` event. Raises UpdaterError with the reason when the updater rejected
    the version or had nothing to do, and the updater's errors (Unavailable, Busy) as they come.
    """
    model = settings.model_name
    registry = ModelRegistry(make_client(settings), settings.models_bucket, model)
    registry.upload_version(directory, version)
    with EventProducer(settings) as producer:
        registry.announce(ModelEvent(PUBLISHED, model, version, {}), producer, settings.model_updates_topic)
        updater = Updater(settings, options, registry=registry, producer=producer)
        try:
            event = updater.process(version)
        finally:
            updater.close()
    if event is None or event.event != ACTIVATED:
        why = f"{event.event}: {event.reason}" if event is not None else "it is no longer `published`"
        raise UpdaterError(f"version {version} of {model} was not activated ({why})")
    return event
