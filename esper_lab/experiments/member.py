"""One pack member: PPO on one (cohort, seed) under the pack's preset, recorded as telemetry.

This is what each papermill run of a pack notebook calls; the notebook then reads the result
back through the store.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tqdm.auto import tqdm

from esper_lab.env import VecEnv
from esper_lab.experiments.packs import load_pack
from esper_lab.policy import Agent, PolicyConfig
from esper_lab.ppo import PPOConfig, PPOTrainer
from esper_lab.telemetry import Recorder
from esper_lab.telemetry.parts import run_folder


def member_run_id(cohort: str, seed: int, preset: str, encoder: str) -> str:
    """Stable per (cohort, seed, preset, encoder): a retried member replaces its failed telemetry,
    and a flat vs slot_transformer A/B in one root keeps both runs."""
    return f"{cohort}-seed{seed}-{preset}-{encoder}"


def run_member(
    pack: str, cohort: str, seed: int, preset: str, telemetry_root: str | Path, encoder: str = "flat"
) -> str:
    """Train the PPO policy for the preset's rounds; return the run id it was recorded under."""
    spec = load_pack(pack)
    config = spec.run_config(cohort, seed, preset)
    budget = spec.presets[preset]
    run_id = member_run_id(cohort, seed, preset, encoder)
    folder = run_folder(telemetry_root, cohort, run_id)
    if folder.exists():  # a failed or killed earlier attempt: the runner only retries those
        shutil.rmtree(folder)
    vec = VecEnv(config, budget.envs)
    with Recorder(telemetry_root, cohort, config, run_id=run_id, kind="ppo", preset=preset) as recorder:
        n_slots = vec.slot_count()
        agent = Agent(PolicyConfig(encoder=encoder, max_slots=n_slots), seed=seed)
        trainer = PPOTrainer(vec, agent, PPOConfig(seed=seed), recorder)
        for _ in tqdm(range(budget.rounds), desc=f"{cohort} seed={seed}", unit="round"):
            trainer.train_round()
    return run_id
