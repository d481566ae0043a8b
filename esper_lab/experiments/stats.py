"""Verdicts with uncertainty: paired differences, cluster-bootstrap confidence intervals, gates.

A result is a paired comparison: two arms (say the trained policy and the static host) play the
same held-out evaluation episodes, and each episode gives one difference. Episodes of one
training seed share that seed's policy, so they are not independent: the bootstrap resamples
seeds (clusters) with replacement, then episodes within each drawn seed (a two-stage cluster
bootstrap), and reads the CI from the percentiles of the statistic over the resamples.

A gate compares a statistic with a threshold: PASS when the whole 95% CI is on the passing side,
FAIL when it is all on the failing side, INCONCLUSIVE when it straddles the threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

# A percentile bootstrap of a handful of values is narrower than the truth (it never reaches past
# the sample's extremes): below this many values an estimate prints without an interval ...
MIN_CI_EPISODES = 5
# ... and below this many training seeds no verdict is given (DESIGN rule 10: >= 5 seeds).
MIN_SEEDS = 5
BOOTSTRAP_RESAMPLES = 2000  # enough for stable 2.5/97.5 percentiles (Efron & Tibshirani 1993, ch. 13)
CONFIDENCE = 0.95
PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


def median(values) -> float:
    return float(np.median(values))


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap CI and the sample behind it."""

    value: float
    low: float
    high: float
    n: int  # observations (episodes)
    clusters: int  # independent units resampled (training seeds)

    def __str__(self) -> str:
        if self.n < MIN_CI_EPISODES:
            return f"{self.value:+.4g} (n={self.n}: too few for an interval)"
        return f"{self.value:+.4g} [{self.low:+.4g}, {self.high:+.4g}] (n={self.n}, seeds={self.clusters})"


def bootstrap(
    values: Sequence[float],
    clusters: Sequence | None = None,
    statistic: Callable = np.mean,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """`statistic` of `values` with a percentile CI from a two-stage cluster bootstrap (clusters,
    then values within each drawn cluster); without `clusters` every value is its own cluster."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap of an empty sample")
    labels = np.arange(values.size) if clusters is None else np.asarray(clusters)
    if labels.shape != values.shape:
        raise ValueError(f"clusters has shape {labels.shape}, values {values.shape}")
    groups = [values[labels == label] for label in np.unique(labels)]
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for r in range(resamples):
        picked = rng.integers(len(groups), size=len(groups))
        sample = [groups[g][rng.integers(len(groups[g]), size=len(groups[g]))] for g in picked]
        draws[r] = statistic(np.concatenate(sample))
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Estimate(float(statistic(values)), float(low), float(high), int(values.size), len(groups))


# Two arms of one training run pair on its held-out episodes: the same parent run (two training
# runs of one cohort and seed, say an encoder A/B, are two pairings) and the same episode seed.
SAME_EPISODE = ("seed", "parent_run", "episode_seed")
# Two cohorts pair on the training seed and episode seed their evaluations share.
SAME_SEED_EPISODE = ("seed", "episode_seed")


def bootstrap_rows(
    frame: pl.DataFrame,
    statistic: Callable[[pl.DataFrame], float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """A statistic of a whole frame (a correlation, say) with the same two-stage cluster bootstrap:
    resample training seeds, then rows within each drawn seed."""
    groups = frame.partition_by("seed")
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for r in range(resamples):
        picked = [groups[g] for g in rng.integers(len(groups), size=len(groups))]
        draws[r] = statistic(pl.concat([g[rng.integers(g.height, size=g.height)] for g in picked]))
    tail = (1 - confidence) / 2
    low, high = np.nanquantile(draws, [tail, 1 - tail])
    return Estimate(float(statistic(frame)), float(low), float(high), frame.height, len(groups))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    rx, ry = (pl.Series(v).rank("average").to_numpy() for v in (x, y))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def paired(a: pl.DataFrame, b: pl.DataFrame, column: str, on: Sequence[str] = SAME_EPISODE) -> pl.DataFrame:
    """Per held-out episode, `column` of `a` minus `column` of `b` on the same `on` keys: the
    frame `on` + `diff`. Episodes either side lacks are left out."""
    on = list(on)
    left = a.select(*on, pl.col(column).alias("a"))
    right = b.select(*on, pl.col(column).alias("b"))
    return left.join(right, on=on).select(*on, (pl.col("a") - pl.col("b")).alias("diff")).sort(on)


def paired_estimate(
    a: pl.DataFrame, b: pl.DataFrame, column: str, statistic: Callable = np.mean, on: Sequence[str] = SAME_EPISODE
) -> Estimate | None:
    """The bootstrap estimate of `statistic` over the paired differences, clustered by training
    seed; None when the two sides share no episode (or seed, with `on=("seed",)`)."""
    diffs = paired(a, b, column, on)
    if diffs.is_empty():
        return None
    return bootstrap(diffs["diff"].to_numpy(), diffs["seed"].to_numpy(), statistic)


def estimate(frame: pl.DataFrame, column: str, statistic: Callable = np.mean) -> Estimate | None:
    """The bootstrap estimate of `statistic` of one column, clustered by training seed."""
    frame = frame.drop_nulls(column)
    if frame.is_empty():
        return None
    return bootstrap(frame[column].to_numpy(), frame["seed"].to_numpy(), statistic)


def verdict(estimate: Estimate | None, threshold: float, higher_passes: bool = True) -> str:
    """PASS / FAIL / INCONCLUSIVE for "statistic > threshold" (`higher_passes`) or "statistic <=
    threshold": PASS when the whole CI satisfies it, FAIL when none of it does; INCONCLUSIVE too
    from fewer than `MIN_SEEDS` training seeds."""
    if estimate is None or estimate.clusters < MIN_SEEDS or estimate.n < MIN_CI_EPISODES:
        return INCONCLUSIVE
    if higher_passes:
        return PASS if estimate.low > threshold else FAIL if estimate.high <= threshold else INCONCLUSIVE
    return PASS if estimate.high <= threshold else FAIL if estimate.low > threshold else INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """All parts of a gate must pass: any FAIL fails it, else any INCONCLUSIVE leaves it open."""
    if FAIL in verdicts:
        return FAIL
    return INCONCLUSIVE if INCONCLUSIVE in verdicts else PASS
