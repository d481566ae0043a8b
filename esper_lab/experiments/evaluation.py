"""Held-out, paired evaluation (DESIGN rule 10): every arm plays the same evaluation episodes.

After training, the trained policy (greedy and sampled), the static host (always WAIT), the
heuristic and the masked random policy each play the run's evaluation episodes: seeds
`contracts.eval_episode_seed(run seed, k)`, k = 0..n-1, a range no training episode ever draws
from. Each arm is recorded as a run of kind `eval` with its `arm` and the training run as
`parent_run`, so the store pairs arms episode by episode on (cohort, seed, episode_seed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from esper_lab.contracts import Stream, eval_episode_seed, stream_seed
from esper_lab.env import VecEnv
from esper_lab.episodes import run_episodes
from esper_lab.experiments.settings import Settings
from esper_lab.policy import Agent, HeuristicPolicy, OraclePolicy, PlanterPolicy, PPOPolicy, RandomPolicy, StaticPolicy
from esper_lab.telemetry import Recorder

# oracle: when the settings name one; the planter arms (the decay studies' scripted Tamiyo, which
# plants fossils for Emrakul; `planter_regrow` also regrows the scars) when they name `arms`
ARMS = ("ppo_greedy", "ppo_sampled", "static", "heuristic", "random", "oracle", "planter", "planter_regrow")
DEFAULT_ARMS = ("ppo_greedy", "ppo_sampled", "static", "heuristic", "random", "oracle")
CONTROL = "static"  # the arm every other is paired against


def eval_seeds(run_seed: int, episodes: int) -> list[int]:
    """The held-out episode seeds of a run seed (a fixed, documented set)."""
    return [eval_episode_seed(run_seed, k) for k in range(episodes)]


def played_arms(settings: Settings) -> tuple[str, ...]:
    """The arms these settings evaluate: the ones they name (`arms`), else the default arms, the
    oracle only when they name its blueprint. Raises, naming the arm, when one cannot play."""
    if settings.arms is None:
        return tuple(a for a in DEFAULT_ARMS if a != "oracle" or settings.oracle is not None)
    for arm in settings.arms:
        _check_arm(arm, settings)
    return settings.arms


def _check_arm(arm: str, settings: Settings) -> None:
    """Raise, naming the arm, when it is unknown or the settings lack the blueprint it plays."""
    if arm not in ARMS:
        raise ValueError(f"arms: {arm!r} is not one of: {', '.join(ARMS)}")
    if arm == "oracle" and settings.oracle is None:
        raise ValueError("arms: 'oracle' needs settings that name its blueprint (oracle = ...)")
    if arm.startswith("planter") and settings.planter is None:
        raise ValueError(f"arms: {arm!r} needs settings that name the blueprint to plant (planter = ...)")


def arm_policy(arm: str, agent: Agent | None, settings: Settings):
    """The policy an arm plays with; sampling draws from the run seed's evaluation stream."""
    run_seed = settings.run.seed
    if arm in ("ppo_greedy", "ppo_sampled"):
        if agent is None:
            raise ValueError(f"arm {arm!r} needs a trained agent")
        return PPOPolicy(agent, seed=stream_seed(run_seed, 0, Stream.EVALUATION), greedy=arm == "ppo_greedy", partner=settings.partner())
    _check_arm(arm, settings)
    makers: dict[str, Callable] = {
        "static": StaticPolicy,
        "heuristic": HeuristicPolicy,
        "random": lambda: RandomPolicy(seed=stream_seed(run_seed, 0, Stream.EVALUATION)),
        "oracle": lambda: OraclePolicy(settings.oracle),
        "planter": lambda: PlanterPolicy(settings.planter),
        "planter_regrow": lambda: PlanterPolicy(settings.planter, regrow=True),
    }
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
) -> list[str]:
    """Play `settings.eval_episodes` held-out episodes with each arm, recorded as eval runs
    `<parent_run>-eval-<arm>`; returns their run ids. `on_episode(arm)` after each batch.
    `arms`: default, every arm of the settings (`played_arms`)."""
    episodes = settings.eval_episodes
    if episodes < 1:
        raise ValueError(f"eval_episodes={episodes} must be >= 1 to evaluate")
    config, seeds = settings.run, eval_seeds(settings.run.seed, episodes)
    n = batch_size(episodes, settings.envs)
    run_ids = []
    with VecEnv(config, n, min(settings.workers, n)) as vec:
        for arm in played_arms(settings) if arms is None else arms:
            policy = arm_policy(arm, agent, settings)
            run_id = f"{parent_run}-eval-{arm}"
            learned = dataclasses.asdict(settings.policy) if arm.startswith("ppo") else None
            with Recorder(
                root, cohort, config, run_id=run_id, parent_run=parent_run, kind="eval", arm=arm, preset=preset, policy_config=learned
            ) as recorder:
                run_episodes(
                    vec,
                    policy,
                    recorder=recorder,
                    seeds=seeds,
                    on_step=lambda _, __, results: on_episode(arm) if on_episode and results[0].done else None,
                )
            run_ids.append(run_id)
    return run_ids
