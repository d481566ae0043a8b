"""The CIFAR-10 loop (issue 13): the workbench's tax, memory, launch time and throughput there.

The data are CIFAR-shaped random pixels at full size (5 x 10,000 training and 10,000 test
images) written in the official python batch format by the loader's own generator
(`data.write_cifar10_batches`) into a temporary data root, so the byte cache and every loader
path run as they do on the real download. Accuracy on random pixels means nothing; seconds and
bytes do. The host is the small CIFAR host (`HOST`, about 5.1k parameters), channels-last as the
task trains it.

`python -m benchmarks cifar` runs this section alone; `python -m benchmarks.cifar --point ...`
is one subprocess measurement (memory and launch time need a fresh interpreter each).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.cases import RememberingVecEnv
from benchmarks.timing import Pairing, pair
from esper_lab.config import RunConfig
from esper_lab.data import DATA_ENV_VAR, batch_indices, load_cifar10, write_cifar10_batches
from esper_lab.env import STRUCTURAL_OPS, MorphEnv
from esper_lab.hosts import CNNConfig, CNNHost
from esper_lab.policy import HeuristicPolicy
from esper_lab.training import loss_of, train_epoch
from esper_lab.vecenv import VecEnv

ROOT = Path(__file__).resolve().parent.parent
PER_BATCH = 10_000  # images per batch file: the official 50k / 10k
HOST = {"widths": (4, 8, 16)}  # the small CIFAR host (about 5.1k parameters)
TAX_STEPS = {50: 8, None: 2}  # episode length per batches_per_step: about 25k and 100k images an episode
THROUGHPUT_ENVS = 4


def config(folder: Path, device: str = "cpu", **changes) -> RunConfig:
    return RunConfig(task="cifar10_cnn", cifar_folder=str(folder), host=HOST, device=device, **changes)


@contextmanager
def cifar_root():
    """A temporary data root holding full-size generated batches (and, once loaded, their cache);
    subprocesses started inside find it through $ESPER_LAB_DATA."""
    with tempfile.TemporaryDirectory() as root:
        before = os.environ.get(DATA_ENV_VAR)
        os.environ[DATA_ENV_VAR] = root
        try:
            folder = Path(root) / "cifar-10-batches-py"
            write_cifar10_batches(folder, PER_BATCH)
            yield folder
        finally:
            if before is None:
                del os.environ[DATA_ENV_VAR]
            else:
                os.environ[DATA_ENV_VAR] = before


def _peak_mib(pid: int | str = "self") -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def _children() -> list[int]:
    return [int(pid) for tasks in Path("/proc/self/task").glob("*/children") for pid in tasks.read_text().split()]


# --- side-by-side pairs --------------------------------------------------------------------------
def loop_tax(folder: Path, batches_per_step: int | None, device: str = "cpu", pairs: int = 3) -> tuple[Pairing, str]:
    """One CIFAR episode inside the whole workbench loop (PPO deciding every step, sensors,
    contribution probes, per-step validation subsample, full validation at the end, recorder, the
    PPO update) / the same host and seeds trained on the same batches in a plain loop that replays
    the episode's actions: a time ratio over the same images, i.e. plain images/s over the loop's."""
    from esper_lab.policy import Agent, PolicyConfig
    from esper_lab.ppo import PPOConfig, PPOTrainer
    from esper_lab.telemetry import Recorder

    run = config(folder, device, episode_length=TAX_STEPS[batches_per_step], batches_per_step=batches_per_step)
    vec = RememberingVecEnv(run, 1, workers=0)
    agent = Agent(PolicyConfig(encoder="slot_transformer"), seed=0)
    untrained = copy.deepcopy(agent.state_dict())
    telemetry = tempfile.TemporaryDirectory()

    def workbench():
        agent.load_state_dict(untrained)  # every pair plays the same episode
        with Recorder(telemetry.name, "tax", run, kind="ppo") as recorder:
            PPOTrainer(vec, agent, PPOConfig(seed=0), recorder).train_round()

    def plain():
        env = MorphEnv(run)
        env.reset()  # the same data, host, plane and optimizer, built before the clock starts
        env.plane.set_sensors(False)
        start = time.perf_counter()
        for action in vec.carried_out:
            env.plane.apply(action)
            if action.op in STRUCTURAL_OPS:
                env.plane.sync_optimizer(env.optimizer)
            env.plane.tick()
            train_epoch(env.host, env.plane, env.split.batches(env.train_rows, run.batch_size, env.data_order, batches_per_step), env.optimizer)
        env.full_evaluation()
        return time.perf_counter() - start

    with telemetry:
        pairing = pair(workbench, plain, pairs=pairs, warmup=1)
    images = run.episode_length * (batches_per_step * run.batch_size if batches_per_step else len(load_cifar10(folder).train_y))
    ops = sorted({a.op.name.lower() for a in vec.carried_out} - {"wait"}) or ["only wait"]
    per_step = f"batches_per_step={batches_per_step}" if batches_per_step else "a full pass a step"
    measured = (
        f"one {run.episode_length}-step CIFAR episode, {per_step} ({images:,} training images): workbench loop "
        f"(untrained PPO, it did {', '.join(ops)}) / plain loop replaying its actions"
    )
    return pairing, measured


def throughput(folder: Path, device: str = "cpu", pairs: int = 3) -> tuple[Pairing, str]:
    """Training images per second of the whole workbench loop (PPO round over 4 envs, a full pass
    a step, env workers on every core) / the same host in a plain single-process eager loop, as a
    researcher writes it (default memory layout, no plane): the plain loop's seconds per image
    over the loop's."""
    from esper_lab.experiments.settings import auto_workers
    from esper_lab.policy import Agent, PolicyConfig
    from esper_lab.ppo import PPOConfig, PPOTrainer

    run = config(folder, device, episode_length=1)
    workers = auto_workers(THROUGHPUT_ENVS)
    split = load_cifar10(folder).to(device)
    images = len(split.train_y)
    vec = VecEnv(run, THROUGHPUT_ENVS, workers=workers)
    trainer = PPOTrainer(vec, Agent(PolicyConfig(encoder="slot_transformer"), seed=0), PPOConfig(seed=0))

    def workbench():
        start = time.perf_counter()
        trainer.train_round()
        return (time.perf_counter() - start) / (THROUGHPUT_ENVS * run.episode_length * images)

    torch.manual_seed(0)
    host = CNNHost(CNNConfig(in_channels=3, image_size=32, **HOST)).to(device)
    optimizer = torch.optim.Adam(host.parameters(), lr=run.lr)
    order = torch.Generator().manual_seed(0)

    def plain():
        start = time.perf_counter()
        for rows in batch_indices(images, run.batch_size, order):
            x, y = split.standardise(split.train_pixels[rows]), split.train_y[rows]
            optimizer.zero_grad(set_to_none=True)
            loss_of(host(x), y).backward()
            optimizer.step()
        return (time.perf_counter() - start) / images

    with vec:
        pairing = pair(plain, workbench, pairs=pairs, warmup=1)
    measured = (
        f"training images/s: workbench loop (PPO round, {THROUGHPUT_ENVS} envs, a full pass of {images:,} images a step, "
        f"{workers} env workers) / the same host in a plain single-process eager loop (default layout, no plane)"
    )
    return pairing, measured


# --- one fresh interpreter per measurement -------------------------------------------------------
def point(kind: str, folder: Path, envs: int, workers: int, device: str) -> dict:
    """In this (fresh) process: `memory` plays one full-pass step in every env (the whole split is
    touched: every training image, then the whole validation split at the episode's end) and
    reports the summed peak RSS; `launch` plays one step at batches_per_step=50 and reports the
    seconds from interpreter start (this process's start time) to that step's end."""
    torch.set_num_threads(1)
    shape = {"episode_length": 1} if kind == "memory" else {"episode_length": 4, "batches_per_step": 50}
    with VecEnv(config(folder, device, **shape), envs, workers=workers) as vec:
        vec.step(HeuristicPolicy().act(vec.reset()))
        launched = time.time() - _process_start()
        peak = _peak_mib() + sum(_peak_mib(pid) for pid in _children())
    return {"peak_mib": peak, "first_step_s": launched}


def _process_start() -> float:
    """This process's start, in epoch seconds (from /proc: the interpreter's own start included)."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def run_point(kind: str, folder: Path, envs: int, workers: int, device: str = "cpu") -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cifar", "--point", kind, str(folder), str(envs), str(workers), device],
        check=False,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cifar {kind} point ({envs} envs, {workers} workers) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def section(device: str = "cpu") -> str:
    """The `## CIFAR-10 loop` markdown section."""
    started = time.perf_counter()
    with cifar_root() as folder:
        cold = time.perf_counter()
        load_cifar10(folder)  # decodes the batches into the byte cache: once per copy of the data
        cold = time.perf_counter() - cold
        rows = []
        for batches, goal in ((50, 1.25), (None, 1.10)):
            pairing, measured = loop_tax(folder, batches, device)
            rows.append(("CIFAR loop tax", measured, pairing, f"<= {goal}", pairing.ratio <= goal))
        pairing, measured = throughput(folder, device)
        rows.append(("CIFAR throughput", measured, pairing, ">= 2.5", pairing.ratio >= 2.5))
        launches = [run_point("launch", folder, 4, 0, device)["first_step_s"] for _ in range(3)]
        memory = {(envs, workers): run_point("memory", folder, envs, workers, device)["peak_mib"] for envs, workers in ((4, 0), (8, 2))}
    lines = ["| benchmark | ratio (median, p10–p90) | goal | met | measured | A / B median |", "|---|---|---|---|---|---|"]
    for name, measured, p, goal, met in rows:
        lines.append(
            f"| {name} | {p.ratio:.3f} ({p.ratio_low:.3f}–{p.ratio_high:.3f}) | {goal} | {'yes' if met else '**no**'} "
            f"| {measured} | {p.a_seconds:.4g} / {p.b_seconds:.4g} ({p.pairs} pairs) |"
        )
    single = [
        ("peak RSS, 4 envs in one process", f"{memory[(4, 0)] / 1024:.2f} GiB", "<= 1.2 GB", memory[(4, 0)] * 2**20 <= 1.2e9),
        ("peak RSS, 8 envs over 2 worker processes (summed)", f"{memory[(8, 2)] / 1024:.2f} GiB", "<= 2 GB", memory[(8, 2)] * 2**20 <= 2e9),
        ("launch to first env step done, 4 envs (median of 3)", f"{statistics.median(launches):.1f} s", "<= 10 s", statistics.median(launches) <= 10),
    ]
    lines += ["", "| measure | value | goal | met |", "|---|---|---|---|"]
    lines += [f"| {name} | {value} | {goal} | {'yes' if met else '**no**'} |" for name, value, goal, met in single]
    caption = (
        f"On `{device}`. Generated CIFAR-shaped data at full size (50,000 / 10,000 images, official batch format), host "
        f"widths {HOST['widths']} channels-last, one torch thread a process. Decoding the batches into the byte cache the "
        f"first time took {cold:.1f} s; every later load in any process maps it. Memory points touch the whole split "
        f"(one full-pass step per env, then the full validation read); the launch point counts from interpreter start "
        f"(imports included) to the end of the first 50-batch step, cache warm. The section took "
        f"{time.perf_counter() - started:.0f} s."
    )
    return f"## CIFAR-10 loop\n\n{caption}\n\n" + "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cifar", description=__doc__)
    parser.add_argument("--point", nargs=5, metavar=("KIND", "FOLDER", "ENVS", "WORKERS", "DEVICE"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.point:
        kind, folder, envs, workers, device = args.point
        print(json.dumps(point(kind, Path(folder), int(envs), int(workers), device)))
    else:
        print(section(args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
