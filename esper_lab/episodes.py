"""Run a policy over a `VecEnv` for whole episodes and summarise what happened.

A learned policy (`PPOPolicy`) also hands the recorder its per-head decision (log-probs,
entropies, masks, value); a baseline's decisions are recorded as the actions alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from esper_lab.contracts import Action, Blueprint, Op, StepResult
from esper_lab.policy.agent import PPOPolicy, decision_record
from esper_lab.vecenv import VecEnv

if TYPE_CHECKING:
    from esper_lab.telemetry import Recorder


@dataclass(frozen=True)
class EpisodeSummary:
    env: int
    episode: int
    final_metric: float  # on the whole validation split
    episode_return: float
    reward_parts: dict[str, float]  # summed over the episode
    forward_params: int  # seed parameters in the forward path at the end
    ops: dict[str, int]  # executed (not vetoed) ops, WAIT included
    germinated: dict[str, int]  # blueprint name -> germinations
    vetoes: int
    rollbacks: int


StepCallback = Callable[[int, list[Action], list[StepResult]], None]


def run_episodes(
    vec: VecEnv,
    policy,
    episodes: int = 1,
    on_step: StepCallback | None = None,
    recorder: Recorder | None = None,
    seeds: list[int] | None = None,
) -> list[EpisodeSummary]:
    """Play `episodes` episodes in every env (training episodes 0, 1, ... of the run, or, with
    `seeds`, the episodes of those seeds, `len(vec)` at a time); `on_step(episode, actions,
    results)` sees each step and `recorder` (telemetry) records each env's step."""
    if seeds is not None:
        if len(seeds) % len(vec):
            raise ValueError(f"{len(seeds)} episode seeds do not split into batches of {len(vec)} environments")
        episodes = len(seeds) // len(vec)
    summaries = []
    for episode in range(episodes):
        results = vec.reset(episode, None if seeds is None else seeds[episode * len(vec) : (episode + 1) * len(vec)])
        totals = [Counter() for _ in results]
        ops = [Counter() for _ in results]
        germinated = [Counter() for _ in results]
        while not results[0].done:
            if isinstance(policy, PPOPolicy):
                _, decision, value = policy.decide(results)
                actions, records = decision.actions(), [decision_record(decision, value, i) for i in range(len(results))]
            else:
                actions, records = policy.act(results), [None] * len(results)
            results = vec.step(actions)
            for i, (action, result) in enumerate(zip(actions, results)):
                if recorder is not None:
                    recorder.record_step(i, episode, action, result, records[i])
                vetoed = result.metrics["veto"] > 0
                totals[i].update(
                    task=result.reward.task,
                    rent=result.reward.rent,
                    churn=result.reward.churn,
                    intervention=result.reward.intervention,
                    total=result.reward.total,
                    vetoes=vetoed,
                    rollbacks=result.metrics["rollback"] > 0,
                )
                ops[i][(Op.WAIT if vetoed else action.op).name] += 1
                if action.op is Op.GERMINATE and not vetoed:
                    germinated[i][Blueprint(action.blueprint).name.lower()] += 1
            if on_step is not None:
                on_step(episode, actions, results)
        for i, result in enumerate(results):
            parts = {k: float(totals[i][k]) for k in ("task", "rent", "churn", "intervention")}
            summaries.append(
                EpisodeSummary(
                    env=i,
                    episode=episode,
                    final_metric=result.metrics["full_metric"],
                    episode_return=float(totals[i]["total"]),
                    reward_parts=parts,
                    forward_params=int(result.metrics["forward_params"]),
                    ops=dict(ops[i]),
                    germinated=dict(germinated[i]),
                    vetoes=int(totals[i]["vetoes"]),
                    rollbacks=int(totals[i]["rollbacks"]),
                )
            )
    return summaries
