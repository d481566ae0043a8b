"""Held-out, paired evaluation (DESIGN rule 10): every arm plays the same evaluation episodes.

After training, the trained policy (greedy and sampled), the static host (always WAIT), static
hosts of other widths (`static_w<percent>`: the static frontier, DESIGN rule 10), the heuristic
and the masked random policy each play the run's evaluation episodes: seeds
`contracts.eval_episode_seed(run seed, k)`, k = 0..n-1, a range no training episode ever draws
from. Each arm is recorded as a run of kind `eval` with its `arm` and the training run as
`parent_run`, so the store pairs arms episode by episode on (cohort, seed, episode_seed).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

from esper_lab.config import RunConfig
from esper_lab.contracts import (
    GAIN_TRIGGER,
    GREEDY,
    LEARNED_ARMS,
    PLANTER,
    REGROWER,
    SCHEDULE_ARM,
    STATIC_ARMS,
    WIDTH_SCALES,
    RunKind,
    Stream,
    eval_episode_seed,
    stream_seed,
)
from esper_lab.episodes import run_episodes
from esper_lab.experiments.search import search_schedules, training_env_steps
from esper_lab.experiments.settings import Settings, check_arm, played_arms
from esper_lab.policy import (
    Agent,
    GainTriggerPolicy,
    HeuristicPolicy,
    OraclePolicy,
    PlanterPolicy,
    PPOPolicy,
    RandomPolicy,
    SchedulePolicy,
    StaticPolicy,
)
from esper_lab.policy.schedules import Schedule
from esper_lab.telemetry import Recorder
from esper_lab.vecenv import VecEnv


def eval_seeds(run_seed: int, episodes: int) -> list[int]:
    """The held-out episode seeds of a run seed (a fixed, documented set)."""
    return [eval_episode_seed(run_seed, k) for k in range(episodes)]


def arm_policy(arm: str, agent: Agent | None, settings: Settings, schedule: Schedule | None = None):
    """The policy an arm plays with; sampling draws from the run seed's evaluation stream;
    `best_schedule` plays `schedule` (what `search.search_schedules` chose)."""
    run_seed = settings.run.seed
    if arm in LEARNED_ARMS:
        if agent is None:
            raise ValueError(f"arm {arm!r} needs a trained agent")
        return PPOPolicy(agent, seed=stream_seed(run_seed, 0, Stream.EVALUATION), greedy=arm == GREEDY, partner=settings.partner())
    check_arm(arm, settings)
    makers: dict[str, Callable] = {
        **dict.fromkeys(STATIC_ARMS, StaticPolicy),
        "heuristic": HeuristicPolicy,
        GAIN_TRIGGER: GainTriggerPolicy,
        "random": lambda: RandomPolicy(seed=stream_seed(run_seed, 0, Stream.EVALUATION)),
        "oracle": lambda: OraclePolicy(settings.oracle),
        PLANTER: lambda: PlanterPolicy(settings.planter),
        REGROWER: lambda: PlanterPolicy(settings.planter, regrow=True),
        SCHEDULE_ARM: lambda: SchedulePolicy(schedule),
    }
    if arm == SCHEDULE_ARM and schedule is None:
        raise ValueError(f"arm {SCHEDULE_ARM!r} needs the schedule a search chose")
    return makers[arm]()


def batch_size(episodes: int, envs: int) -> int:
    """Environments per batch: the largest divisor of `episodes` that is at most `envs`."""
    return max(n for n in range(1, min(episodes, envs) + 1) if episodes % n == 0)


def evaluate_arms(
    settings: Settings,
    agent: Agent | None,
    root: str | Path,
    cohort: str,
    parent_run: str,
    preset: str | None = None,
    arms: tuple[str, ...] | None = None,
    on_episode: Callable[[str], None] | None = None,
    seeds: list[int] | None = None,
    name: str = RunKind.EVAL,
) -> list[str]:
    """Play the episodes `seeds` (default: the run's `settings.eval_episodes` held-out ones) with
    each arm, recorded as eval runs `<parent_run>-<name>-<arm>`; returns their run ids. A saved
    policy's re-evaluation passes another `name`, so it never overwrites the member's own runs.
    `on_episode(arm)` after each batch. `arms`: default, every arm of the settings (`played_arms`)."""
    seeds = eval_seeds(settings.run.seed, settings.eval_episodes) if seeds is None else seeds
    episodes = len(seeds)
    if episodes < 1:
        raise ValueError(f"eval_episodes={episodes} must be >= 1 to evaluate")
    n = batch_size(episodes, settings.envs)
    played = played_arms(settings) if arms is None else arms
    # on training seeds only, at the policy's training budget (the search never sees these seeds)
    search = search_schedules(settings, training_env_steps(settings), settings.run.seed) if SCHEDULE_ARM in played else None
    run_ids = []
    with contextlib.ExitStack() as stack:
        envs: dict[float, VecEnv] = {}  # one set of envs (and worker processes) per host width, shared by its arms
        for arm in played:
            config = arm_config(arm, settings.run)
            scale = WIDTH_SCALES.get(arm, 1.0)
            if scale not in envs:
                envs[scale] = stack.enter_context(VecEnv(config, n, min(settings.workers, n)))
            policy = arm_policy(arm, agent, settings, None if search is None else search.best)
            run_id = eval_run_id(parent_run, name, arm)
            learned = dataclasses.asdict(settings.policy) if arm in LEARNED_ARMS else search.to_dict() if arm == SCHEDULE_ARM else None
            manifest = dict(run_id=run_id, parent_run=parent_run, kind=RunKind.EVAL, arm=arm, preset=preset, policy_config=learned)
            with Recorder(root, cohort, config, **manifest) as recorder:
                run_episodes(
                    envs[scale],
                    policy,
                    recorder=recorder,
                    seeds=seeds,
                    on_step=lambda _, __, results: on_episode(arm) if on_episode and results[0].done else None,
                )
            run_ids.append(run_id)
    return run_ids


def eval_run_id(parent_run: str, name: str, arm: str) -> str:
    """The run an arm's held-out episodes are recorded as (`name`: "eval" for a member's own)."""
    return f"{parent_run}-{name}-{arm}"


def arm_config(arm: str, config: RunConfig) -> RunConfig:
    """The run config an arm plays: a static-width arm's host is widened; every other arm plays
    the run's own (the same data, batches and episode length either way)."""
    return config.widened(WIDTH_SCALES[arm]) if arm in WIDTH_SCALES else config
