"""Scale sweep: how episode wall time and peak memory grow with surfaces and with environments.

Each point runs in a fresh interpreter, so its peak RSS (`ru_maxrss`) is its own and not the
high-water mark of the points before it. `python -m benchmarks.sweep` prints the markdown section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from esper_lab.config import RunConfig
from esper_lab.episodes import run_episodes
from esper_lab.policy.baselines import HeuristicPolicy
from esper_lab.vecenv import VecEnv

ROOT = Path(__file__).resolve().parent.parent
# env steps: enough for the heuristic to germinate, advance, grow and prune a seed
EPISODE_LENGTH = 6
# short "epochs" (batches of 64 per env step) keep the whole sweep near a minute
BATCHES_PER_STEP = {"pydoc_lm": 10, "digits_cnn": 8}
REPEATS = 5  # timed episodes per point; the table shows their median and range
WORKERS = os.cpu_count() or 1  # the parallel rows use one worker process per core
SURFACE_POINTS = [("pydoc_lm", density, 1, 0) for density in ("a0", "a1", "a2")]
ENV_POINTS = [("digits_cnn", "a0", envs, 0) for envs in (1, 2, 4, 8)]
WORKER_POINTS = [("digits_cnn", "a0", envs, min(WORKERS, envs)) for envs in (2, 4, 8)]


def _peak_mib(pid: int | str = "self") -> float:
    """The process's peak RSS (VmHWM). Not `ru_maxrss`: that survives exec, so a child started
    from a big parent would report the parent's peak."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def _children() -> list[int]:
    return [int(pid) for tasks in Path("/proc/self/task").glob("*/children") for pid in tasks.read_text().split()]


def measure(task: str, density: str, envs: int, workers: int) -> dict:
    """One point in this process: an untimed reset (loads and caches the data), then REPEATS
    timed episodes; each replays the same seeds and actions, since reset re-seeds everything."""
    torch.set_num_threads(1)
    imports_mib = _peak_mib()
    config = RunConfig(
        task=task,
        density=density,
        episode_length=EPISODE_LENGTH,
        batches_per_step=BATCHES_PER_STEP[task],
    )
    vec = VecEnv(config, envs, workers=workers)
    surfaces = len(vec.reset()[0].report.values)
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        summaries = run_episodes(vec, HeuristicPolicy())
        seconds.append(time.perf_counter() - start)
    worker_mib = [_peak_mib(pid) for pid in _children()]
    vec.close()
    return {
        "label": f"{task} {density}",
        "surfaces": surfaces,
        "envs": envs,
        "workers": workers,
        "env_steps": envs * EPISODE_LENGTH,
        "germinated": dict(sum((Counter(s.germinated) for s in summaries), Counter())),
        "seconds": seconds,
        "peak_mib": _peak_mib() + sum(worker_mib),
        "imports_mib": imports_mib,
    }


def run_point(task: str, density: str, envs: int, workers: int) -> dict:
    """`measure` in a child interpreter (one thread, as on the 2-core machine); its JSON line."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.sweep", "--point", task, density, str(envs), str(workers)],
        check=False,  # a failure is raised below, with the child's stderr
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"sweep point {task} {density} x{envs} ({workers} workers) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(points: list[dict]) -> str:
    first_seconds = statistics.median(points[0]["seconds"])
    first_mib = points[0]["peak_mib"]
    lines = [
        (
            "| point | surfaces | envs | workers | env steps | seeds germinated (all envs) "
            "| episode s (median, min–max) | vs first row | s / env step | peak RSS MiB | vs first row |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        median = statistics.median(p["seconds"])
        germinated = sorted(p["germinated"].items())
        seeds = ", ".join(f"{count} {name}" for name, count in germinated) or "none"
        lines.append(
            f"| {p['label']} | {p['surfaces']} | {p['envs']} | {p['workers']} | {p['env_steps']} | {seeds} "
            f"| {median:.2f} ({min(p['seconds']):.2f}–{max(p['seconds']):.2f}) | {median / first_seconds:.2f}x "
            f"| {median / p['env_steps']:.3f} | {p['peak_mib']:.0f} | {p['peak_mib'] - first_mib:+.0f} MiB |"
        )
    return "\n".join(lines)


def sweep() -> str:
    """The `## Scale sweep` markdown section: a caption and the surfaces and environments tables."""
    started = time.perf_counter()
    surfaces = [run_point(*point) for point in SURFACE_POINTS]
    envs = [run_point(*point) for point in ENV_POINTS + WORKER_POINTS]
    imports_mib = max(p["imports_mib"] for p in surfaces + envs)
    caption = (
        f"Each point is a fresh `python -m benchmarks.sweep --point` process with one torch thread: one untimed "
        f"reset (data load), then {REPEATS} timed `run_episodes` calls of one {EPISODE_LENGTH}-step episode per "
        f"env (reset included), driven by `HeuristicPolicy`, so seeds are germinated, advanced and grown, not "
        f"left dormant. pydoc_lm trains {BATCHES_PER_STEP['pydoc_lm']} batches a step and digits_cnn "
        f"{BATCHES_PER_STEP['digits_cnn']} (batch 64). Peak RSS is each process's high-water mark (VmHWM), "
        f"summed over the main process and its env workers; importing torch and esper_lab alone takes about "
        f"{imports_mib:.0f} MiB a process, so workers trade memory for speed. The heuristic keeps one or two "
        f"seeds live, so the surfaces table prices surfaces, not filling them (the sensors row above trains a "
        f"seed on all 8 A2 surfaces). "
        f"The sweep took {time.perf_counter() - started:.0f} s."
    )
    return (
        f"## Scale sweep\n\n{caption}\n\n"
        f"Surfaces: pydoc_lm Transformer host, 1 env, density a0 → a1 → a2.\n\n{table(surfaces)}\n\n"
        f"Environments: digits_cnn at a0, `VecEnv` of 1, 2, 4, 8 envs in lockstep, stepped in this process "
        f"(workers 0) and spread over {WORKERS} worker processes.\n\n{table(envs)}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__)
    parser.add_argument(
        "--point",
        nargs=4,
        metavar=("TASK", "DENSITY", "ENVS", "WORKERS"),
        help="measure one point in this process and print it as one JSON line (what the sweep runs per point)",
    )
    args = parser.parse_args()
    if args.point:
        task, density, envs, workers = args.point
        print(json.dumps(measure(task, density, int(envs), int(workers))))
    else:
        print(sweep())
    return 0


if __name__ == "__main__":
    sys.exit(main())
