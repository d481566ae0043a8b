"""Side-by-side timing: A and B alternate in one process, and the ratio is taken pair by pair.

Alternating A, B, A, B ... keeps slow drifts of a shared, noisy 2-core machine out of the ratio;
the median of the per-pair ratios is what a benchmark reports, with its spread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Pairing:
    a_seconds: float  # median
    b_seconds: float  # median
    ratio: float  # median of per-pair A/B
    ratio_low: float  # 10th percentile
    ratio_high: float  # 90th percentile
    pairs: int


def seconds(work: Callable[[], object]) -> float:
    """Wall time of `work()`; a `work` that times its own region (leaving set-up out) returns
    those seconds as a float instead."""
    start = time.perf_counter()
    result = work()
    elapsed = time.perf_counter() - start
    return result if isinstance(result, float) else elapsed


def pair(a: Callable[[], object], b: Callable[[], object], pairs: int = 15, warmup: int = 2) -> Pairing:
    """Time `a` against `b`, alternating, after `warmup` untimed rounds of each."""
    for _ in range(warmup):
        a(), b()
    times_a, times_b = [], []
    for _ in range(pairs):
        times_a.append(seconds(a))
        times_b.append(seconds(b))
    ratios = sorted(x / y for x, y in zip(times_a, times_b))
    decile = max(len(ratios) // 10, 0)
    return Pairing(
        a_seconds=statistics.median(times_a),
        b_seconds=statistics.median(times_b),
        ratio=statistics.median(ratios),
        ratio_low=ratios[decile],
        ratio_high=ratios[-1 - decile],
        pairs=pairs,
    )
