"""Change detectors for a stream of numbers, behind one interface: river's detectors do the test.

The drift tracker (recommender/drift.py) feeds each detector the outcomes of one model version
(1.0 a hit, 0.0 a miss) and needs two things back: whether the hit rate fell, and where the fall
began, in the caller's own time (each observation is tagged `at`), so that drift-aware retraining
can boost the purchases since then. river (https://riverml.xyz) keeps the tests; the wrappers
here add the change point, look only for a fall, and are picked by name (DRIFT_DETECTOR).

Like river's, a detector resets itself on the update after a detection: each detection is
a fresh start, so the next one measures a fall from the new level.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import ClassVar, Generic, TypeVar

from river import drift

Tag = TypeVar("Tag")

# ADWIN keeps the window since the last change; its first observation's tag is the change point.
# River compresses that window into buckets, so the wrapper keeps the tags itself, at most this
# many (a longer window reports its MAX_TAGS-th latest observation, a later and so safer start).
MAX_TAGS = 10_000


class Detector(ABC, Generic[Tag]):
    """Detects a fall in the mean of the numbers given to `update`.

    When `update` detects one, `statistic` is above `threshold` and `change_at` is the tag of
    the fall's first observation, both until the next update; `n` counts the observations.
    """

    name: ClassVar[str]  # the statistic's prefix in alerts and metrics, e.g. page_hinkley_hit_rate
    threshold: float

    def __init__(self) -> None:
        self.n = 0
        self.drift_detected = False
        self.change_at: Tag | None = None

    def update(self, x: float, at: Tag | None = None) -> bool:
        """Add one observation tagged `at`; True when it completes the detection of a fall."""
        self.n += 1
        self.drift_detected = self._update(float(x), at)
        return self.drift_detected

    @abstractmethod
    def _update(self, x: float, at: Tag | None) -> bool: ...

    @property
    @abstractmethod
    def statistic(self) -> float:
        """The test's current value, comparable with `threshold`."""


class PageHinkley(Detector[Tag]):
    """Page-Hinkley test for a fall of the mean (river.drift.PageHinkley, mode "down", no forgetting).

    With m = sum(mean - x - delta), the statistic is m - min(m); a fall is detected when it
    exceeds `threshold` after at least `min_instances` observations. `change_at` is the tag of
    the first observation after m's last low, where the fall the statistic measures began.

    >>> detector = PageHinkley(delta=0.05, threshold=5.0, min_instances=10)
    >>> hits = [0.0, 1.0] * 20  # a steady hit rate of 0.5
    >>> any(detector.update(x, at=t) for t, x in enumerate(hits))
    False
    >>> t = 40
    >>> while not detector.update(0.0, at=t):  # from outcome 40 on, every one misses
    ...     t += 1
    >>> t, detector.change_at, detector.statistic > detector.threshold
    (53, 40, True)
    """

    name = "page_hinkley"

    def __init__(self, *, delta: float, threshold: float, min_instances: int) -> None:
        super().__init__()
        self.threshold = threshold
        # alpha=1: every observation weighs the same, so the mean is the version's hit rate.
        self._test = drift.PageHinkley(
            min_instances=min_instances, delta=delta, threshold=threshold, alpha=1.0, mode="down"
        )

    def _update(self, x: float, at: Tag | None) -> bool:
        if self._test.drift_detected:  # river starts afresh on this update: so does the change point
            self.change_at = None
        self._test.update(x)
        # River keeps -m as `_sum_decrease` and -min(m) as `_max_decrease` (pinned below 0.27 in
        # pyproject; tests/unit/test_detectors.py checks the statistic against its definition).
        if self._test._sum_decrease >= self._test._max_decrease:  # a new low of m
            self.change_at = None
        elif self.change_at is None:
            self.change_at = at
        return self._test.drift_detected

    @property
    def statistic(self) -> float:
        return float(self._test._max_decrease - self._test._sum_decrease)


class ADWIN(Detector[Tag]):
    """ADWIN (river.drift.ADWIN): a window kept as long as its mean is steady, cut at a change.

    A fall is detected when ADWIN cuts its window and the part it keeps has a lower mean than the
    part it drops (a rise is no alarm). `change_at` is the tag of the kept part's first
    observation: the longest recent window ADWIN cannot tell from the new level, cut at one of its
    buckets' bounds, so it often starts some way before the fall. `statistic` is the fall of the
    mean at that cut (0 between detections), so `threshold` is 0.

    >>> detector = ADWIN(delta=0.002, min_instances=30)
    >>> hits = [1.0, 1.0, 0.0, 1.0] * 100  # a steady hit rate of 0.75
    >>> any(detector.update(x, at=t) for t, x in enumerate(hits))
    False
    >>> t = 400
    >>> while not detector.update(0.0, at=t):  # from outcome 400 on, every one misses
    ...     t += 1
    >>> t, detector.change_at, round(detector.statistic, 2)  # the kept part reaches back before 400
    (447, 368, 0.45)
    """

    name = "adwin"
    threshold = 0.0

    def __init__(self, *, delta: float, min_instances: int) -> None:
        super().__init__()
        self._test = drift.ADWIN(delta=delta, grace_period=min_instances)
        self._tags: deque[Tag | None] = deque(maxlen=MAX_TAGS)  # the window's tags, oldest first
        self._fall = 0.0

    def _update(self, x: float, at: Tag | None) -> bool:
        if self._test.drift_detected:  # river starts a new window on this update
            self._tags.clear()
            self.change_at, self._fall = None, 0.0
        width, total = self._test.width, self._test.total
        self._test.update(x)
        self._tags.append(at)
        kept, kept_total = self._test.width, self._test.total
        while len(self._tags) > kept:
            self._tags.popleft()
        if not self._test.drift_detected:
            return False
        dropped = width + 1 - kept
        fall = (total + x - kept_total) / dropped - kept_total / kept if dropped and kept else 0.0
        if fall <= 0:
            return False
        self.change_at, self._fall = self._tags[0], fall
        return True

    @property
    def statistic(self) -> float:
        return self._fall if self.drift_detected else 0.0
