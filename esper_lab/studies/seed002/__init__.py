"""Seed 002's Phase 0 exit gates (packs 0, 1 and 2: ladders, sites, focus)."""

from __future__ import annotations

import polars as pl

from esper_lab.contracts import GREEDY, SAMPLED
from esper_lab.experiments.packs import Pack
from esper_lab.experiments.stats import SAME_SEED_EPISODE, combine, estimate, paired_estimate, verdict
from esper_lab.studies.common import ENTROPY_KEPT, MAX_REGERMINATIONS, can_prune, has_ladder
from esper_lab.studies.evidence import Evidence, Gate, arm, per_seed, say

GROW_SHRINK_GATE = 0.10  # seed 002 gate 1: GROW/SHRINK in >= 10% of non-WAIT decisions
MAX_LEVEL_CHANGE_RATE = 0.5  # gate 4: at most one level change every other step, on average


def gates(pack: Pack, ev: Evidence) -> list[Gate]:
    """Seed 002's four Phase 0 exit gates per cohort, against the control cohort where they
    compare, on held-out episodes (entropy: the training runs' first and last episode)."""
    gates: list[Gate] = []
    outcomes = ev.outcomes
    for cohort in sorted(set(outcomes["cohort"])):
        greedy, sampled = arm(outcomes, cohort, GREEDY), arm(outcomes, cohort, SAMPLED)
        control = arm(outcomes, pack.control, GREEDY)
        if has_ladder(pack, cohort):
            share = estimate(ev.usage.filter((pl.col("cohort") == cohort) & (pl.col("arm") == SAMPLED)), "grow_shrink_share")
            gates.append(
                Gate(
                    "1 usage",
                    cohort,
                    verdict(share, GROW_SHRINK_GATE),
                    f"grow/shrink share of non-WAIT decisions {say(share)} (gate > {GROW_SHRINK_GATE:.0%}; {SAMPLED}, per seed)",
                )
            )
        if cohort != pack.control:
            share = paired_estimate(greedy, control, "conv_heavy_share", on=SAME_SEED_EPISODE)
            roi = paired_estimate(per_seed(greedy.drop_nulls("roi"), "roi"), per_seed(control.drop_nulls("roi"), "roi"), "roi", on=("seed",))
            parts = [verdict(share, 0.0, higher_passes=False), verdict(roi, 0.0)]
            gates.append(
                Gate(
                    "2 dominance",
                    cohort,
                    combine(parts),
                    f"conv_heavy share minus control's {say(share)} (gate <= 0); ROI (points per 1k "
                    f"in-forward params, per seed) minus control's {say(roi)} (gate > 0)",
                )
            )
        kept = estimate(ev.entropy.filter(pl.col("cohort") == cohort), "kept")
        rollbacks = paired_estimate(greedy, control, "rollbacks", on=SAME_SEED_EPISODE) if cohort != pack.control else None
        parts = [verdict(kept, ENTROPY_KEPT)] + ([verdict(rollbacks, 0.0, higher_passes=False)] if cohort != pack.control else [])
        gates.append(
            Gate(
                "3 stability",
                cohort,
                combine(parts),
                f"op entropy last/first training episode {say(kept)} (gate > {ENTROPY_KEPT}); "
                f"rollbacks per episode minus control's {say(rollbacks)} (gate <= 0)",
            )
        )
        # level changes thrash only a ladder; prune -> re-germinate cycles, any cohort that can prune
        limits = [("level_change_rate", "level changes per step", MAX_LEVEL_CHANGE_RATE)] if has_ladder(pack, cohort) else []
        limits += [("regerminations", "prune->re-germinate per episode", MAX_REGERMINATIONS)] if can_prune(pack, cohort) else []
        if limits:
            seen = [(estimate(sampled, column), label, limit) for column, label, limit in limits]
            gates.append(
                Gate(
                    "4 anti-thrash",
                    cohort,
                    combine([verdict(e, limit, higher_passes=False) for e, _, limit in seen]),
                    "; ".join(f"{label} {say(e)} (gate <= {limit})" for e, label, limit in seen) + f"; {SAMPLED}",
                )
            )
    return gates
