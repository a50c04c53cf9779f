"""bench/serving's arithmetic: nearest-rank percentiles and the swap's time windows (no timings)."""

from __future__ import annotations

import math

from bench.serving import Sample, percentile, split_windows, timeline, window_figures


def test_nearest_rank_percentile_is_an_observed_value() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100, shuffled order must not matter
    assert percentile(values[::-1], 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 0) == 1.0
    assert math.isnan(percentile([], 99))


def test_samples_fall_into_windows_by_due_time_and_failures_count() -> None:
    samples = [
        Sample(0.5, 0.001, 1),  # lead-in: not steady state
        Sample(1.0, 0.002, 1),
        Sample(9.99, 0.003, 1),
        Sample(10.0, 0.050, 1),
        Sample(11.0, 0.100, None, "RpcError"),
        Sample(12.0, 0.040, 2),
        Sample(12.5, 0.004, 2),
    ]
    windows = split_windows(samples, steady_from=1.0, swap_start=10.0, swap_end=12.0)
    assert [s.due for s in windows.before] == [1.0, 9.99]
    assert [s.due for s in windows.during] == [10.0, 11.0, 12.0]
    assert [s.due for s in windows.after] == [12.5]
    during = window_figures(windows.during, 2.0)
    assert during["failed"] == 1 and during["requests"] == 3
    assert during["answered_by_version"] == {"1": 1, "2": 1}
    assert during["p99_ms"] == 100.0
    bins = timeline(samples[1:], origin=10.0)
    assert [(b["from_s"], b["requests"], b["failed"]) for b in bins] == [
        (-9.0, 1, 0),
        (-1.0, 1, 0),
        (0.0, 1, 0),
        (1.0, 1, 1),
        (2.0, 2, 0),
    ]
