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

from esper_lab.config import LADDERS, TASKS
from esper_lab.contracts import ROI_PARAMS, Op
from esper_lab.experiments.evaluation import CONTROL
from esper_lab.experiments.frontier import COSTS, frontier_gains
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
CONTROLLERS = ("gain_trigger", "best_schedule")  # non-learned growth controls the learned policy must beat
PRUNING_OPS = frozenset({"prune", "consolidate_with_next"})  # policy ops that send a seed to PRUNED (a consolidation, its partner)


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
    outcomes = store.episode_outcomes(kind="eval")
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
        .with_columns(roi=pl.when(pl.col("forward_params") > 0).then(pl.col("gain") / pl.col("forward_params") * ROI_PARAMS))
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


def _has_ladder(pack: Pack, cohort: str) -> bool:
    return bool(LADDER_NAMES & {str(b).lower() for b in pack.cohorts[cohort].get("blueprints", [])})


def _can_prune(pack: Pack, cohort: str) -> bool:
    """Whether the cohort's policy may send a seed to PRUNED, so re-germinate after it, under any
    preset: its `policy.ops` name a pruning op, or are empty (every op the plane allows)."""
    ops = (pack.settings(cohort, pack.preset_seeds(preset)[0], preset).policy.ops for preset in pack.presets)
    return any(not names or PRUNING_OPS & set(names) for names in ops)


def _say(e: Estimate | None) -> str:
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
    runs = store.runs().filter(pl.col("status") == "completed")
    ppo = runs.filter((pl.col("kind") == "eval") & pl.col("arm").is_in([GREEDY, SAMPLED])).select("run_id", "arm", "seed")
    sampled = ppo.filter(pl.col("arm") == SAMPLED).drop("arm")
    usage = store.grow_shrink_share().join(ppo, on="run_id").select("cohort", "arm", "seed", "grow_shrink_share", "wait_share")
    heads = (
        store.policy_entropy()
        .join(sampled, on="run_id")
        .filter(pl.col("open_decisions") > 0)
        .group_by("cohort", "head")
        .agg(open_entropy=(pl.col("open_entropy") * pl.col("open_decisions")).sum() / pl.col("open_decisions").sum())
    )
    training = runs.filter(pl.col("kind") == "ppo").select("run_id", "seed")
    curves = store.learning_curve().join(training, on="run_id").drop_nulls("entropy_op").sort("episode")
    entropy = (
        curves.group_by("cohort", "run_id", "seed")
        .agg(first=pl.col("entropy_op").first(), last=pl.col("entropy_op").last())
        .filter(pl.col("first") > 0)
        .select("cohort", "seed", kept=pl.col("last") / pl.col("first"))
    )
    probes = store.probes().join(runs.filter(pl.col("kind") == "eval").select("run_id", "arm"), on="run_id")
    ops = (
        store.lifecycle_op_counts()
        .join(sampled, on="run_id")
        .filter(pl.col("op") != int(Op.WAIT))
        .group_by("cohort", "seed", "op_name")
        .agg(pl.col("chosen").sum())
    )
    return Evidence(held_out(store), usage, entropy, heads, probes, curves, ops)


def seed002_gates(pack: Pack, ev: Evidence) -> list[Gate]:
    """Seed 002's four Phase 0 exit gates per cohort, against the control cohort where they
    compare, on held-out episodes (entropy: the training runs' first and last episode)."""
    gates: list[Gate] = []
    outcomes = ev.outcomes
    for cohort in sorted(set(outcomes["cohort"])):
        greedy, sampled = arm(outcomes, cohort, GREEDY), arm(outcomes, cohort, SAMPLED)
        control = arm(outcomes, pack.control, GREEDY)
        if _has_ladder(pack, cohort):
            share = estimate(ev.usage.filter((pl.col("cohort") == cohort) & (pl.col("arm") == SAMPLED)), "grow_shrink_share")
            gates.append(
                Gate(
                    "1 usage",
                    cohort,
                    verdict(share, GROW_SHRINK_GATE),
                    f"grow/shrink share of non-WAIT decisions {_say(share)} (gate > {GROW_SHRINK_GATE:.0%}; {SAMPLED}, per seed)",
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
                    f"conv_heavy share minus control's {_say(share)} (gate <= 0); ROI (points per 1k "
                    f"in-forward params, per seed) minus control's {_say(roi)} (gate > 0)",
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
                f"op entropy last/first training episode {_say(kept)} (gate > {ENTROPY_KEPT}); "
                f"rollbacks per episode minus control's {_say(rollbacks)} (gate <= 0)",
            )
        )
        # level changes thrash only a ladder; prune -> re-germinate cycles, any cohort that can prune
        limits = [("level_change_rate", "level changes per step", MAX_LEVEL_CHANGE_RATE)] if _has_ladder(pack, cohort) else []
        limits += [("regerminations", "prune->re-germinate per episode", MAX_REGERMINATIONS)] if _can_prune(pack, cohort) else []
        if limits:
            seen = [(estimate(sampled, column), label, limit) for column, label, limit in limits]
            gates.append(
                Gate(
                    "4 anti-thrash",
                    cohort,
                    combine([verdict(e, limit, higher_passes=False) for e, _, limit in seen]),
                    "; ".join(f"{label} {_say(e)} (gate <= {limit})" for e, label, limit in seen) + f"; {SAMPLED}",
                )
            )
    return gates


# Seed 004 Stage 1 exit ("median performance improves vs baseline under matched or better cost
# profile; no endless oscillation, no NOOP collapse, no dead action heads"), made measurable:
MIN_GAIN_POINTS = 1.0  # trained policy minus static host, median over held-out episodes
MAX_PARAM_SHARE = 0.5  # mean in-forward seed params per episode, as a share of the host's
MAX_WAIT_SHARE = 0.9  # no NOOP collapse
MIN_OPEN_ENTROPY = 0.05  # nats, for every head over decisions where it had >= 2 legal choices


def _not_stuck(ev: Evidence, cohort: str) -> tuple[list[str], str]:
    """The monitors every no-collapse gate reads, over held-out decisions: the WAIT share of each
    ppo arm (the greedy one is what one would deploy, and may collapse onto WAIT where the sampled
    one does not), and every head's entropy where it had a choice (sampled arm). Their verdicts,
    and what they saw."""
    usage = ev.usage.filter(pl.col("cohort") == cohort)
    waits = {name: estimate(usage.filter(pl.col("arm") == name), "wait_share") for name in (GREEDY, SAMPLED)}
    heads = ev.heads.filter(pl.col("cohort") == cohort)
    floor = heads["open_entropy"].min() if not heads.is_empty() else None
    dead = heads.filter(pl.col("open_entropy") < MIN_OPEN_ENTROPY)["head"].to_list()
    parts = [*(verdict(wait, MAX_WAIT_SHARE, higher_passes=False) for wait in waits.values()), PASS if floor is not None and not dead else FAIL]
    return parts, (
        f"WAIT share of decisions {'; '.join(f'{name} {_say(wait)}' for name, wait in waits.items())} (gate <= {MAX_WAIT_SHARE} "
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
        "; ".join(f"{GREEDY} minus the static frontier at its {cost}, median over episodes {_say(e)} (gate: CI above 0)" for cost, e in gains.items())
        + "; test split",
    )


def stage1_gates(pack: Pack, ev: Evidence) -> list[Gate]:
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
                f"{GREEDY} minus static, median over episodes {_say(typical)} (gate > {MIN_GAIN_POINTS} point, CI above 0); "
                f"mean in-forward seed params / host params {_say(share)} (gate <= {MAX_PARAM_SHARE})",
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
                    [f"return minus {name}'s {_say(e)} (gate > 0)" for name, e in returns.items()]
                    + [f"test score minus {name}'s, median {_say(e)} (gate > 0)" for name, e in scores.items()]
                ),
            )
        )
        parts, said = _not_stuck(ev, cohort)
        gates.append(Gate("3 no collapse", cohort, combine(parts), said))
        cycles = estimate(sampled, "regerminations")
        gates.append(
            Gate(
                "4 no oscillation",
                cohort,
                verdict(cycles, MAX_REGERMINATIONS, higher_passes=False),
                f"prune->re-germinate per episode {_say(cycles)} (gate <= {MAX_REGERMINATIONS}; {SAMPLED})",
            )
        )
    return gates


def rent_sweep_gates(pack: Pack, ev: Evidence) -> list[Gate]:
    """The economy is real (seed 003 §5.1): across cohorts that differ only in `rent_weight`, the
    trained policy's in-forward seed params (episode mean, held-out, greedy) fall as rent rises:
    Spearman's rho between the weight and the params, its CI from resampling training seeds."""
    weights = {name: (cohort.get("economy") or {}).get("rent_weight") for name, cohort in pack.cohorts.items()}
    greedy = ev.outcomes.filter(pl.col("arm") == GREEDY).with_columns(weight=pl.col("cohort").replace_strict(weights, return_dtype=pl.Float64))
    rho = None
    if greedy["weight"].n_unique() >= 4:
        rho = bootstrap_rows(greedy, lambda f: spearman(f["weight"].to_numpy(), f["forward_params_mean"].to_numpy()))
    return [
        Gate(
            "1 rent prices growth",
            "all",
            verdict(rho, 0.0, higher_passes=False),
            f"Spearman rho(rent_weight, in-forward seed params) {_say(rho)} over {greedy['weight'].n_unique()} rent weights "
            f"{sorted(set(greedy['weight'].drop_nulls()))} (gate: CI below 0)",
        )
    ]


# Seed 004 Stages 2 and 3 (decay), made measurable. The planter arm (`policy.PlanterPolicy`)
# plays Tamiyo in every cohort, so cohorts differ only in Emrakul: pairs are (seed, episode seed).
# A learned Emrakul (`decay.learned`) plays in the ppo arms, beside the same planter.
PLANTER, REGROWER = "planter", "planter_regrow"
MIN_LYSES = 3  # Stage 2: "N successful prunes in live training": N = 3 per run (episode)
NON_INFERIORITY = 1.0  # points: "without losing achieved accuracy" = the paired CI's low end above -1 point


def _decay_cohorts(pack: Pack, ev: Evidence) -> list[str]:
    return sorted(c for c in set(ev.outcomes["cohort"]) if (pack.cohorts[c].get("decay") or {}).get("enabled"))


def _emrakul_arm(pack: Pack, cohort: str) -> str:
    """The arm Emrakul acts in: the trained agent's, greedy, when she is learned, else the planter's."""
    return GREEDY if pack.cohorts[cohort]["decay"].get("learned") else PLANTER


def stage2_gates(pack: Pack, ev: Evidence) -> list[Gate]:
    """Seed 004 Stage 2's exit per Emrakul cohort, paired with the control cohort (the same
    planted episodes without Emrakul): lyses in live training, no permanent loss spike, locks that
    stop repeated bad probes, a cheaper organism, and accuracy not lower."""
    gates: list[Gate] = []
    control = arm(ev.outcomes, pack.control, PLANTER)
    for cohort in _decay_cohorts(pack, ev):
        emrakul = _emrakul_arm(pack, cohort)
        planted = arm(ev.outcomes, cohort, emrakul)
        lyses = estimate(planted, "lyses")
        gates.append(
            Gate(
                "1 lyses",
                cohort,
                verdict(lyses, MIN_LYSES - 0.5),
                f"physical lyses per held-out episode {_say(lyses)} (gate >= {MIN_LYSES}, CI above {MIN_LYSES - 0.5})",
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
        repeats = _probes_under_lock(probes)
        gates.append(
            Gate(
                "3 locks hold",
                cohort,
                PASS if repeats == 0 else FAIL,
                f"probes of a phage during its criticality lock: {repeats} (gate 0); restored probes (antibodies) "
                f"{int(probes['restored'].sum() or 0)}, most on one phage {_most_restored(probes)}",
            )
        )
        cheaper = paired_estimate(planted, control, "forward_params_mean", on=SAME_SEED_EPISODE)
        gates.append(
            Gate(
                "4 cheaper",
                cohort,
                verdict(cheaper, 0.0, higher_passes=False),
                f"mean in-forward seed params per episode minus without Emrakul {_say(cheaper)} (gate: CI below 0)",
            )
        )
        score = paired_estimate(planted, control, "score", on=SAME_SEED_EPISODE)
        gates.append(
            Gate(
                "5 accuracy kept",
                cohort,
                verdict(score, -NON_INFERIORITY),
                f"final score minus without Emrakul {_say(score)} points (gate: CI above -{NON_INFERIORITY})",
            )
        )
    return gates


def stage3_gates(pack: Pack, ev: Evidence) -> list[Gate]:
    """Seed 004 Stage 3's exit per Emrakul cohort: with the Tamiyo that regrows scars, on every
    seed a cut -> scar -> regrowth at that site, a run no less stable than without Emrakul, and the
    metric kept (paired with the control without Emrakul); with the Tamiyo that leaves scars
    dormant, a run as stable and the metric kept are the proof that the identity sufficed."""
    gates: list[Gate] = []
    control = arm(ev.outcomes, pack.control, PLANTER)
    for cohort in _decay_cohorts(pack, ev):
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
                    f"governor rollbacks per episode minus without Emrakul {_say(rollbacks)} (gate: CI at or below 0)",
                )
            )
            score = paired_estimate(frame, control, "score", on=SAME_SEED_EPISODE)
            gates.append(
                Gate(
                    f"3 metric kept, scars {label}",
                    cohort,
                    verdict(score, -NON_INFERIORITY),
                    f"final score minus without Emrakul {_say(score)} points (gate: CI above -{NON_INFERIORITY})",
                )
            )
    return gates


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


def phase5_gates(pack: Pack, ev: Evidence) -> list[Gate]:
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
                f"C_churn per training episode, last fifth of training minus first fifth {_say(drop)} (gate: CI below 0)",
            )
        )
        roi, roi_heuristic = (estimate(frame.drop_nulls("roi"), "roi") for frame in (greedy, heuristic))
        gates.append(
            Gate(
                "2 ROI stays high",
                cohort,
                verdict(roi, 0.0),
                f"gain over static per {ROI_PARAMS:,} in-forward seed params at the end {_say(roi)} over the episodes with "
                f"seeds in forward (gate: CI above 0); the heuristic's {_say(roi_heuristic)}",
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
                f"one); their last measured contribution, mean per episode {_say(benefit)} points (gate: CI above 0); "
                f"{SAMPLED}: {int(sampled['fossils'].sum())} fossils, {int(sampled['fossils_kept'].sum())} kept, contribution "
                f"{_say(estimate(sampled.drop_nulls('fossil_contribution'), 'fossil_contribution'))}",
            )
        )
        share = estimate(greedy, "conv_heavy_share")
        versus = paired_estimate(greedy, heuristic, "conv_heavy_share")
        gates.append(
            Gate(
                "4 minimal conv_heavy",
                cohort,
                verdict(share, MAX_CONV_HEAVY_SHARE, higher_passes=False),
                f"conv_heavy share of in-forward seed params at the end {_say(share)} (gate: CI at or below "
                f"{MAX_CONV_HEAVY_SHARE}); minus the heuristic's {_say(versus)}",
            )
        )
        rollbacks = paired_estimate(greedy, static, "rollbacks")
        gates.append(
            Gate(
                "5 governor consistent",
                cohort,
                verdict(rollbacks, 0.0, higher_passes=False),
                f"rollbacks per episode minus the static host's {_say(rollbacks)} (gate: CI at or below 0); vetoes per "
                f"episode {_say(estimate(greedy, 'vetoes'))}, of buds and consolidations for ROI "
                f"{_say(estimate(greedy, 'roi_vetoes'))}",
            )
        )
        kept_entropy = estimate(ev.entropy.filter(pl.col("cohort") == cohort), "kept")
        stuck, said = _not_stuck(ev, cohort)
        top = tops.filter(pl.col("cohort") == cohort)
        top_share = estimate(top, "share")
        gates.append(
            Gate(
                "6 no collapse",
                cohort,
                combine([verdict(kept_entropy, ENTROPY_KEPT), *stuck, verdict(top_share, MAX_TOP_OP_SHARE, higher_passes=False)]),
                f"op entropy last/first training episode {_say(kept_entropy)} (gate > {ENTROPY_KEPT}); {said}; top non-WAIT op's "
                f"share per seed {_say(top_share)} (gate <= {MAX_TOP_OP_SHARE}; most often "
                f"{', '.join(sorted(set(top['top_op']))) or '-'}; {SAMPLED})",
            )
        )
        score = paired_estimate(greedy, static, "score")
        gates.append(
            Gate(
                "7 metric kept",
                cohort,
                verdict(score, -NON_INFERIORITY),
                f"final score minus the static host's {_say(score)} points (gate: CI above -{NON_INFERIORITY}); "
                f"return minus the heuristic's {_say(paired_estimate(greedy, heuristic, 'episode_return'))}",
            )
        )
    return gates


def _probes_under_lock(probes: pl.DataFrame) -> int:
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


def _most_restored(probes: pl.DataFrame) -> int:
    restored = probes.filter(pl.col("restored"))
    return 0 if restored.is_empty() else int(restored.group_by("run_id", "env", "episode", "slot").len()["len"].max())


GATE_SETS = {
    "seed002": seed002_gates,
    "stage1": stage1_gates,
    "rent_sweep": rent_sweep_gates,
    "stage2": stage2_gates,
    "stage3": stage3_gates,
    "phase5": phase5_gates,
}
