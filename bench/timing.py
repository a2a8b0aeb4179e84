"""Medians over repeated runs after a warm-up, with a time budget per measurement."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of one case.

    Attributes:
        median: median of the timed runs.
        best: fastest timed run.
        runs: number of timed runs (fewer than asked when the budget ran out).
        warmup: the untimed first run.
    """

    median: float
    best: float
    runs: int
    warmup: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def measure(fn: Callable[[], object], *, repeats: int, budget_s: float) -> Timing:
    """Run ``fn`` once to warm up, then up to ``repeats`` timed runs.

    Stops early (after at least one timed run) once warm-up plus timed runs exceed ``budget_s``,
    so the slow cases (VGG16 SmoothGrad at batch 8) do not take an hour each.
    """
    start = time.perf_counter()
    fn()
    warmup = time.perf_counter() - start
    times: list[float] = []
    spent = warmup
    while len(times) < max(1, repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
        if spent > budget_s:
            break
    return Timing(statistics.median(times), min(times), len(times), warmup)
