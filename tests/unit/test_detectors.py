"""The change detectors' interface over river: examples, Page-Hinkley's definition, falls only."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from river import drift

from recstream.recommender import detectors
from recstream.recommender.detectors import ADWIN, PageHinkley
from recstream.recommender.drift import DriftConfig
from recstream.stream.settings import DRIFT_DETECTORS, SettingsError, default_settings, load_settings


def test_the_docstring_examples_run() -> None:
    result = doctest.testmod(detectors, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


def _page_hinkley(xs: list[float], delta: float) -> list[tuple[float, int | None]]:
    """The test as drift.py had it by hand: PH = m - min(m), m = sum(mean - x - delta); the change
    point is the first observation after m's last low."""
    mean = m = low = 0.0
    change: int | None = None
    out = []
    for n, x in enumerate(xs, start=1):
        mean += (x - mean) / n
        m += mean - x - delta
        if m <= low:
            low, change = m, None
        elif change is None:
            change = n - 1
        out.append((m - low, change))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_page_hinkley_keeps_the_hand_written_statistic_and_change_point(seed: int) -> None:
    rng = np.random.default_rng(seed)
    xs = [float(x) for x in np.concatenate([rng.random(400) < 0.4, rng.random(200) < 0.05])]
    detector: PageHinkley[int] = PageHinkley(delta=0.05, threshold=15, min_instances=50)
    for t, (x, (statistic, change)) in enumerate(zip(xs, _page_hinkley(xs, 0.05), strict=True)):
        detected = detector.update(x, at=t)
        assert detector.statistic == pytest.approx(statistic, abs=1e-9)
        assert detector.change_at == change
        assert detected == (t >= 49 and statistic > 15)
        if detected:
            break
    assert detected and t >= 400  # the fall, not the steady part, is what it found
    # Like river's, it starts afresh on the next update: the statistic measures from the new level.
    rest = xs[t + 1 :]
    for x, (statistic, _) in zip(rest[:100], _page_hinkley(rest[:100], 0.05), strict=True):
        detector.update(x)
        assert detector.statistic == pytest.approx(statistic, abs=1e-9)
    assert detector.n == t + 1 + min(100, len(rest))


def test_page_hinkley_ignores_a_rise() -> None:
    detector: PageHinkley[int] = PageHinkley(delta=0.05, threshold=5, min_instances=10)
    assert not any(detector.update(float(x)) for x in [0.0] * 100 + [1.0] * 200)


def test_adwin_reports_a_fall_with_the_start_of_its_kept_window_and_ignores_a_rise() -> None:
    rng = np.random.default_rng(4)
    rise = [float(x) for x in np.concatenate([rng.random(300) < 0.2, rng.random(300) < 0.8])]
    river_adwin = drift.ADWIN(delta=0.002, grace_period=50)
    changes = 0
    for x in rise:
        river_adwin.update(x)
        changes += river_adwin.drift_detected
    assert changes  # river sees the change
    detector: ADWIN[int] = ADWIN(delta=0.002, min_instances=50)
    assert not any(detector.update(x, at=t) for t, x in enumerate(rise))  # but no fall

    fall = [float(x) for x in np.concatenate([rng.random(300) < 0.8, rng.random(300) < 0.2])]
    detector = ADWIN(delta=0.002, min_instances=50)
    found = next(t for t, x in enumerate(fall) if detector.update(x, at=t))
    assert 300 < found < 400
    kept = detector._test.width  # river's window after the cut: the change point is its first outcome
    assert detector.change_at == found - kept + 1 and detector.change_at <= 300
    before, after = np.mean(fall[: detector.change_at]), np.mean(fall[detector.change_at : found + 1])
    assert detector.statistic == pytest.approx(before - after) and detector.statistic > detector.threshold
    detector.update(0.0, at=found + 1)  # the next update starts afresh
    assert (detector.drift_detected, detector.statistic, detector.change_at) == (False, 0.0, None)


def test_every_setting_value_names_a_detector_and_a_bad_one_names_the_variable() -> None:
    names = set()
    for value in DRIFT_DETECTORS:
        config = DriftConfig.from_settings(
            load_settings({"DRIFT_DETECTOR": value}, environ={}, use_stack_env=False)
        )
        names.add(config.new_detector().name)
    assert names == {"page_hinkley", "adwin"}
    assert default_settings().drift_detector == "page-hinkley"
    with pytest.raises(SettingsError, match="DRIFT_DETECTOR='cusum': expected page-hinkley or adwin"):
        load_settings({"DRIFT_DETECTOR": "cusum"}, environ={}, use_stack_env=False)
