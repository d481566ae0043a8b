"""Schedule search (issue 25): the best fixed growth schedule random search finds with what the
learned policy's training spends, the non-RL control a learned growth policy must beat (random
search over fixed schedules has matched learned architecture controllers: Li & Talwalkar 2019,
Sciuto et al. 2019). The `best_schedule` arm then plays the chosen schedule on the held-out
episodes (`policy.SchedulePolicy`).

Held to the policy's terms:
- budget: exactly `training_env_steps(settings)` env steps, PPO's training (rounds x episodes
  per round x envs x episode length), every one counted as it is stepped;
- episodes: training seeds only, the j-th the search plays being PPO's j-th training episode
  (`training_episode_seed(run seed, j % envs, j // envs)`); no held-out seed is ever reset;
- objective: the mean episode return, the reward PPO maximises (task minus rent, churn and
  interventions);
- action set: the schedules' ops are germinate, advance and, where the policy may turn ladder
  dials (`PolicyConfig.ops`), grow_internal.

One episode per candidate is a noisy score, so candidates are judged by successive halving
(Jamieson & Talwalkar 2016; Hyperband's rungs, Li et al. 2018): many candidates on one episode,
the best third on three times the episodes, and so on, each rung spending about the same budget.
The candidates of a rung play the same seeds (common random numbers): host init and data order
then add nothing to the differences a rung ranks, only a schedule's interaction with them. The
winner is the best mean return among the finalists, the candidates with the most episodes, never
a lucky single episode; its training score is optimistic (the max of noisy means): the held-out
episodes judge it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

from esper_lab.contracts import EVAL_SEED_BASE, Stream, stream_seed, training_episode_seed
from esper_lab.episodes import run_episodes
from esper_lab.experiments.settings import Settings
from esper_lab.policy.schedules import Schedule, SchedulePolicy, random_schedule
from esper_lab.vecenv import VecEnv

ETA = 3  # a rung keeps the best third and triples their episodes (Hyperband's default, Li et al. 2018)
DRAW_TRIES = 10  # draws per candidate wanted before a space too small for distinct candidates may repeat one


def training_env_steps(settings: Settings) -> int:
    """The env steps the learned policy's training spends: the schedule search's budget."""
    return settings.rounds * settings.ppo.episodes_per_round * settings.envs * settings.run.episode_length


@dataclass(frozen=True)
class Rung:
    candidates: int
    episodes: int  # each candidate's episodes by the end of the rung, all on the same seeds


def rungs(episodes: int, batch: int) -> list[Rung]:
    """The successive-halving plan that spends exactly `episodes` (a multiple of `batch`) in full
    batches of `batch` envs: the most rungs that still leave at least ETA finalists, as many
    finalists as fit (a multiple of `batch`), and what is left over as extra candidates on the
    first rung. Too small a budget for two rungs is plain random search: one episode each."""

    def cost(n_rungs: int) -> int:  # episodes for one finalist's share: n_r candidates x new episodes
        depth = [ETA**r for r in range(n_rungs)]
        return sum(ETA ** (n_rungs - 1 - r) * (depth[r] - (depth[r - 1] if r else 0)) for r in range(n_rungs))

    fewest = batch * math.ceil(ETA / batch)  # finalists: at least ETA, in full batches
    n_rungs = 1
    while fewest * cost(n_rungs + 1) <= episodes:
        n_rungs += 1
    finalists = batch * (episodes // (batch * cost(n_rungs)))
    plan = [Rung(finalists * ETA ** (n_rungs - 1 - r), ETA**r) for r in range(n_rungs)]
    plan[0] = Rung(plan[0].candidates + episodes - finalists * cost(n_rungs), 1)
    return plan


@dataclass(frozen=True)
class SearchResult:
    best: Schedule
    score: float  # its mean training-episode return (over the finalists' episodes)
    candidates: int  # schedules drawn and played
    env_steps: int  # spent, all told
    rungs: tuple[Rung, ...]
    table: tuple[dict, ...]  # per candidate: its schedule, the rung it reached, its episodes and mean return

    def to_dict(self) -> dict:
        """JSON-able: what a run manifest stores."""
        return {
            "best": self.best.to_dict(),
            "score": self.score,
            "candidates": self.candidates,
            "env_steps": self.env_steps,
            "rungs": [{"candidates": r.candidates, "episodes": r.episodes} for r in self.rungs],
            "table": list(self.table),
        }


def _draw(generator: torch.Generator, settings: Settings, count: int) -> list[Schedule]:
    """`count` schedules, distinct while the space allows (a repeat would replay the same seeds
    to the same return), each planting up to `max_seeds` (nothing is pruned, so no more fit)."""
    ops = settings.policy.ops
    draw = lambda: random_schedule(generator, settings.run, settings.run.max_seeds, grow=not ops or "grow_internal" in ops)
    drawn: dict[Schedule, None] = {}
    for _ in range(count * DRAW_TRIES):
        if len(drawn) == count:
            break
        drawn.setdefault(draw(), None)
    schedules = list(drawn)
    return schedules + [draw() for _ in range(count - len(schedules))]


def search_schedules(settings: Settings, env_steps: int, seed: int) -> SearchResult:
    """Random search over fixed growth schedules with successive halving, spending exactly
    `env_steps` on training episodes of `settings.run`; schedules drawn from `seed`'s stream.
    Each env of a batch plays a different candidate (or a finalist on another seed), so a batch
    is as wide as the training's (`settings.envs`, or the largest divisor of the episodes below it)."""
    length = settings.run.episode_length
    if env_steps < length or env_steps % length:
        raise ValueError(f"env_steps={env_steps} must be a positive multiple of episode_length={length}")
    episodes = env_steps // length
    batch = max(n for n in range(1, min(episodes, settings.envs) + 1) if episodes % n == 0)
    plan = rungs(episodes, batch)
    generator = torch.Generator().manual_seed(stream_seed(seed, 0, Stream.SCHEDULE_SEARCH))
    schedules = _draw(generator, settings, plan[0].candidates)
    returns: list[list[float]] = [[] for _ in schedules]
    reached = [0] * len(schedules)
    spent = 0

    def count(_, __, results) -> None:
        nonlocal spent
        spent += len(results)

    rank = lambda c: (-statistics.fmean(returns[c]), c)  # best mean first; of equals, the earlier draw
    survivors = list(range(len(schedules)))
    with VecEnv(settings.run, batch, min(settings.workers, batch)) as vec:
        for r, rung in enumerate(plan):
            if r:
                survivors = sorted(survivors, key=rank)[: rung.candidates]
            done = len(returns[survivors[0]])
            jobs = [(c, j) for j in range(done, rung.episodes) for c in survivors]
            for start in range(0, len(jobs), batch):
                chunk = jobs[start : start + batch]
                seeds = [training_episode_seed(settings.run.seed, j % settings.envs, j // settings.envs) for _, j in chunk]
                assert all(s < EVAL_SEED_BASE for s in seeds), "a schedule search must never play a held-out episode"
                summaries = run_episodes(vec, SchedulePolicy([schedules[c] for c, _ in chunk]), on_step=count, seeds=seeds)
                for (c, _), summary in zip(chunk, summaries):
                    returns[c].append(summary.episode_return)
            for c in survivors:
                reached[c] = r
    assert spent == env_steps, f"spent {spent} env steps of a budget of {env_steps}"
    best = min(survivors, key=rank)
    table = tuple(
        {"candidate": c, "schedule": s.to_dict(), "rung": reached[c], "episodes": len(returns[c]), "mean_return": statistics.fmean(returns[c])}
        for c, s in enumerate(schedules)
    )
    return SearchResult(schedules[best], statistics.fmean(returns[best]), len(schedules), spent, tuple(plan), table)
