"""Run a policy over a `VecEnv` for whole episodes and summarise what happened."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from esper_lab.contracts import Action, Blueprint, Op
from esper_lab.env import StepResult, VecEnv

if TYPE_CHECKING:
    from esper_lab.telemetry import Recorder


@dataclass(frozen=True)
class EpisodeSummary:
    env: int
    episode: int
    final_metric: float
    episode_return: float
    reward_parts: dict[str, float]  # summed over the episode
    active_params: int
    ops: dict[str, int]  # executed (not vetoed) ops, WAIT included
    germinated: dict[str, int]  # blueprint name -> germinations
    vetoes: int
    rollbacks: int


StepCallback = Callable[[int, list[Action], list[StepResult]], None]


def run_episodes(
    vec: VecEnv, policy, episodes: int = 1, on_step: StepCallback | None = None, recorder: Recorder | None = None
) -> list[EpisodeSummary]:
    """Play `episodes` episodes in every env; `on_step(episode, actions, results)` sees each step
    and `recorder` (telemetry) records each env's step."""
    summaries = []
    for episode in range(episodes):
        results = vec.reset()
        totals = [Counter() for _ in results]
        ops = [Counter() for _ in results]
        germinated = [Counter() for _ in results]
        while not results[0].done:
            actions = policy.act(results)
            results = vec.step(actions)
            for i, (action, result) in enumerate(zip(actions, results)):
                if recorder is not None:
                    recorder.record_step(i, episode, action, result)
                vetoed = result.metrics["veto"] > 0
                totals[i].update(task=result.reward.task, rent=result.reward.rent, churn=result.reward.churn,
                                 intervention=result.reward.intervention, total=result.reward.total,
                                 vetoes=vetoed, rollbacks=result.metrics["rollback"] > 0)  # fmt: skip
                ops[i][(Op.WAIT if vetoed else action.op).name] += 1
                if action.op is Op.GERMINATE and not vetoed:
                    germinated[i][Blueprint(action.blueprint).name.lower()] += 1
            if on_step is not None:
                on_step(episode, actions, results)
        for i, result in enumerate(results):
            parts = {k: float(totals[i][k]) for k in ("task", "rent", "churn", "intervention")}
            summaries.append(EpisodeSummary(
                env=i, episode=episode, final_metric=result.metrics["metric"], episode_return=float(totals[i]["total"]),
                reward_parts=parts, active_params=int(result.metrics["active_params"]), ops=dict(ops[i]),
                germinated=dict(germinated[i]), vetoes=int(totals[i]["vetoes"]), rollbacks=int(totals[i]["rollbacks"]),
            ))  # fmt: skip
    return summaries
