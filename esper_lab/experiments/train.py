"""The one train-and-record path: what `esper-lab train`, a pack member and the notebooks call.

`train_and_record` trains the PPO policy for the settings' rounds on vectorised envs and records
the run (kind `ppo`, with all three configs in its manifest); with a checkpoint it saves after
every round and flushes telemetry at the same moment, so a killed run resumes into the same run
with no episode recorded twice. `evaluate_arms` (evaluation.py) then plays the held-out episodes.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable
from pathlib import Path

import torch

from esper_lab.checks import ConfigError
from esper_lab.contracts import RunKind
from esper_lab.experiments.settings import SECTIONS, Settings
from esper_lab.policy import Agent
from esper_lab.ppo import CHECKPOINT_VERSION, PPOTrainer
from esper_lab.telemetry import Recorder
from esper_lab.vecenv import VecEnv

# knobs a resume may change: how far to train (the total rounds) and how many processes step the
# envs (speed, never results); anything else would record another run under the same id
RESUMABLE = ("rounds", "workers")


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
    if checkpoint is not None and checkpoint.is_file():
        check_resume(checkpoint, settings, root, cohort)  # the same run, or a refusal, before anything is built
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
                kind=RunKind.PPO,
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
                    metadata = {"root": str(Path(root).resolve()), "cohort": recorder.cohort, "run_id": recorder.run_id, "settings": _fixed(settings)}
                    trainer.save(checkpoint, metadata=metadata)
                if on_round is not None:
                    on_round(stats)
    return recorder.run_id, trainer.agent


def check_resume(checkpoint: Path, settings: Settings, root: str | Path, cohort: str) -> None:
    """A resume continues the checkpoint's run, into its telemetry, with its settings; only the
    `RESUMABLE` knobs may differ. Anything else is refused in one line naming the difference."""
    payload = torch.load(checkpoint, weights_only=True)
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"checkpoint {checkpoint} has version {payload.get('version')}, expected {CHECKPOINT_VERSION}: start a new run")
    saved = payload["metadata"]
    if Path(saved["root"]) != Path(root).resolve():
        raise ConfigError(f"checkpoint {checkpoint} records into telemetry root {saved['root']}, not {root}: resume with --telemetry {saved['root']}")
    if saved["cohort"] != cohort:
        raise ConfigError(f"checkpoint {checkpoint} records cohort {saved['cohort']!r}, not {cohort!r}: resume with --cohort {saved['cohort']}")
    now, then = _flat(json.loads(_fixed(settings))), _flat(json.loads(saved["settings"]))
    changed = [
        f"{key}={now.get(key)!r} (the checkpoint's run has {then.get(key)!r})"
        for key in sorted(now.keys() | then.keys())
        if now.get(key) != then.get(key)
    ]
    if changed:
        raise ConfigError(
            f"checkpoint {checkpoint}: a resume continues the same run, but {'; '.join(changed)}; only {', '.join(RESUMABLE)} may change"
        )


def _fixed(settings: Settings) -> str:
    """The settings a resume must keep, as JSON (enums by name)."""
    values = {k: v for k, v in settings.to_dict().items() if k not in RESUMABLE}
    return json.dumps(values, sort_keys=True, default=lambda v: v.name.lower() if isinstance(v, enum.Enum) else str(v))


def _flat(values: dict, prefix: str = "") -> dict:
    """{"ppo": {"lr": 1}} -> {"ppo.lr": 1}: a difference is named by its `--set` key."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and key in SECTIONS:
            out.update(_flat(value, f"{key}."))
        else:
            out[prefix + key] = value
    return out
