"""Seed 004 Stage 1: learned growth against the static frontier and the non-learned controllers."""

from __future__ import annotations

import polars as pl

from esper_lab.contracts import CONTROL, CONTROLLERS, GREEDY, SAMPLED
from esper_lab.experiments.packs import Pack
from esper_lab.experiments.stats import combine, estimate, median, paired_estimate, verdict
from esper_lab.studies.common import MAX_REGERMINATIONS, frontier_gate, not_stuck
from esper_lab.studies.evidence import Evidence, Gate, arm, say

# Seed 004 Stage 1 exit ("median performance improves vs baseline under matched or better cost
# profile; no endless oscillation, no NOOP collapse, no dead action heads"), made measurable:
MIN_GAIN_POINTS = 1.0  # trained policy minus static host, median over held-out episodes
MAX_PARAM_SHARE = 0.5  # mean in-forward seed params per episode, as a share of the host's


def gates(pack: Pack, ev: Evidence) -> list[Gate]:
    """Seed 004 Stage 1's exit per cohort, on held-out episodes paired with the static host."""
    gates: list[Gate] = []
    outcomes = ev.outcomes
    for cohort in sorted(set(outcomes["cohort"])):
        greedy, sampled = arm(outcomes, cohort, GREEDY), arm(outcomes, cohort, SAMPLED)
        static = arm(outcomes, cohort, CONTROL)
        gates.append(frontier_gate(greedy, cohort))
        typical = paired_estimate(greedy, static, "score", statistic=median)
        share = estimate(greedy.with_columns(share=pl.col("forward_params_mean") / pl.col("host_params")), "share")
        parts = [verdict(typical, MIN_GAIN_POINTS), verdict(typical, 0.0), verdict(share, MAX_PARAM_SHARE, higher_passes=False)]
        gates.append(
            Gate(
                "1 growth pays",
                cohort,
                combine(parts),
                f"{GREEDY} minus static, median over episodes {say(typical)} (gate > {MIN_GAIN_POINTS} point, CI above 0); "
                f"mean in-forward seed params / host params {say(share)} (gate <= {MAX_PARAM_SHARE})",
            )
        )
        returns = {name: paired_estimate(greedy, arm(outcomes, cohort, name), "episode_return") for name in ("heuristic", "random")}
        # the non-learned growth controllers a reviewer asks for, where they played: test score, median of paired episodes
        controls = {name: arm(outcomes, cohort, name) for name in CONTROLLERS}
        scores = {name: paired_estimate(greedy, frame, "score", statistic=median) for name, frame in controls.items() if not frame.is_empty()}
        gates.append(
            Gate(
                "2 beats baselines",
                cohort,
                combine([verdict(e, 0.0) for e in [*returns.values(), *scores.values()]]),
                "; ".join(
                    [f"return minus {name}'s {say(e)} (gate > 0)" for name, e in returns.items()]
                    + [f"test score minus {name}'s, median {say(e)} (gate > 0)" for name, e in scores.items()]
                ),
            )
        )
        parts, said = not_stuck(ev, cohort)
        gates.append(Gate("3 no collapse", cohort, combine(parts), said))
        cycles = estimate(sampled, "regerminations")
        gates.append(
            Gate(
                "4 no oscillation",
                cohort,
                verdict(cycles, MAX_REGERMINATIONS, higher_passes=False),
                f"prune->re-germinate per episode {say(cycles)} (gate <= {MAX_REGERMINATIONS}; {SAMPLED})",
            )
        )
    return gates
