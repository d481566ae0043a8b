"""Gate parts more than one study reads: which cohorts can do what, the no-collapse monitors, the
frontier gate, and the decay studies' shared rules.
"""

from __future__ import annotations

import polars as pl

from esper_lab.contracts import GREEDY, LEARNED_ARMS, PLANTER, SAMPLED, Blueprint
from esper_lab.experiments.frontier import COSTS
from esper_lab.experiments.packs import Pack
from esper_lab.experiments.stats import (
    FAIL,
    PASS,
    combine,
    estimate,
    median,
    verdict,
)
from esper_lab.studies.evidence import Evidence, Gate, say

MAX_REGERMINATIONS = 0.25  # gate 4 (and seed 004 Stage 1): prune -> re-germinate cycles per episode
PRUNING_OPS = frozenset({"prune", "consolidate_with_next"})  # policy ops that send a seed to PRUNED (a consolidation, its partner)

ENTROPY_KEPT = 0.5  # seed 002 gate 3: the op head keeps at least half its first-episode entropy (no collapse)
MAX_WAIT_SHARE = 0.9  # no NOOP collapse
MIN_OPEN_ENTROPY = 0.05  # nats, for every head over decisions where it had >= 2 legal choices
NON_INFERIORITY = 1.0  # points: "without losing achieved accuracy" = the paired CI's low end above -1 point


def has_ladder(pack: Pack, cohort: str) -> bool:
    return any(Blueprint[str(b).upper()].is_ladder for b in pack.cohorts[cohort].get("blueprints", []))


def can_prune(pack: Pack, cohort: str) -> bool:
    """Whether the cohort's policy may send a seed to PRUNED, so re-germinate after it, under any
    preset: its `policy.ops` name a pruning op, or are empty (every op the plane allows)."""
    ops = (pack.settings(cohort, pack.preset_seeds(preset)[0], preset).policy.ops for preset in pack.presets)
    return any(not names or PRUNING_OPS & set(names) for names in ops)


def not_stuck(ev: Evidence, cohort: str) -> tuple[list[str], str]:
    """The monitors every no-collapse gate reads, over held-out decisions: the WAIT share of each
    ppo arm (the greedy one is what one would deploy, and may collapse onto WAIT where the sampled
    one does not), and every head's entropy where it had a choice (sampled arm). Their verdicts,
    and what they saw."""
    usage = ev.usage.filter(pl.col("cohort") == cohort)
    waits = {name: estimate(usage.filter(pl.col("arm") == name), "wait_share") for name in LEARNED_ARMS}
    heads = ev.heads.filter(pl.col("cohort") == cohort)
    floor = heads["open_entropy"].min() if not heads.is_empty() else None
    dead = heads.filter(pl.col("open_entropy") < MIN_OPEN_ENTROPY)["head"].to_list()
    parts = [*(verdict(wait, MAX_WAIT_SHARE, higher_passes=False) for wait in waits.values()), PASS if floor is not None and not dead else FAIL]
    return parts, (
        f"WAIT share of decisions {'; '.join(f'{name} {say(wait)}' for name, wait in waits.items())} (gate <= {MAX_WAIT_SHARE} "
        f"in both arms); lowest head entropy over open decisions {floor if floor is None else f'{floor:.3f}'} nats "
        f"(gate >= {MIN_OPEN_ENTROPY}; below: {', '.join(dead) or 'none'}; {SAMPLED})"
    )


def frontier_gate(frame: pl.DataFrame, cohort: str) -> Gate:
    """The first number of a study (DESIGN rule 10): does the arm score above the static frontier
    at its own parameters and at its own training FLOPs? Median frontier gain over held-out
    episodes, CI above 0 for both costs (`frontier`)."""
    gains = {cost: estimate(frame, f"frontier_gain_{cost}", statistic=median) for cost in COSTS}
    return Gate(
        "0 moves the frontier",
        cohort,
        combine([verdict(e, 0.0) for e in gains.values()]),
        "; ".join(f"{GREEDY} minus the static frontier at its {cost}, median over episodes {say(e)} (gate: CI above 0)" for cost, e in gains.items())
        + "; test split",
    )


# Seed 004 Stages 2 and 3 (decay), made measurable. The planter arm (`policy.PlanterPolicy`)
# plays Tamiyo in every cohort, so cohorts differ only in Emrakul: pairs are (seed, episode seed).
# A learned Emrakul (`decay.learned`) plays in the ppo arms, beside the same planter.


def decay_cohorts(pack: Pack, ev: Evidence) -> list[str]:
    return sorted(c for c in set(ev.outcomes["cohort"]) if (pack.cohorts[c].get("decay") or {}).get("enabled"))


def emrakul_arm(pack: Pack, cohort: str) -> str:
    """The arm Emrakul acts in: the trained agent's, greedy, when she is learned, else the planter's."""
    return GREEDY if pack.cohorts[cohort]["decay"].get("learned") else PLANTER


def probes_under_lock(probes: pl.DataFrame) -> int:
    """Probes that started on a phage before the lock its last restored probe set had run out."""
    return (
        0
        if probes.is_empty()
        else int(
            probes.sort("started")
            .with_columns(
                previous_restored=pl.col("restored").shift().over("run_id", "env", "episode", "slot"),
                previous_judged=pl.col("judged").shift().over("run_id", "env", "episode", "slot"),
            )
            .filter(pl.col("previous_restored") & (pl.col("started") - pl.col("previous_judged") <= pl.col("lock_steps")))
            .height
        )
    )


def most_restored(probes: pl.DataFrame) -> int:
    restored = probes.filter(pl.col("restored"))
    return 0 if restored.is_empty() else int(restored.group_by("run_id", "env", "episode", "slot").len()["len"].max())
