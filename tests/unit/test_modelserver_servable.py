"""A real loaded version (a tiny SavedModel): the reference count an unload waits on, with its bound."""

from __future__ import annotations

from pathlib import Path

from saved_models import build_model

from recstream.deploy.modelserver.servable import Servable


def test_wait_idle_gives_up_after_its_timeout_while_a_request_holds_the_version(tmp_path: Path) -> None:
    servable = Servable("rec", 1, str(build_model(tmp_path / "1", 1)))
    assert servable.wait_idle(0.05)
    servable.acquire()
    assert not servable.wait_idle(0.05)  # a stuck request: the unload goes on without it
    servable.release()
    assert servable.wait_idle(0.05)
