"""One pack member: PPO on one (cohort, seed) under the pack's preset, then the held-out arms.

This is what each papermill run of a pack notebook calls; the notebook then reads the result
back through the store.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from esper_lab.contracts import ARMS, LEARNED_ARMS, RunKind
from esper_lab.experiments.evaluation import batch_size, eval_run_id, evaluate_arms
from esper_lab.experiments.packs import load_pack
from esper_lab.experiments.saved import policy_path, save_policy
from esper_lab.experiments.settings import played_arms
from esper_lab.experiments.train import train_and_record
from esper_lab.experiments.workers import held
from esper_lab.telemetry.parts import run_folder


def member_run_id(cohort: str, seed: int, preset: str, encoder: str) -> str:
    """Stable per (cohort, seed, preset, encoder): a retried member replaces its failed telemetry,
    and a flat vs slot_transformer A/B in one root keeps both runs."""
    return f"{cohort}-seed{seed}-{preset}-{encoder}"


def clear_attempt(telemetry_root: str | Path, cohort: str, run_id: str) -> None:
    """Delete a failed or killed earlier attempt of a member (the runner only retries those): its
    training run (with the saved policy) and its eval runs, exactly these folders, never a pattern."""
    for run in (run_id, *(eval_run_id(run_id, RunKind.EVAL, arm) for arm in ARMS)):
        folder = run_folder(telemetry_root, cohort, run)
        if folder.exists():
            shutil.rmtree(folder)


def run_member(pack: str | Path, cohort: str, seed: int, preset: str, telemetry_root: str | Path, overrides: dict[str, Any] | None = None) -> str:
    """Train for the preset's rounds, save the trained policy in the training run's folder
    (`saved.policy_path`, for `esper-lab evaluate`), evaluate every arm on the held-out episodes
    (when the preset asks for any), and return the training run's id (the id the arms' runs name as
    their parent, also when `rounds = 0` left nothing to train)."""
    spec = load_pack(pack)
    settings = spec.settings(cohort, seed, preset, overrides)
    run_id = member_run_id(cohort, seed, preset, settings.policy.encoder)
    # One writer at a time: the kernel of a killed attempt may outlive its worker by a moment.
    with held(Path(telemetry_root) / f"cohort={cohort}" / f".{run_id}.lock"):
        clear_attempt(telemetry_root, cohort, run_id)
        train_id, agent = run_id, None  # no ppo arm (or rounds = 0): scripted arms only, nothing to train
        if settings.rounds and any(arm in LEARNED_ARMS for arm in played_arms(settings)):
            with tqdm(total=settings.rounds, desc=f"{cohort} seed={seed}", unit="round") as bar:
                train_id, agent = train_and_record(settings, telemetry_root, cohort, run_id=run_id, preset=preset, on_round=lambda _: bar.update(1))
            save_policy(policy_path(telemetry_root, cohort, train_id), agent, settings, train_id, cohort, preset)
        if settings.eval_episodes:
            batches = settings.eval_episodes // batch_size(settings.eval_episodes, settings.envs)
            with tqdm(total=len(played_arms(settings)) * batches, desc=f"{cohort} seed={seed} held-out", unit="batch") as bar:
                evaluate_arms(settings, agent, telemetry_root, cohort, train_id, preset, on_episode=lambda _: bar.update(1))
        return train_id
