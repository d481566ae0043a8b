"""Exit gates judged on held-out, paired evaluation episodes, each with its 95% CI.

`held_out(store)` is the frame every verdict reads: one row per evaluation episode and arm, with
the test split's metric signed so that higher is better (`score`), the gain over the static host
on the same episode (`gain`), the frontier gains (`frontier`), and conv_heavy's share of the
in-forward seed params at the end.

Which arm: outcome gates read the trained policy played greedily (`ppo_greedy`, what one would
deploy); behaviour gates read it sampled (`ppo_sampled`, the distribution PPO trains), so a head
PPO keeps open is visible even where its argmax never picks it; the no-collapse gates read the
WAIT share of both, since either may be stuck where the other is not. Each gate is PASS, FAIL or
INCONCLUSIVE (`stats.verdict`); a gate with several parts combines them (`stats.combine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from esper_lab.config import TASKS
from esper_lab.contracts import CONTROL, LEARNED_ARMS, SAMPLED, Op, RunKind, RunStatus, roi
from esper_lab.experiments.frontier import frontier_gains
from esper_lab.experiments.stats import Estimate
from esper_lab.telemetry import Store


@dataclass(frozen=True)
class Gate:
    name: str
    cohort: str
    verdict: str  # PASS | FAIL | INCONCLUSIVE
    evidence: str


def held_out(store: Store) -> pl.DataFrame:
    """Every completed evaluation episode with `score` (on the test split, which nothing the
    policy sees reads: accuracy in points, or minus the loss), `auc` (the same over the episode:
    the mean of the test reads, the area under the test curve per step), `val_score` (the whole
    validation split at the end), `params_total` (host plus in-forward seed params at the end),
    `gain` (score minus the static host's on the same cohort, seed and episode), the frontier
    gains against static hosts of every width (`frontier.frontier_gains`), `conv_heavy_share` (of
    in-forward seed params at the end), `roi` (gain per 1,000 in-forward seed params, where there
    are any), the oscillation counts, Emrakul's (`Store.decay_counts`), the adjacency economy's
    (`Store.adjacency_counts`), and the fossils: how many, how many were kept to the end, and their
    mean last measured contribution (in points, as `gain`)."""
    outcomes = store.episode_outcomes(kind=RunKind.EVAL)
    if outcomes.is_empty():
        return outcomes
    accuracy = {name: task.metric == "accuracy" for name, task in TASKS.items()}
    is_acc = pl.col("task").replace_strict(accuracy, return_dtype=pl.Boolean)
    signed = lambda column: pl.when(is_acc).then(pl.col(column) * 100).otherwise(-pl.col(column))
    outcomes = outcomes.with_columns(
        score=signed("test_metric"),
        auc=signed("test_metric_mean"),
        val_score=signed("final_metric"),
        params_total=pl.col("host_params") + pl.col("forward_params"),
        conv_heavy_share=pl.when(pl.col("forward_params") > 0).then(pl.col("conv_heavy_params") / pl.col("forward_params")).otherwise(0.0),
    )
    keys = ["cohort", "parent_run", "episode_seed"]
    static = outcomes.filter(pl.col("arm") == CONTROL).select(*keys, pl.col("score").alias("static_score"))
    oscillation = store.oscillation().select("run_id", "env", "episode", "regerminations", "alpha_reversals", "level_flips")
    decay = store.decay_counts().drop("cohort")
    adjacency = store.adjacency_counts().drop("cohort")
    episode = ["run_id", "env", "episode"]
    fossils = (
        store.fossils().group_by(episode).agg(fossils=pl.len(), fossils_kept=pl.col("kept").sum(), fossil_contribution=pl.col("contribution").mean())
    )
    return (
        frontier_gains(outcomes)
        .join(static, on=keys, how="left")
        .with_columns(gain=pl.col("score") - pl.col("static_score"))
        .with_columns(roi=pl.when(pl.col("forward_params") > 0).then(roi(pl.col("gain"), pl.col("forward_params"))))
        .join(oscillation, on=episode, how="left")
        .join(decay, on=episode, how="left")
        .join(adjacency, on=episode, how="left")
        .join(fossils, on=episode, how="left")
        .with_columns(
            pl.col("fossils", "fossils_kept").fill_null(0),
            fossil_contribution=pl.when(is_acc).then(pl.col("fossil_contribution") * 100).otherwise(pl.col("fossil_contribution")),
        )
    )


def arm(frame: pl.DataFrame, cohort: str, name: str) -> pl.DataFrame:
    return frame.filter((pl.col("cohort") == cohort) & (pl.col("arm") == name))


def per_seed(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """One row per training seed: the mean of `column` (a run-level statistic's sample)."""
    return frame.group_by("seed").agg(pl.col(column).mean()).sort("seed")


def say(e: Estimate | None) -> str:
    return "no episodes" if e is None else str(e)


@dataclass(frozen=True)
class Evidence:
    """What gates read, as frames (so a gate is a pure function of them)."""

    outcomes: pl.DataFrame  # `held_out`
    usage: pl.DataFrame  # cohort, arm, seed, grow_shrink_share, wait_share: both ppo arms' held-out decisions
    entropy: pl.DataFrame  # cohort, seed, kept: op-head entropy, last over first training episode
    heads: pl.DataFrame  # cohort, head, open_entropy: the sampled arm's held-out decisions with >= 2 legal choices
    probes: pl.DataFrame = field(default_factory=pl.DataFrame)  # `Store.probes` of the held-out runs, with their arm (decay studies)
    curves: pl.DataFrame = field(default_factory=pl.DataFrame)  # `Store.learning_curve` of the training runs, with their seed
    ops: pl.DataFrame = field(default_factory=pl.DataFrame)  # cohort, seed, op_name, chosen: the sampled arm's held-out non-WAIT decisions


def evidence(store: Store) -> Evidence:
    runs = store.runs().filter(pl.col("status") == RunStatus.COMPLETED)
    ppo = runs.filter((pl.col("kind") == RunKind.EVAL) & pl.col("arm").is_in(LEARNED_ARMS)).select("run_id", "arm", "seed")
    sampled = ppo.filter(pl.col("arm") == SAMPLED).drop("arm")
    usage = store.grow_shrink_share().join(ppo, on="run_id").select("cohort", "arm", "seed", "grow_shrink_share", "wait_share")
    heads = (
        store.policy_entropy()
        .join(sampled, on="run_id")
        .filter(pl.col("open_decisions") > 0)
        .group_by("cohort", "head")
        .agg(open_entropy=(pl.col("open_entropy") * pl.col("open_decisions")).sum() / pl.col("open_decisions").sum())
    )
    training = runs.filter(pl.col("kind") == RunKind.PPO).select("run_id", "seed")
    curves = store.learning_curve().join(training, on="run_id").drop_nulls("entropy_op").sort("episode")
    entropy = (
        curves.group_by("cohort", "run_id", "seed")
        .agg(first=pl.col("entropy_op").first(), last=pl.col("entropy_op").last())
        .filter(pl.col("first") > 0)
        .select("cohort", "seed", kept=pl.col("last") / pl.col("first"))
    )
    probes = store.probes().join(runs.filter(pl.col("kind") == RunKind.EVAL).select("run_id", "arm"), on="run_id")
    ops = (
        store.lifecycle_op_counts()
        .join(sampled, on="run_id")
        .filter(pl.col("op") != int(Op.WAIT))
        .group_by("cohort", "seed", "op_name")
        .agg(pl.col("chosen").sum())
    )
    return Evidence(held_out(store), usage, entropy, heads, probes, curves, ops)
