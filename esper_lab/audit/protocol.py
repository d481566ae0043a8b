"""The audit protocol (seed 003 §5.3): which seeds, which budget, which randomness, and v(S).

An audit rebuilds one recorded episode from its flight recorder: the run's `RunConfig`, the
episode's seed, and the actions the env executed up to the audited step (the budget). The
candidates are the seeds that occupy a slot at that step. v(S) trains the host afresh under the
same budget and actions with only the candidates in S enabled: an action on a candidate outside
S (its germination and every later op on it) becomes WAIT, so that seed is never germinated;
actions on other slots, and on earlier seeds of a candidate's slot, replay as recorded. v(S) is
the task metric on the whole validation split after the last step, signed so that up is good
(accuracy, or minus the validation loss).

v(S) is an expectation over controlled randomness: replicate 0 replays the recorded episode's
seed, replicates 1.. draw fresh episode seeds (host init, data order, seed inits). Every
coalition of one replicate shares its seed (common random numbers), so each replicate's credits
are an exact Shapley decomposition of one draw of the protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import polars as pl

from esper_lab.config import RunConfig
from esper_lab.contracts import (
    EVAL_SEED_BASE,
    SEED_STAGES,
    Action,
    Blueprint,
    Op,
    Stream,
    stream_seed,
)
from esper_lab.env import MorphEnv
from esper_lab.experiments.replay import action_from_row, recorded_episode
from esper_lab.plane import IllegalAction
from esper_lab.telemetry import Store

DEFAULT_CANDIDATES = 3  # seed 003 §5.3: exact Shapley "over up to 3 seeds at a time"
MAX_CANDIDATES = 4  # 2^4 = 16 coalitions per replicate: the most full retraining is asked to pay
DEFAULT_REPLICATES = 3  # the fewest that give a spread and an interval with two degrees of freedom
FATES = (Op.PRUNE, Op.FOSSILIZE)  # what a policy can decide about a live seed after the audit's step


@dataclass(frozen=True)
class Candidate:
    """One audited seed: where it sits, what it is, and what the run said and did about it."""

    slot: int
    surface_uid: int
    blueprint: Blueprint
    germinated_step: int  # its germination's env step (ops on the slot from here on are its own)
    contribution: float | None = None  # the online probe's last value at or before the audited step
    contribution_step: int | None = None
    fate_op: Op | None = None  # the policy's PRUNE or FOSSILIZE of it after the audited step; None: kept
    fate_step: int | None = None


@dataclass(frozen=True)
class Protocol:
    """Everything a subset training needs (picklable: it travels to the pool's workers)."""

    config: RunConfig  # the audited run's
    audited_run: str
    cohort: str
    preset: str | None
    env: int
    episode: int
    step: int  # the budget: the episode's first `step` env steps
    episode_seeds: tuple[int, ...]  # one per replicate; the first is the recorded episode's
    actions: tuple[Action, ...]  # the executed action at steps 1..step (a vetoed one as WAIT)
    owners: tuple[int | None, ...]  # per step, the candidate slot whose seed that action acts on
    candidates: tuple[Candidate, ...]

    def __post_init__(self):
        if len(self.actions) != self.step or len(self.owners) != self.step:
            raise ValueError(f"a protocol of {self.step} steps needs {self.step} actions and owners, got {len(self.actions)} and {len(self.owners)}")
        if not 1 <= len(self.candidates) <= MAX_CANDIDATES:
            raise ValueError(f"{len(self.candidates)} candidates: exact Shapley audits 1..{MAX_CANDIDATES} seeds")
        if len(self.episode_seeds) < 2:
            raise ValueError(f"replicates={len(self.episode_seeds)} must be >= 2 for a spread (default {DEFAULT_REPLICATES})")

    @property
    def players(self) -> tuple[int, ...]:
        return tuple(c.slot for c in self.candidates)

    @property
    def replicates(self) -> int:
        return len(self.episode_seeds)

    @property
    def trainings(self) -> int:
        """Every coalition in every replicate: what the audit pays for."""
        return self.replicates * 2 ** len(self.candidates)

    @property
    def metric(self) -> str:
        """What v(S) reads, signed so that up is good."""
        return "accuracy" if self.config.spec.metric == "accuracy" else "minus_val_loss"

    def describe(self) -> dict:
        """The protocol as JSON-ready values: stored with every audit row."""
        return {
            "audited_run": self.audited_run,
            "env": self.env,
            "episode": self.episode,
            "budget_steps": self.step,
            "metric": self.metric,
            "evaluated_on": "whole validation split",
            "episode_seeds": list(self.episode_seeds),
            "gating": "a candidate outside S is never germinated (its actions replay as WAIT)",
            "candidates": [c.slot for c in self.candidates],
            "config_json": self.config.to_json(),
            "training_config_json": training_config(self.config).to_json(),
            "torch_threads": AUDIT_THREADS,
        }


AUDIT_THREADS = 1  # every subset training on one intra-op thread: fastest for these tiny hosts, and
# the same count everywhere keeps float reductions (so v(S)) identical in a worker and in-process


def training_config(config: RunConfig) -> RunConfig:
    """The audited config, without what costs time and cannot change the host's training: the
    contribution probes (forward passes in inference mode) and the static twin (a copy trained
    beside the host)."""
    return config.replace(contribution_every=0, economy=dataclasses.replace(config.economy, reward_signal="metric_gain"))


def replicate_seed(recorded: int, replicate: int) -> int:
    """Replicate 0 is the recorded episode; the others draw from the audit's own stream (and stay
    below the held-out range, like every training episode)."""
    return recorded if replicate == 0 else stream_seed(recorded, replicate, Stream.AUDIT) % EVAL_SEED_BASE


@dataclass(frozen=True)
class Training:
    """v(S) of one (coalition, replicate), and how many recorded actions could not apply."""

    value: float
    skipped: int  # actions made illegal by the gating (e.g. a rollback removed a seed): played as WAIT


def train(protocol: Protocol, coalition: frozenset, replicate: int) -> Training:
    """Train the host of replicate `replicate` for the protocol's budget with only the candidates
    in `coalition` enabled; return v(S) on the whole validation split."""
    env = MorphEnv(training_config(protocol.config), protocol.env)
    env.reset(protocol.episode_seeds[replicate])
    skipped = 0
    for action, owner in zip(protocol.actions, protocol.owners):
        if owner is not None and owner not in coalition:
            action = Action(Op.WAIT)
        try:
            env.plane.check(action)
        except IllegalAction:
            action, skipped = Action(Op.WAIT), skipped + 1
        env.step(action)
    result = env.full_evaluation()
    return Training(result.accuracy if protocol.metric == "accuracy" else -result.loss, skipped)


def from_run(
    store: Store,
    run_id: str,
    step: int | None = None,
    env: int = 0,
    episode: int = 0,
    slots: tuple[int, ...] | None = None,
    replicates: int = DEFAULT_REPLICATES,
    max_candidates: int = DEFAULT_CANDIDATES,
) -> Protocol:
    """The protocol of a recorded episode's seeds at `step` (default: its last, the final
    organism): every seed occupying a slot then, or the ones in `slots`."""
    if not (isinstance(max_candidates, int) and 1 <= max_candidates <= MAX_CANDIDATES):
        raise ValueError(f"max_candidates={max_candidates!r} must be an integer in 1..{MAX_CANDIDATES}")
    if not (isinstance(replicates, int) and replicates >= 2):
        raise ValueError(f"replicates={replicates!r} must be an integer >= 2 (default {DEFAULT_REPLICATES})")
    recorded = recorded_episode(store, run_id, env, episode, step)
    manifest, config, seed, decisions, step = recorded.manifest, recorded.config, recorded.seed, recorded.decisions, recorded.step
    state = store.slot_series(run=run_id, env=env, episode=episode).filter(pl.col("step") == step)
    live = state.filter(pl.col("stage").is_in([int(s) for s in SEED_STAGES]))
    chosen = live["slot"].to_list() if slots is None else list(slots)
    if len(set(chosen)) < len(chosen):
        raise ValueError(f"slots={chosen} names a slot twice")
    dead = sorted(set(chosen) - set(live["slot"]))
    if dead:
        raise ValueError(f"slots {dead} hold no seed at step {step} (seeds then: {live['slot'].to_list() or 'none'})")
    if not 1 <= len(chosen) <= max_candidates:
        raise ValueError(
            f"{len(chosen)} seeds at step {step} (slots {chosen}): exact Shapley audits 1..{max_candidates} "
            f"(max_candidates, at most {MAX_CANDIDATES}); choose some with slots="
        )
    rows = decisions.to_dicts()
    executed = [Action(Op.WAIT) if row["vetoed"] else action_from_row(row) for row in rows]
    germinated = {slot: max(r["step"] for r in rows[:step] if r["executed_op"] == Op.GERMINATE and r["executed_slot"] == slot) for slot in chosen}
    probes = store.contributions(run=run_id).filter((pl.col("env") == env) & (pl.col("episode") == episode))
    candidates = []
    for slot in sorted(chosen):
        row = state.filter(pl.col("slot") == slot).row(0, named=True)
        probe = probes.filter((pl.col("slot") == slot) & pl.col("step").is_between(germinated[slot], step)).tail(1)
        fate = _fate(rows[step:], slot)
        candidates.append(
            Candidate(
                slot=slot,
                surface_uid=row["surface_uid"],
                blueprint=Blueprint(row["blueprint"]),
                germinated_step=germinated[slot],
                contribution=probe["contribution"][0] if probe.height else None,
                contribution_step=probe["step"][0] if probe.height else None,
                fate_op=None if fate is None else Op(fate["executed_op"]),
                fate_step=None if fate is None else fate["step"],
            )
        )
    owners = tuple(
        a.slot if a.op is not Op.WAIT and a.slot in germinated and r["step"] >= germinated[a.slot] else None
        for a, r in zip(executed[:step], rows[:step])
    )
    return Protocol(
        config,
        run_id,
        manifest["cohort"],
        manifest["preset"],
        env,
        episode,
        step,
        tuple(replicate_seed(seed, r) for r in range(replicates)),
        tuple(executed[:step]),
        owners,
        tuple(candidates),
    )


def _fate(later: list[dict], slot: int) -> dict | None:
    """The decisions row that pruned or fossilised the seed in `slot` after the audited step, or
    None when it stayed (a new germination there means another seed: the governor removed this one)."""
    for row in later:
        if row["executed_slot"] == slot and row["executed_op"] in (*FATES, Op.GERMINATE):
            return row if row["executed_op"] in FATES else None
    return None
