"""The static frontier: what a host that never grows scores at each cost (DESIGN rule 10).

Seed 004's scoreboard asks for "Pareto frontier movement and reliability (median/q25), not
champions": a grown network is compared with the static network of the same cost, not with the
smaller host it started from (Net2Net and TINY compare with the same final size trained from
scratch; dynamic sparse training with a dense net of equal parameters).

On each held-out episode the static arms (`evaluation.STATIC_ARMS`: the task's host and wider
copies of it, always WAIT, on the same data and batches) give points (cost, score) for two costs:
parameters in forward at the end (host plus in-forward seeds) and training FLOPs over the episode.
The frontier at a cost is the best score a static host of at most that cost reached, linearly
interpolated in log cost between the measured widths: the running maximum makes it monotone (a
wider host that scored lower does not lower it: the narrower one was there to pick), and it is
exact at every measured width on the envelope. Past the widest static host it is undefined (null),
never extrapolated. An arm's **frontier gain** on an episode is its score minus the frontier's at
its own cost: above 0, growth bought more than width would have at that price.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl

from esper_lab.contracts import STATIC_ARMS

COSTS = {"params": "params_total", "flops": "train_flops"}  # cost name -> its outcome column
COST_LABELS = {"params": "params in forward", "flops": "training FLOPs"}  # what plots call them
EPISODE = ("cohort", "parent_run", "episode_seed")  # the arms of one held-out episode


def frontier_at(costs: Sequence[float], scores: Sequence[float], at: float) -> float | None:
    """The static frontier through the points (costs, scores), read at cost `at`; None past the
    measured range (the narrowest host is every organism's starting point, so below it is empty)."""
    order = np.argsort(costs, kind="stable")
    x = np.log(np.asarray(costs, dtype=float)[order])
    y = np.maximum.accumulate(np.asarray(scores, dtype=float)[order])
    where = math.log(at)
    if not x[0] - 1e-12 <= where <= x[-1] + 1e-12:
        return None
    return float(np.interp(where, x, y))


def frontier_gains(outcomes: pl.DataFrame) -> pl.DataFrame:
    """`outcomes` (one row per arm and held-out episode, with `score`, `params_total` and
    `train_flops`) with, per cost (`params`, `flops`), `frontier_<cost>` (the static frontier's
    score at the row's cost, on the same episode) and `frontier_gain_<cost>` (score minus it).
    Null where the episode has fewer than two static widths or the cost is past the widest."""
    names = [f"{kind}_{cost}" for cost in COSTS for kind in ("frontier", "frontier_gain")]
    parts = []
    for part in outcomes.partition_by(list(EPISODE), maintain_order=True):
        static = part.filter(pl.col("arm").is_in(STATIC_ARMS)).drop_nulls("score")
        values: dict[str, list] = {name: [] for name in names}
        for row in part.iter_rows(named=True):
            for cost, column in COSTS.items():
                points = static.drop_nulls(column)
                frontier = None
                if points.height >= 2 and row[column] is not None and row["score"] is not None:
                    frontier = frontier_at(points[column].to_list(), points["score"].to_list(), row[column])
                values[f"frontier_{cost}"].append(frontier)
                values[f"frontier_gain_{cost}"].append(None if frontier is None else row["score"] - frontier)
        parts.append(part.with_columns(pl.Series(name, values[name], dtype=pl.Float64) for name in names))
    if not parts:
        return outcomes.with_columns(pl.lit(None, dtype=pl.Float64).alias(name) for name in names)
    return pl.concat(parts)
