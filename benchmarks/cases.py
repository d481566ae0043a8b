"""The benchmarks: each measures two things side by side and returns one result row."""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.telemetry_bench import recorder_rate, synthetic_root, time_queries
from benchmarks.timing import Pairing, pair, seconds
from esper_lab.config import RunConfig
from esper_lab.contracts import Action, Blueprint, Op, SurfaceDensity, Tempo
from esper_lab.data import load_pydoc_corpus
from esper_lab.env import STRUCTURAL_OPS, MorphEnv
from esper_lab.hosts import TransformerConfig, TransformerHost
from esper_lab.plane import SeedPlane
from esper_lab.telemetry import Store
from esper_lab.training import loss_of, train_epoch
from esper_lab.vecenv import VecEnv

LM_BATCH = 32  # a training step of the default char LM: batch 32 x context 32


@dataclass(frozen=True)
class Row:
    name: str
    measured: str  # what was divided by what
    pairing: Pairing
    goal: str  # e.g. "<= 1.02"
    met: bool


def _at_most(name: str, measured: str, pairing: Pairing, goal: float) -> Row:
    return Row(name, measured, pairing, f"<= {goal:g}", pairing.ratio <= goal)


def _at_least(name: str, measured: str, pairing: Pairing, goal: float) -> Row:
    return Row(name, measured, pairing, f">= {goal:g}", pairing.ratio >= goal)


def _lm_step(host, plane, optimizer, batch) -> callable:
    inputs, target = batch

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_of(host(inputs, plane), target).backward()
        optimizer.step()

    return step


def _a2_lm(seed: int = 0):
    corpus = load_pydoc_corpus(max_chars=20_000)
    torch.manual_seed(seed)
    host = TransformerHost(TransformerConfig(vocab_size=corpus.vocab_size, density=SurfaceDensity.A2))
    ids = corpus.train_ids[: LM_BATCH * 33].view(LM_BATCH, 33)
    return host, (ids[:, :32].contiguous(), ids[:, 1:].contiguous())


def dormant_plane() -> Row:
    """A plane with every A2 surface dormant should cost nothing over the bare host."""
    host, batch = _a2_lm()
    plane = SeedPlane(host, run_seed=0)
    optimizer = torch.optim.Adam(host.parameters(), lr=1e-3)
    pairing = pair(_lm_step(host, plane, optimizer, batch), _lm_step(host, None, optimizer, batch), pairs=300)
    return _at_most("dormant plane", "train step, Transformer + plane with 8 dormant A2 surfaces / bare host", pairing, 1.02)


def gated_phages() -> Row:
    """Fully sedated phages (fossils gated to 0 by Emrakul) should cost what dormant slots cost."""
    host, batch = _a2_lm()
    gated, dormant = SeedPlane(host, run_seed=0), SeedPlane(host, run_seed=0)
    for slot in range(len(gated)):
        for op in (Op.GERMINATE, Op.ADVANCE, Op.ADVANCE):
            gated.apply(Action(op, slot, Blueprint.LORA_PROJ_LADDER, tempo=Tempo.FAST))
    while any(s.alpha != s.alpha_target for s in gated.slots):
        gated.tick()
    for slot in range(len(gated)):
        gated.apply(Action(Op.ADVANCE, slot))
        gated.apply(Action(Op.FOSSILIZE, slot))
        gated.sedate(slot, 0.0, 0)
    gated.tick()
    optimizer = torch.optim.Adam(host.parameters(), lr=1e-3)
    pairing = pair(_lm_step(host, gated, optimizer, batch), _lm_step(host, dormant, optimizer, batch), pairs=300)
    return _at_most("gated phages", "train step, Transformer + 8 A2 phages sedated to 0 / 8 dormant A2 surfaces", pairing, 1.02)


def sensors() -> Row:
    """On-device sensors with a ladder on every surface: sensors on / off."""
    host, batch = _a2_lm()
    plane = SeedPlane(host, run_seed=0)
    for slot in range(len(plane)):
        for op in (Op.GERMINATE, Op.ADVANCE, Op.ADVANCE):
            plane.apply(Action(op, slot, Blueprint.LORA_PROJ_LADDER))
    plane.tick()
    optimizer = torch.optim.Adam([*host.parameters(), *plane.trainable_parameters()], lr=1e-3)
    step = _lm_step(host, plane, optimizer, batch)

    def on():
        plane.set_sensors(True)
        step()

    def off():
        plane.set_sensors(False)
        step()

    pairing = pair(on, off, pairs=200)
    return _at_most("sensors", "train step, sensors on / off, lora_proj_ladder blending on all 8 A2 surfaces", pairing, 1.05)


def lockstep_envs(n_envs: int = 8) -> Row:
    """Env-epochs per second: N envs in a VecEnv with one worker per core versus the same N envs
    stepped one after another in this process."""
    config = RunConfig(task="digits_cnn", episode_length=10_000, batches_per_step=8)
    workers = min(os.cpu_count() or 1, n_envs)
    singles = [MorphEnv(config, i) for i in range(n_envs)]
    for env in singles:
        env.reset()
    waits = [Action(Op.WAIT)] * n_envs

    def one_by_one():
        for env in singles:
            env.step(Action(Op.WAIT))

    with VecEnv(config, n_envs, workers=workers) as vec:
        vec.reset()
        # throughput ratio = (sequential time) / (lockstep time)
        pairing = pair(one_by_one, lambda: vec.step(waits), pairs=20)
    measured = f"env-epochs/s, {n_envs} envs in VecEnv with {workers} worker processes / {n_envs} envs one after another"
    return _at_least("lockstep envs", measured, pairing, 2.0)


class RememberingVecEnv(VecEnv):
    """A VecEnv that keeps the actions its env carried out (a vetoed action did nothing: WAIT)."""

    def reset(self, episode: int = 0, seeds=None):
        self.carried_out = []
        return super().reset(episode, seeds)

    def step(self, actions):
        results = super().step(actions)
        self.carried_out.append(Action(Op.WAIT) if results[0].metrics["veto"] else actions[0])
        return results


def morphogenesis_tax() -> Row:
    """One digits_cnn episode as the workbench runs it (PPO policy deciding every step, plane
    with sensors, governor, economy, per-step evaluation, recorder writing Parquet, the PPO
    update) / the same host with the same seeds, trained for the same epochs in a plain loop.

    The plain loop replays the actions the workbench episode carried out (plane.apply and tick
    only, sensors off), trains the same batches with the same optimizer and evaluates once."""
    from esper_lab.policy import Agent, PolicyConfig
    from esper_lab.ppo import PPOConfig, PPOTrainer
    from esper_lab.telemetry import Recorder

    config = RunConfig(task="digits_cnn")
    vec = RememberingVecEnv(config, 1)
    agent = Agent(PolicyConfig(encoder="slot_transformer", max_slots=vec.slot_count()), seed=0)
    untrained = copy.deepcopy(agent.state_dict())
    folder = tempfile.TemporaryDirectory()

    def workbench():
        agent.load_state_dict(untrained)  # every pair plays the same episode, so pairs compare alike
        with Recorder(folder.name, "tax", config, kind="ppo") as recorder:
            PPOTrainer(vec, agent, PPOConfig(seed=0), recorder).train_round()

    def plain():
        env = MorphEnv(config)
        env.reset()  # the same data, host, plane and optimizer, built before the clock starts
        host, plane, optimizer = env.host, env.plane, env.optimizer
        plane.set_sensors(False)
        start = time.perf_counter()
        for action in vec.carried_out:
            plane.apply(action)
            if action.op in STRUCTURAL_OPS:
                plane.sync_optimizer(optimizer)
            plane.tick()
            train_epoch(host, plane, env.split.batches(env.train_rows, config.batch_size, env.data_order), optimizer)
        env.full_evaluation()
        return time.perf_counter() - start

    with folder:
        pairing = pair(workbench, plain, pairs=15, warmup=1)
    ops = sorted({a.op.name.lower() for a in vec.carried_out} - {"wait"})
    measured = (
        f"one digits_cnn episode ({config.episode_length} epochs): workbench with untrained PPO policy "
        f"(slot transformer; it did {', '.join(ops) or 'only wait'}), economy, recorder, update / plain loop, same seeds"
    )
    return _at_most("morphogenesis tax", measured, pairing, 1.15)


def recorder() -> Row:
    """Per-step recorder time (flushes and compaction included) / per-step env time, digits_cnn."""
    rate = recorder_rate()
    config = RunConfig(task="digits_cnn", episode_length=10_000)
    env = MorphEnv(config)
    env.reset()
    steps = [seconds(lambda: env.step(Action(Op.WAIT))) for _ in range(8)]
    step = statistics.median(steps)
    record = rate["us_per_step"] / 1e6
    ratios = sorted(record / t for t in steps)
    pairing = Pairing(record, step, record / step, ratios[0], ratios[-1], len(steps))
    measured = (
        f"record_step / env step ({rate['rows_per_s']:,.0f} rows/s, {rate['slots_per_step']:.0f} slots a step; "
        "env step = one full digits_cnn epoch + evaluation)"
    )
    return _at_most("recorder", measured, pairing, 0.02)


def store(rows: int = 10_000_000) -> Row:
    """The slowest dashboard query (filtered to one cohort, as the dashboard asks) on 10M slots rows."""
    with tempfile.TemporaryDirectory() as folder:
        synthetic_root(Path(folder), rows)
        timings = time_queries(Store(folder), "cohort0", "run0-0")
    cohort = [t for t in timings if t[1] == "cohort"]
    name, _, slowest, _ = max(cohort, key=lambda t: t[2])
    whole = max(t[2] for t in timings if t[1] == "all")
    pairing = Pairing(slowest, 1.0, slowest, min(t[2] for t in cohort), whole, len(cohort))
    measured = f"seconds, slowest of {len(cohort)} queries per cohort ({name}); p90 column = slowest over the whole root"
    return _at_most("store", measured, pairing, 0.5)


def policy_scaling() -> Row:
    """Slot Transformer decision for 8 environments: 256 slots / 8 slots (attention is S^2)."""
    from benchmarks.policy_bench import BATCH, observation
    from esper_lab.policy import Agent, PolicyConfig
    from esper_lab.policy.heads import noise_sizes

    generator = torch.Generator().manual_seed(0)
    agent = Agent(PolicyConfig(encoder="slot_transformer"))

    def forward(n_slots: int):
        obs = observation(n_slots, generator)
        noise = {h: torch.rand(BATCH, size, generator=generator) for h, size in noise_sizes(n_slots).items()}

        def run():
            with torch.no_grad():
                agent(obs, noise=noise)

        return run

    pairing = pair(forward(256), forward(8), pairs=30)
    return _at_most("policy scaling", f"Slot Transformer forward, batch {BATCH}: 256 slots / 8 slots", pairing, 8.0)


def ppo_rounds() -> Row:
    """PPO rounds of Pack 0's full preset (baseline cohort: 4 envs x 16 steps x 8 batches, digits):
    the envs stepped in this process / over env workers on every core (the default when a study
    has the machine to itself)."""
    from esper_lab.experiments.packs import load_pack
    from esper_lab.experiments.settings import auto_workers
    from esper_lab.policy import Agent
    from esper_lab.ppo import PPOTrainer

    settings = load_pack("pack0").settings("baseline", 0, "full")
    workers = auto_workers(settings.envs)

    def trainer(n_workers: int) -> tuple[VecEnv, PPOTrainer]:
        vec = VecEnv(settings.run, settings.envs, workers=n_workers)
        return vec, PPOTrainer(vec, Agent(settings.policy, seed=0), settings.ppo)

    (alone, one), (spread, two) = trainer(0), trainer(workers)
    with alone, spread:
        pairing = pair(one.train_round, two.train_round, pairs=5, warmup=1)
    rate = lambda s: 60 / s
    measured = (
        f"one PPO round of Pack 0's full preset (4 envs x 16 steps x 8 batches): envs in this process "
        f"({rate(pairing.a_seconds):.1f} rounds/min) / over {workers} env workers ({rate(pairing.b_seconds):.1f} rounds/min)"
    )
    return _at_least("PPO rounds", measured, pairing, 1.5)


CASES = (dormant_plane, gated_phages, sensors, morphogenesis_tax, lockstep_envs, recorder, store, policy_scaling, ppo_rounds)
