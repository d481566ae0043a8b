"""Seed 004 Stage 2: Emrakul prunes in live training without losing accuracy."""

from __future__ import annotations

import polars as pl

from esper_lab.experiments.packs import Pack
from esper_lab.experiments.stats import FAIL, PASS, SAME_SEED_EPISODE, estimate, paired_estimate, verdict
from esper_lab.studies.common import NON_INFERIORITY, PLANTER, decay_cohorts, emrakul_arm, most_restored, probes_under_lock
from esper_lab.studies.evidence import Evidence, Gate, arm, say

MIN_LYSES = 3  # Stage 2: "N successful prunes in live training": N = 3 per run (episode)


def gates(pack: Pack, ev: Evidence) -> list[Gate]:
    """Seed 004 Stage 2's exit per Emrakul cohort, paired with the control cohort (the same
    planted episodes without Emrakul): lyses in live training, no permanent loss spike, locks that
    stop repeated bad probes, a cheaper organism, and accuracy not lower."""
    gates: list[Gate] = []
    control = arm(ev.outcomes, pack.control, PLANTER)
    for cohort in decay_cohorts(pack, ev):
        emrakul = emrakul_arm(pack, cohort)
        planted = arm(ev.outcomes, cohort, emrakul)
        lyses = estimate(planted, "lyses")
        gates.append(
            Gate(
                "1 lyses",
                cohort,
                verdict(lyses, MIN_LYSES - 0.5),
                f"physical lyses per held-out episode {say(lyses)} (gate >= {MIN_LYSES}, CI above {MIN_LYSES - 0.5})",
            )
        )
        probes = ev.probes.filter((pl.col("cohort") == cohort) & (pl.col("arm") == emrakul))
        spiked = probes.filter(pl.col("recovery_steps").is_null() | (pl.col("recovery_steps") > pl.col("watch_steps")))
        watch = "/".join(str(w) for w in sorted(set(probes["watch_steps"]))) or "-"
        gates.append(
            Gate(
                "2 no lasting spike",
                cohort,
                PASS if probes.height and spiked.is_empty() else FAIL,
                f"{probes.height - spiked.height} of {probes.height} judged probes had the metric back within the "
                f"harm tolerance of its pre-probe baseline within {watch} steps (decay.watch_steps; gate: all); "
                f"restored {int(probes['restored'].sum() or 0)}, cleared {int((~probes['restored']).sum() or 0)}",
            )
        )
        repeats = probes_under_lock(probes)
        gates.append(
            Gate(
                "3 locks hold",
                cohort,
                PASS if repeats == 0 else FAIL,
                f"probes of a phage during its criticality lock: {repeats} (gate 0); restored probes (antibodies) "
                f"{int(probes['restored'].sum() or 0)}, most on one phage {most_restored(probes)}",
            )
        )
        cheaper = paired_estimate(planted, control, "forward_params_mean", on=SAME_SEED_EPISODE)
        gates.append(
            Gate(
                "4 cheaper",
                cohort,
                verdict(cheaper, 0.0, higher_passes=False),
                f"mean in-forward seed params per episode minus without Emrakul {say(cheaper)} (gate: CI below 0)",
            )
        )
        score = paired_estimate(planted, control, "score", on=SAME_SEED_EPISODE)
        gates.append(
            Gate(
                "5 accuracy kept",
                cohort,
                verdict(score, -NON_INFERIORITY),
                f"final score minus without Emrakul {say(score)} points (gate: CI above -{NON_INFERIORITY})",
            )
        )
    return gates
