"""Verdicts with uncertainty: the cluster bootstrap's coverage, paired differences, gate logic."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from esper_lab.experiments.stats import FAIL, INCONCLUSIVE, PASS, Estimate, bootstrap, combine, paired, paired_estimate, verdict


@pytest.mark.slow
def test_bootstrap_ci_covers_a_known_difference_at_its_nominal_rate():
    """200 synthetic studies (5 seeds x 12 episodes of paired differences with a seed-level
    effect, as a pack's evaluation is): the 95% CI holds the true mean in >= 90% of them."""
    rng = np.random.default_rng(0)
    true, covered = 1.0, 0
    for _ in range(200):
        seeds = np.repeat(np.arange(5), 12)
        diffs = true + rng.normal(0, 0.5, 5)[seeds] + rng.normal(0, 1.0, seeds.size)
        e = bootstrap(diffs, seeds, resamples=500)
        covered += e.low <= true <= e.high
    assert covered >= 180, covered


def test_bootstrap_reports_the_statistic_and_sample_sizes():
    e = bootstrap([1.0, 2.0, 3.0, 4.0], clusters=[0, 0, 1, 1], statistic=np.median)
    assert (e.value, e.n, e.clusters) == (2.5, 4, 2) and e.low <= e.value <= e.high
    with pytest.raises(ValueError, match="empty"):
        bootstrap([])


def test_paired_differences_match_episodes_on_seed_and_episode_seed():
    a = pl.DataFrame({"seed": [0, 0, 1], "parent_run": ["r0", "r0", "r1"], "episode_seed": [10, 11, 20], "score": [5.0, 6.0, 7.0]})
    b = pl.DataFrame({"seed": [0, 1, 1], "parent_run": ["r0", "r1", "r1"], "episode_seed": [10, 20, 21], "score": [4.0, 8.0, 0.0]})
    assert paired(a, b, "score").to_dicts() == [
        {"seed": 0, "parent_run": "r0", "episode_seed": 10, "diff": 1.0},
        {"seed": 1, "parent_run": "r1", "episode_seed": 20, "diff": -1.0},
    ]
    assert paired_estimate(a, b.filter(seed=2), "score") is None


@pytest.mark.parametrize(
    "low,high,threshold,higher,expected",
    [
        (0.2, 0.5, 0.1, True, PASS),
        (0.0, 0.1, 0.1, True, FAIL),
        (0.05, 0.3, 0.1, True, INCONCLUSIVE),
        (0.0, 0.0, 0.0, False, PASS),
        (0.3, 0.6, 0.25, False, FAIL),
        (0.1, 0.4, 0.25, False, INCONCLUSIVE),
    ],
)
def test_a_verdict_needs_the_whole_interval_on_one_side(low, high, threshold, higher, expected):
    assert verdict(Estimate((low + high) / 2, low, high, 10, 5), threshold, higher) == expected


def test_a_gate_of_several_parts_fails_on_any_fail_and_passes_only_when_all_pass():
    assert combine([PASS, PASS]) == PASS
    assert combine([PASS, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([INCONCLUSIVE, FAIL]) == FAIL
    assert verdict(None, 0.0) == INCONCLUSIVE


def test_no_verdict_from_fewer_than_five_seeds_or_a_handful_of_episodes():
    clear = Estimate(1.0, 0.9, 1.1, 60, 5)
    assert verdict(clear, 0.0) == PASS
    assert verdict(Estimate(1.0, 0.9, 1.1, 60, 4), 0.0) == INCONCLUSIVE  # DESIGN rule 10: >= 5 seeds
    assert verdict(Estimate(1.0, 0.9, 1.1, 3, 5), 0.0) == INCONCLUSIVE
    assert "too few" in str(Estimate(1.0, 1.0, 1.0, 2, 1)) and "[" in str(clear)


def test_spearman_and_a_frame_level_bootstrap():
    from esper_lab.experiments.stats import bootstrap_rows, spearman

    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 400])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 2])) == pytest.approx(-np.sqrt(3) / 2)
    rng = np.random.default_rng(1)
    rows = [{"seed": s, "weight": w, "params": 1000 - 100 * w + rng.normal(0, 50)} for s in range(5) for w in (0, 1, 2, 4) for _ in range(6)]
    rho = bootstrap_rows(pl.DataFrame(rows), lambda f: spearman(f["weight"].to_numpy(), f["params"].to_numpy()), resamples=300)
    assert rho.value < -0.8 and rho.high < 0 and rho.clusters == 5 and verdict(rho, 0.0, higher_passes=False) == PASS
