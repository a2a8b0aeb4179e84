"""Medians over repeated runs after a warm-up, within a time budget per measurement."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

MIN_SECONDS = (
    5.0  # default: fast cases keep repeating this long, so their median rests on more runs
)
MAX_FACTOR = 10  # ... but never more than this many times ``repeats``


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of one case.

    Attributes:
        median: median of the timed runs.
        best: fastest timed run.
        runs: number of timed runs.
        warmup: the untimed first run.
    """

    median: float
    best: float
    runs: int
    warmup: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def measure(
    fn: Callable[[], object], *, repeats: int, budget_s: float, min_s: float = MIN_SECONDS
) -> Timing:
    """Run ``fn`` once to warm up, then time it.

    At least ``repeats`` timed runs, more (up to ``MAX_FACTOR * repeats``) while the cell has
    used less than ``min_s`` seconds; but after ``budget_s`` it stops at once (after at least one
    timed run), so the slow cases (VGG16 SmoothGrad at batch 8) do not take an hour each.
    """
    start = time.perf_counter()
    fn()
    spent = time.perf_counter() - start
    warmup = spent
    times: list[float] = []
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
        enough = len(times) >= repeats and spent >= min_s
        if spent > budget_s or enough or len(times) >= MAX_FACTOR * repeats:
            break
    return Timing(statistics.median(times), min(times), len(times), warmup)
