"""Seed 000 Phase 5: the economy (pack 3): churn drops, ROI stays high, fossils are kept, conv_heavy is not what it buys."""

from __future__ import annotations

import polars as pl

from esper_lab.contracts import CONTROL, GREEDY, ROI_PARAMS, SAMPLED
from esper_lab.experiments.packs import Pack
from esper_lab.experiments.stats import FAIL, PASS, combine, estimate, paired_estimate, verdict
from esper_lab.studies.common import ENTROPY_KEPT, NON_INFERIORITY, frontier_gate, not_stuck
from esper_lab.studies.evidence import Evidence, Gate, arm, say

# Seed 000 Phase 5's experiment plan ("does churn drop over training while ROI stays high? are
# fossilised slots stable and beneficial?") and exit ("low churn, high reuse, high ROI, minimal
# conv_heavy dependence, consistent governor behaviour", with entropy and degeneracy monitors as
# gates against a policy stuck fossilising everything), made measurable per PPO cohort:
TRAINING_FIFTH = 5  # churn: the last fifth of the training episodes against the first fifth
MAX_CONV_HEAVY_SHARE = 0.25  # of the in-forward seed params at the end: conv_heavy is not what it buys
MAX_TOP_OP_SHARE = 0.8  # degeneracy: no single op makes more than this share of the non-WAIT decisions


def churn_drop(curves: pl.DataFrame) -> pl.DataFrame:
    """Per training run, the k-th episode of the last fifth of its training episodes paired with
    the k-th of the first fifth: cohort, seed, k and `diff` (C_churn summed over the episode, mean
    over envs, last minus first). Runs with fewer than five training episodes give no rows."""
    rows = []
    for (cohort, run_id), run in curves.sort("episode").partition_by("cohort", "run_id", as_dict=True).items():
        churn, width = run["churn"].to_list(), run.height // TRAINING_FIFTH
        rows += [{"cohort": cohort, "seed": run["seed"][0], "k": k, "diff": churn[-width + k] - churn[k]} for k in range(width)]
    return pl.DataFrame(rows, schema={"cohort": pl.String, "seed": pl.Int64, "k": pl.Int64, "diff": pl.Float64})


def top_op_share(ops: pl.DataFrame) -> pl.DataFrame:
    """Per cohort and seed, the most chosen non-WAIT op and its share of the non-WAIT decisions."""
    return (
        ops.filter(pl.col("chosen") > 0)
        .group_by("cohort", "seed")
        .agg(top_op=pl.col("op_name").sort_by("chosen").last(), share=pl.col("chosen").max() / pl.col("chosen").sum())
    )


def gates(pack: Pack, ev: Evidence) -> list[Gate]:
    """Seed 000 Phase 5's exit per cohort with a trained policy, on held-out episodes paired with
    the static host (and, for the evidence, the heuristic), and on the training runs' churn."""
    gates: list[Gate] = []
    outcomes, drops, tops = ev.outcomes, churn_drop(ev.curves), top_op_share(ev.ops)
    for cohort in sorted(set(outcomes.filter(pl.col("arm") == GREEDY)["cohort"])):
        greedy, static, heuristic = (arm(outcomes, cohort, name) for name in (GREEDY, CONTROL, "heuristic"))
        gates.append(frontier_gate(greedy, cohort))
        drop = estimate(drops.filter(pl.col("cohort") == cohort), "diff")
        gates.append(
            Gate(
                "1 churn drops",
                cohort,
                verdict(drop, 0.0, higher_passes=False),
                f"C_churn per training episode, last fifth of training minus first fifth {say(drop)} (gate: CI below 0)",
            )
        )
        roi, roi_heuristic = (estimate(frame.drop_nulls("roi"), "roi") for frame in (greedy, heuristic))
        gates.append(
            Gate(
                "2 ROI stays high",
                cohort,
                verdict(roi, 0.0),
                f"gain over static per {ROI_PARAMS:,} in-forward seed params at the end {say(roi)} over the episodes with "
                f"seeds in forward (gate: CI above 0); the heuristic's {say(roi_heuristic)}",
            )
        )
        fossils, kept = int(greedy["fossils"].sum()), int(greedy["fossils_kept"].sum())
        benefit = estimate(greedy.drop_nulls("fossil_contribution"), "fossil_contribution")
        sampled = arm(outcomes, cohort, SAMPLED)  # evidence only: the distribution PPO trains may fossilise where its argmax does not
        gates.append(
            Gate(
                "3 fossils stable and beneficial",
                cohort,
                combine([PASS if fossils and kept == fossils else FAIL, verdict(benefit, 0.0)]),
                f"{fossils} fossils in {greedy.height} episodes, {kept} still fossils at the end (gate: all, and at least "
                f"one); their last measured contribution, mean per episode {say(benefit)} points (gate: CI above 0); "
                f"{SAMPLED}: {int(sampled['fossils'].sum())} fossils, {int(sampled['fossils_kept'].sum())} kept, contribution "
                f"{say(estimate(sampled.drop_nulls('fossil_contribution'), 'fossil_contribution'))}",
            )
        )
        share = estimate(greedy, "conv_heavy_share")
        versus = paired_estimate(greedy, heuristic, "conv_heavy_share")
        gates.append(
            Gate(
                "4 minimal conv_heavy",
                cohort,
                verdict(share, MAX_CONV_HEAVY_SHARE, higher_passes=False),
                f"conv_heavy share of in-forward seed params at the end {say(share)} (gate: CI at or below "
                f"{MAX_CONV_HEAVY_SHARE}); minus the heuristic's {say(versus)}",
            )
        )
        rollbacks = paired_estimate(greedy, static, "rollbacks")
        gates.append(
            Gate(
                "5 governor consistent",
                cohort,
                verdict(rollbacks, 0.0, higher_passes=False),
                f"rollbacks per episode minus the static host's {say(rollbacks)} (gate: CI at or below 0); vetoes per "
                f"episode {say(estimate(greedy, 'vetoes'))}, of buds and consolidations for ROI "
                f"{say(estimate(greedy, 'roi_vetoes'))}",
            )
        )
        kept_entropy = estimate(ev.entropy.filter(pl.col("cohort") == cohort), "kept")
        stuck, said = not_stuck(ev, cohort)
        top = tops.filter(pl.col("cohort") == cohort)
        top_share = estimate(top, "share")
        gates.append(
            Gate(
                "6 no collapse",
                cohort,
                combine([verdict(kept_entropy, ENTROPY_KEPT), *stuck, verdict(top_share, MAX_TOP_OP_SHARE, higher_passes=False)]),
                f"op entropy last/first training episode {say(kept_entropy)} (gate > {ENTROPY_KEPT}); {said}; top non-WAIT op's "
                f"share per seed {say(top_share)} (gate <= {MAX_TOP_OP_SHARE}; most often "
                f"{', '.join(sorted(set(top['top_op']))) or '-'}; {SAMPLED})",
            )
        )
        score = paired_estimate(greedy, static, "score")
        gates.append(
            Gate(
                "7 metric kept",
                cohort,
                verdict(score, -NON_INFERIORITY),
                f"final score minus the static host's {say(score)} points (gate: CI above -{NON_INFERIORITY}); "
                f"return minus the heuristic's {say(paired_estimate(greedy, heuristic, 'episode_return'))}",
            )
        )
    return gates
