"""Seed 004 Stage 3: Tamiyo regrows the scars Emrakul leaves, and the organism stays stable."""

from __future__ import annotations

import polars as pl

from esper_lab.experiments.packs import Pack
from esper_lab.experiments.stats import FAIL, PASS, SAME_SEED_EPISODE, paired_estimate, verdict
from esper_lab.studies.common import NON_INFERIORITY, PLANTER, REGROWER, decay_cohorts
from esper_lab.studies.evidence import Evidence, Gate, arm, say


def gates(pack: Pack, ev: Evidence) -> list[Gate]:
    """Seed 004 Stage 3's exit per Emrakul cohort: with the Tamiyo that regrows scars, on every
    seed a cut -> scar -> regrowth at that site, a run no less stable than without Emrakul, and the
    metric kept (paired with the control without Emrakul); with the Tamiyo that leaves scars
    dormant, a run as stable and the metric kept are the proof that the identity sufficed."""
    gates: list[Gate] = []
    control = arm(ev.outcomes, pack.control, PLANTER)
    for cohort in decay_cohorts(pack, ev):
        for name, label in ((REGROWER, "regrown"), (PLANTER, "left dormant")):
            frame = arm(ev.outcomes, cohort, name)
            if frame.is_empty():
                continue
            if name == REGROWER:
                seeds = frame.group_by("seed").agg(handoffs=(pl.col("lyses").gt(0) & pl.col("regrown").gt(0)).sum())
                gates.append(
                    Gate(
                        "1 handoff on every seed",
                        cohort,
                        PASS if seeds.height and seeds["handoffs"].min() > 0 else FAIL,
                        f"held-out episodes with a lysis and a regrowth, per seed: "
                        f"{dict(zip(seeds['seed'].to_list(), seeds['handoffs'].to_list()))} (gate: >= 1 on every seed)",
                    )
                )
            rollbacks = paired_estimate(frame, control, "rollbacks", on=SAME_SEED_EPISODE)  # planting itself can diverge
            gates.append(
                Gate(
                    f"2 stable, scars {label}",
                    cohort,
                    verdict(rollbacks, 0.0, higher_passes=False),
                    f"governor rollbacks per episode minus without Emrakul {say(rollbacks)} (gate: CI at or below 0)",
                )
            )
            score = paired_estimate(frame, control, "score", on=SAME_SEED_EPISODE)
            gates.append(
                Gate(
                    f"3 metric kept, scars {label}",
                    cohort,
                    verdict(score, -NON_INFERIORITY),
                    f"final score minus without Emrakul {say(score)} points (gate: CI above -{NON_INFERIORITY})",
                )
            )
    return gates
