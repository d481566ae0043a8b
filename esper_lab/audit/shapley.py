"""Shapley credit over a small set of players (seed 003 §5.3): exact, Monte Carlo and leave-one-out.

A value function maps each coalition (a frozenset of players) to a number. The exact value

    phi_i = sum over S in C minus {i} of |S|! (n - |S| - 1)! / n! * (v(S + {i}) - v(S))

needs all 2^n coalitions: an oracle for n <= 4. Permutation sampling (Castro, Gomez & Tejada
2009) estimates the same values from random orders of the players at n evaluations per order,
and leave-one-out, v(C) - v(C minus {i}), is the cheap counterfactual the online probe resembles.
Nothing here knows what a player is: the audit's players are seed slots.

The exact formula works in whatever numbers it is given: `Fraction` values give exact `Fraction`
credits (the efficiency axiom then holds with `==`), floats give floats.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from fractions import Fraction

import numpy as np
from scipy import stats

Coalition = frozenset
ValueTable = Mapping[frozenset, float]

CONFIDENCE = 0.95


def coalitions(players: Iterable[Hashable]) -> list[frozenset]:
    """Every subset of `players`, smallest first (the empty coalition first, the grand one last)."""
    players = list(players)
    return [frozenset(c) for size in range(len(players) + 1) for c in itertools.combinations(players, size)]


def shapley_weight(size: int, n: int) -> Fraction:
    """|S|! (n - |S| - 1)! / n!: the share of player orders in which exactly the players of a
    coalition of `size` come before a given player."""
    return Fraction(math.factorial(size) * math.factorial(n - size - 1), math.factorial(n))


def exact_shapley(values: ValueTable, players: Sequence[Hashable]) -> dict:
    """Each player's exact Shapley value from a table holding v of every coalition of `players`."""
    players = list(players)
    missing = [sorted(c, key=str) for c in coalitions(players) if c not in values]
    if missing:
        raise ValueError(f"the value table lacks {len(missing)} coalition(s) of {players}, e.g. {missing[0]}")
    n = len(players)
    phi = {}
    for i in players:
        others = [p for p in players if p != i]
        phi[i] = sum(_weighted(shapley_weight(len(s), n), values[s | {i}] - values[s]) for s in coalitions(others))
    return phi


def _weighted(weight: Fraction, difference):
    """weight * difference, exact for Fraction (and int) differences, a float otherwise."""
    return weight * difference if isinstance(difference, Fraction | int) else float(weight) * difference


def leave_one_out(values: ValueTable, players: Sequence[Hashable]) -> dict:
    """v(C) - v(C minus {i}) per player: what removing one seed from the full set costs."""
    grand = frozenset(players)
    return {i: values[grand] - values[grand - {i}] for i in players}


def monte_carlo_shapley(value: Callable[[frozenset], float], players: Sequence[Hashable], permutations: int, seed: int = 0) -> tuple[dict, int]:
    """Permutation-sampling estimate from `permutations` random player orders: each order adds the
    players one at a time and credits each with its marginal gain. Returns the estimates and how
    many distinct coalitions were evaluated (what a retraining audit would have paid for)."""
    if not (isinstance(permutations, int) and permutations >= 1):
        raise ValueError(f"permutations={permutations!r} must be an integer >= 1")
    players = list(players)
    rng = np.random.default_rng(seed)
    cache: dict[frozenset, float] = {}

    def v(coalition: frozenset) -> float:
        if coalition not in cache:
            cache[coalition] = value(coalition)
        return cache[coalition]

    totals = dict.fromkeys(players, 0.0)
    for _ in range(permutations):
        before, coalition = v(frozenset()), frozenset()
        for index in rng.permutation(len(players)):
            coalition = coalition | {players[index]}
            after = v(coalition)
            totals[players[index]] += after - before
            before = after
    return {i: total / permutations for i, total in totals.items()}, len(cache)


def error_curve(
    values: ValueTable, players: Sequence[Hashable], samples: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128), repeats: int = 200, seed: int = 0
) -> list[dict]:
    """How far permutation sampling lands from the exact values, per number of sampled orders:
    over `repeats` independent estimates, the mean and the 95th percentile of the largest
    per-player absolute error, and the mean number of distinct coalitions evaluated; the
    leave-one-out error on the same table is one row with `samples` = 0."""
    exact = exact_shapley(values, players)
    lookup = values.__getitem__
    rows = []
    for m in samples:
        errors, evaluations = [], []
        for r in range(repeats):
            estimate, evaluated = monte_carlo_shapley(lookup, players, m, seed=seed * 1_000_003 + m * 7_919 + r)
            errors.append(max(abs(estimate[i] - exact[i]) for i in players))
            evaluations.append(evaluated)
        rows.append(
            {
                "method": "monte_carlo",
                "samples": m,
                "coalitions_evaluated": float(np.mean(evaluations)),
                "max_abs_error_mean": float(np.mean(errors)),
                "max_abs_error_p95": float(np.quantile(errors, 0.95)),
            }
        )
    loo = leave_one_out(values, players)
    loo_error = max(abs(loo[i] - exact[i]) for i in players)
    rows.append(
        {
            "method": "leave_one_out",
            "samples": 0,
            "coalitions_evaluated": float(len(players) + 1),
            "max_abs_error_mean": loo_error,
            "max_abs_error_p95": loo_error,
        }
    )
    return rows


def t_interval(samples: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): a Student-t interval for the mean of a few independent replicates. The
    audit's replicates are few (R = 3 by default), where a percentile bootstrap is narrower than
    the truth (see `experiments.stats.MIN_CI_EPISODES`); t's heavier tails are the honest choice."""
    x = np.asarray(samples, dtype=float)
    if x.size < 2:
        raise ValueError(f"an interval needs at least 2 replicates, got {x.size}")
    mean, half = float(x.mean()), float(stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half
