"""Exit gates judged on held-out, paired evaluation episodes, each with its 95% CI.

`held_out(store)` is the frame every verdict reads: one row per evaluation episode and arm, with
the task metric signed so that higher is better (`score`), the gain over the static host on the
same episode (`gain`), and conv_heavy's share of the in-forward seed params at the end.

Which arm: outcome gates read the trained policy played greedily (`ppo_greedy`, what one would
deploy); behaviour gates read it sampled (`ppo_sampled`, the distribution PPO trains), so a head
PPO keeps open is visible even where its argmax never picks it. Each gate is PASS, FAIL or
INCONCLUSIVE (`stats.verdict`); a gate with several parts combines them (`stats.combine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from esper_lab.config import LADDERS, TASKS
from esper_lab.experiments.evaluation import CONTROL
from esper_lab.experiments.packs import Pack
from esper_lab.experiments.stats import (
    FAIL,
    PASS,
    SAME_SEED_EPISODE,
    Estimate,
    bootstrap_rows,
    combine,
    estimate,
    median,
    paired_estimate,
    spearman,
    verdict,
)
from esper_lab.telemetry import Store

GREEDY, SAMPLED = "ppo_greedy", "ppo_sampled"
GROW_SHRINK_GATE = 0.10  # seed 002 gate 1: GROW/SHRINK in >= 10% of non-WAIT decisions
ENTROPY_KEPT = 0.5  # gate 3: the op head keeps at least half its first-episode entropy (no collapse)
MAX_LEVEL_CHANGE_RATE = 0.5  # gate 4: at most one level change every other step, on average
MAX_REGERMINATIONS = 0.25  # gate 4 (and seed 004 Stage 1): prune -> re-germinate cycles per episode
LADDER_NAMES = frozenset(b.name.lower() for b in LADDERS)


@dataclass(frozen=True)
class Gate:
    name: str
    cohort: str
    verdict: str  # PASS | FAIL | INCONCLUSIVE
    evidence: str


def held_out(store: Store) -> pl.DataFrame:
    """Every completed evaluation episode with `score` (accuracy, or minus the validation loss),
    `gain` (score minus the static host's on the same cohort, seed and episode; 100x for accuracy:
    points), `conv_heavy_share` (of in-forward seed params at the end), `roi` (gain per 1,000
    in-forward seed params, where there are any) and the oscillation counts."""
    outcomes = store.episode_outcomes(kind="eval")
    if outcomes.is_empty():
        return outcomes
    accuracy = {name: task.metric == "accuracy" for name, task in TASKS.items()}
    is_acc = pl.col("task").replace_strict(accuracy, return_dtype=pl.Boolean)
    outcomes = outcomes.with_columns(
        score=pl.when(is_acc).then(pl.col("final_metric") * 100).otherwise(-pl.col("final_metric")),
        conv_heavy_share=pl.when(pl.col("forward_params") > 0)
        .then(pl.col("conv_heavy_params") / pl.col("forward_params")).otherwise(0.0),
    )
    keys = ["cohort", "parent_run", "episode_seed"]
    static = outcomes.filter(pl.col("arm") == CONTROL).select(*keys, pl.col("score").alias("static_score"))
    oscillation = store.oscillation().select("run_id", "env", "episode", "regerminations", "alpha_reversals", "level_flips")
    return (
        outcomes.join(static, on=keys, how="left")
        .with_columns(gain=pl.col("score") - pl.col("static_score"))
        .with_columns(roi=pl.when(pl.col("forward_params") > 0).then(pl.col("gain") / pl.col("forward_params") * 1000))
        .join(oscillation, on=["run_id", "env", "episode"], how="left")
    )


def arm(frame: pl.DataFrame, cohort: str, name: str) -> pl.DataFrame:
    return frame.filter((pl.col("cohort") == cohort) & (pl.col("arm") == name))


def per_seed(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """One row per training seed: the mean of `column` (a run-level statistic's sample)."""
    return frame.group_by("seed").agg(pl.col(column).mean()).sort("seed")


def _has_ladder(pack: Pack, cohort: str) -> bool:
    return bool(LADDER_NAMES & {str(b).lower() for b in pack.cohorts[cohort].get("blueprints", [])})


def _say(e: Estimate | None) -> str:
    return "no episodes" if e is None else str(e)


@dataclass(frozen=True)
class Evidence:
    """What gates read, as frames (so a gate is a pure function of them)."""

    outcomes: pl.DataFrame  # `held_out`
    usage: pl.DataFrame  # cohort, seed, grow_shrink_share, wait_share: the sampled arm's held-out decisions
    entropy: pl.DataFrame  # cohort, seed, kept: op-head entropy, last over first training episode
    heads: pl.DataFrame  # cohort, head, open_entropy: the sampled arm's held-out decisions with >= 2 legal choices


def evidence(store: Store) -> Evidence:
    runs = store.runs().filter(pl.col("status") == "completed")
    sampled = runs.filter((pl.col("kind") == "eval") & (pl.col("arm") == SAMPLED)).select("run_id", "seed")
    usage = store.grow_shrink_share().join(sampled, on="run_id").select("cohort", "seed", "grow_shrink_share", "wait_share")
    heads = (store.policy_entropy().join(sampled, on="run_id").filter(pl.col("open_decisions") > 0).group_by("cohort", "head")
             .agg(open_entropy=(pl.col("open_entropy") * pl.col("open_decisions")).sum() / pl.col("open_decisions").sum()))  # fmt: skip
    training = runs.filter(pl.col("kind") == "ppo").select("run_id", "seed")
    curves = store.learning_curve().join(training, on="run_id").drop_nulls("entropy_op").sort("episode")
    entropy = (curves.group_by("cohort", "run_id", "seed").agg(first=pl.col("entropy_op").first(), last=pl.col("entropy_op").last())
               .filter(pl.col("first") > 0).select("cohort", "seed", kept=pl.col("last") / pl.col("first")))  # fmt: skip
    return Evidence(held_out(store), usage, entropy, heads)


def seed002_gates(pack: Pack, ev: Evidence) -> list[Gate]:
    """Seed 002's four Phase 0 exit gates per cohort, against the control cohort where they
    compare, on held-out episodes (entropy: the training runs' first and last episode)."""
    gates: list[Gate] = []
    outcomes = ev.outcomes
    for cohort in sorted(set(outcomes["cohort"])):
        greedy, sampled = arm(outcomes, cohort, GREEDY), arm(outcomes, cohort, SAMPLED)
        control = arm(outcomes, pack.control, GREEDY)
        if _has_ladder(pack, cohort):
            share = estimate(ev.usage.filter(pl.col("cohort") == cohort), "grow_shrink_share")
            gates.append(Gate("1 usage", cohort, verdict(share, GROW_SHRINK_GATE),
                              f"grow/shrink share of non-WAIT decisions {_say(share)} (gate > {GROW_SHRINK_GATE:.0%}; {SAMPLED}, per seed)"))  # fmt: skip
        if cohort != pack.control:
            share = paired_estimate(greedy, control, "conv_heavy_share", on=SAME_SEED_EPISODE)
            roi = paired_estimate(per_seed(greedy.drop_nulls("roi"), "roi"), per_seed(control.drop_nulls("roi"), "roi"), "roi",
                                  on=("seed",))  # fmt: skip
            parts = [verdict(share, 0.0, higher_passes=False), verdict(roi, 0.0)]
            gates.append(Gate("2 dominance", cohort, combine(parts),
                              f"conv_heavy share minus control's {_say(share)} (gate <= 0); ROI (points per 1k "
                              f"in-forward params, per seed) minus control's {_say(roi)} (gate > 0)"))  # fmt: skip
        kept = estimate(ev.entropy.filter(pl.col("cohort") == cohort), "kept")
        rollbacks = paired_estimate(greedy, control, "rollbacks", on=SAME_SEED_EPISODE) if cohort != pack.control else None
        parts = [verdict(kept, ENTROPY_KEPT)] + ([verdict(rollbacks, 0.0, higher_passes=False)] if cohort != pack.control else [])
        gates.append(Gate("3 stability", cohort, combine(parts),
                          f"op entropy last/first training episode {_say(kept)} (gate > {ENTROPY_KEPT}); "
                          f"rollbacks per episode minus control's {_say(rollbacks)} (gate <= 0)"))  # fmt: skip
        if _has_ladder(pack, cohort):
            rate = estimate(sampled, "level_change_rate")
            cycles = estimate(sampled, "regerminations")
            gates.append(Gate("4 anti-thrash", cohort, combine([verdict(rate, MAX_LEVEL_CHANGE_RATE, higher_passes=False),
                                                                verdict(cycles, MAX_REGERMINATIONS, higher_passes=False)]),
                              f"level changes per step {_say(rate)} (gate <= {MAX_LEVEL_CHANGE_RATE}); prune->re-germinate "
                              f"per episode {_say(cycles)} (gate <= {MAX_REGERMINATIONS}); {SAMPLED}"))  # fmt: skip
    return gates


# Seed 004 Stage 1 exit ("median performance improves vs baseline under matched or better cost
# profile; no endless oscillation, no NOOP collapse, no dead action heads"), made measurable:
MIN_GAIN_POINTS = 1.0  # trained policy minus static host, median over held-out episodes
MAX_PARAM_SHARE = 0.5  # mean in-forward seed params per episode, as a share of the host's
MAX_WAIT_SHARE = 0.9  # no NOOP collapse
MIN_OPEN_ENTROPY = 0.05  # nats, for every head over decisions where it had >= 2 legal choices


def stage1_gates(pack: Pack, ev: Evidence) -> list[Gate]:
    """Seed 004 Stage 1's exit per cohort, on held-out episodes paired with the static host."""
    gates: list[Gate] = []
    outcomes = ev.outcomes
    for cohort in sorted(set(outcomes["cohort"])):
        greedy, sampled = arm(outcomes, cohort, GREEDY), arm(outcomes, cohort, SAMPLED)
        static = arm(outcomes, cohort, CONTROL)
        typical = paired_estimate(greedy, static, "score", statistic=median)
        share = estimate(greedy.with_columns(share=pl.col("forward_params_mean") / pl.col("host_params")), "share")
        parts = [verdict(typical, MIN_GAIN_POINTS), verdict(typical, 0.0), verdict(share, MAX_PARAM_SHARE, higher_passes=False)]
        gates.append(Gate("1 growth pays", cohort, combine(parts),
                          f"{GREEDY} minus static, median over episodes {_say(typical)} (gate > {MIN_GAIN_POINTS} point, CI above 0); "
                          f"mean in-forward seed params / host params {_say(share)} (gate <= {MAX_PARAM_SHARE})"))  # fmt: skip
        returns = {name: paired_estimate(greedy, arm(outcomes, cohort, name), "episode_return") for name in ("heuristic", "random")}
        gates.append(Gate("2 beats baselines", cohort, combine([verdict(e, 0.0) for e in returns.values()]),
                          "; ".join(f"return minus {name}'s {_say(e)} (gate > 0)" for name, e in returns.items())))  # fmt: skip
        wait = estimate(ev.usage.filter(pl.col("cohort") == cohort), "wait_share")
        heads = ev.heads.filter(pl.col("cohort") == cohort)
        floor = heads["open_entropy"].min() if not heads.is_empty() else None
        dead = heads.filter(pl.col("open_entropy") < MIN_OPEN_ENTROPY)["head"].to_list()
        gates.append(Gate("3 no collapse", cohort, combine([verdict(wait, MAX_WAIT_SHARE, higher_passes=False),
                                                           PASS if floor is not None and not dead else FAIL]),
                          f"WAIT share of decisions {_say(wait)} (gate <= {MAX_WAIT_SHARE}; {SAMPLED}); lowest head entropy over "
                          f"open decisions {floor if floor is None else f'{floor:.3f}'} nats (gate >= {MIN_OPEN_ENTROPY}; "
                          f"below: {', '.join(dead) or 'none'})"))  # fmt: skip
        cycles = estimate(sampled, "regerminations")
        gates.append(Gate("4 no oscillation", cohort, verdict(cycles, MAX_REGERMINATIONS, higher_passes=False),
                          f"prune->re-germinate per episode {_say(cycles)} (gate <= {MAX_REGERMINATIONS}; {SAMPLED})"))
    return gates


def rent_sweep_gates(pack: Pack, ev: Evidence) -> list[Gate]:
    """The economy is real (seed 003 §5.1): across cohorts that differ only in `rent_weight`, the
    trained policy's in-forward seed params (episode mean, held-out, greedy) fall as rent rises:
    Spearman's rho between the weight and the params, its CI from resampling training seeds."""
    weights = {name: (cohort.get("economy") or {}).get("rent_weight") for name, cohort in pack.cohorts.items()}
    greedy = ev.outcomes.filter(pl.col("arm") == GREEDY).with_columns(
        weight=pl.col("cohort").replace_strict(weights, return_dtype=pl.Float64)
    )
    rho = None
    if greedy["weight"].n_unique() >= 4:
        rho = bootstrap_rows(greedy, lambda f: spearman(f["weight"].to_numpy(), f["forward_params_mean"].to_numpy()))
    return [Gate("1 rent prices growth", "all", verdict(rho, 0.0, higher_passes=False),
                 f"Spearman rho(rent_weight, in-forward seed params) {_say(rho)} over {greedy['weight'].n_unique()} rent weights "
                 f"{sorted(set(greedy['weight'].drop_nulls()))} (gate: CI below 0)")]  # fmt: skip


GATE_SETS = {"seed002": seed002_gates, "stage1": stage1_gates, "rent_sweep": rent_sweep_gates}
