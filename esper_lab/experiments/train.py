"""The one train-and-record path: what `esper-lab train`, a pack member and the notebooks call.

`train_and_record` trains the PPO policy for the settings' rounds on vectorised envs and records
the run (kind `ppo`, with all three configs in its manifest); with a checkpoint it saves after
every round and flushes telemetry at the same moment, so a killed run resumes into the same run
with no episode recorded twice. `evaluate_arms` (evaluation.py) then plays the held-out episodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from esper_lab.env import VecEnv
from esper_lab.experiments.settings import Settings
from esper_lab.policy import Agent
from esper_lab.ppo import PPOTrainer
from esper_lab.telemetry import Recorder


def train_and_record(
    settings: Settings,
    root: str | Path,
    cohort: str,
    run_id: str | None = None,
    preset: str | None = None,
    checkpoint: str | Path | None = None,
    on_round: Callable[[dict], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> tuple[str, Agent]:
    """Train, record and return (run id, trained agent). With `checkpoint` naming an existing
    file, continue that checkpoint's run where it stopped (its telemetry past the checkpoint,
    from the killed attempt, is dropped first); `on_round(stats)` after every round."""
    checkpoint = None if checkpoint is None else Path(checkpoint)
    with VecEnv(settings.run, settings.envs, settings.workers) as vec:
        if checkpoint is not None and checkpoint.is_file():
            trainer = PPOTrainer.resume(checkpoint, vec, partner=settings.partner())
            where = trainer.metadata
            recorder = Recorder.resume(
                where["root"], where["cohort"], where["run_id"], episodes=trainer.round * trainer.config.episodes_per_round, updates=trainer.round
            )
        else:
            trainer = PPOTrainer(vec, Agent(settings.policy, seed=settings.run.seed), settings.ppo, partner=settings.partner())
            recorder = Recorder(
                root,
                cohort,
                settings.run,
                run_id=run_id,
                kind="ppo",
                preset=preset,
                ppo_config=dataclasses.asdict(settings.ppo),
                policy_config=dataclasses.asdict(settings.policy),
            )
        trainer.recorder = recorder
        with recorder:
            while trainer.round < settings.rounds:
                stats = trainer.train_round(on_step)
                if checkpoint is not None:
                    recorder.flush()  # telemetry and checkpoint describe the same rounds
                    trainer.save(checkpoint, metadata={"root": str(root), "cohort": recorder.cohort, "run_id": recorder.run_id})
                if on_round is not None:
                    on_round(stats)
    return recorder.run_id, trainer.agent
