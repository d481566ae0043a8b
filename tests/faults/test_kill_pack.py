"""Faults in the pack runner, injected into real processes: `kill -9` of `esper-lab pack run` and of
one of its Dask workers at random points, Ctrl-C sent to its process group as a terminal sends it,
and a second runner on the same folders. After each, no worker or kernel of the run is left, and
every member completes once: Dask reruns a lost worker's member, and a rerun of the pack
completes the others without redoing one that had completed.

Each member is a real smoke run (`run_member`: PPO, telemetry in Parquet) of a tiny pack written
to tmp_path, two cohorts x two seeds on two workers, so a kill finds members both in flight and
queued.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from processes import assert_every_row_once, wait_for

from esper_lab.experiments.workers import tagged
from esper_lab.telemetry import Store

pytestmark = pytest.mark.slow  # every test here runs packs, clusters, wheels or ranks

PACK_TOML = """
name = "tiny"
title = "Tiny pack"
notebook = "{notebook}"
seeds = [0, 1]
control = "base"

[presets.smoke]
rounds = 1
envs = 1
episode_length = 2
batches_per_step = 1
data_fraction = 0.1

[cohorts.base]
task = "digits_cnn"
blueprints = ["conv_heavy"]

[cohorts.ladder]
task = "digits_cnn"
blueprints = ["conv_heavy", "conv_channel_ladder"]
"""
REAL_MEMBER = """
import torch
torch.set_num_threads(1)
from esper_lab.experiments.member import run_member
run_member(pack, cohort, seed, preset, telemetry_root, overrides)
"""
MEMBERS = 4
KILL_WINDOW = 10.0  # seconds after the first member starts: a member takes about 5-15 s here
GONE_WITHIN = 5.0  # seconds for a killed run's workers and kernels to be gone (ipykernel polls its parent each 1 s)


def write_pack(tmp_path: Path, member_code: str) -> Path:
    params = nbformat.v4.new_code_cell('pack = "tiny"\npreset = "smoke"\ncohort = "base"\nseed = 0\ntelemetry_root = ""\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(member_code)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "member.ipynb")
    path = tmp_path / "tiny.toml"
    path.write_text(PACK_TOML.format(notebook=tmp_path / "member.ipynb"))
    return path


def command(tmp_path: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "esper_lab.cli",
        "pack",
        "run",
        str(tmp_path / "tiny.toml"),
        "--jobs",
        "2",
        "--no-report",
        "--telemetry",
        str(tmp_path / "telemetry"),
        "--reports",
        str(tmp_path / "reports"),
    ]


def start(tmp_path: Path, log: str = "runner.log") -> subprocess.Popen:
    """`esper-lab pack run` as a terminal starts it: its own process group, Ctrl-C not ignored
    (a shell running pytest in the background passes SIGINT ignored to its children)."""
    with (tmp_path / log).open("w") as out:
        return subprocess.Popen(
            command(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def rerun(tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command(tmp_path), capture_output=True, text=True, timeout=300)


def statuses(tmp_path: Path) -> dict[str, dict]:
    return {
        p.parent.name + "/" + p.name.split(".")[0]: json.loads(p.read_text())
        for p in (tmp_path / "telemetry" / ".members" / "tiny" / "smoke").glob("*/*.status.json")
    }


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = {int(k) for k in children.read_text().split()}
            except OSError:
                continue
            todo.extend(kids - found)
            found |= kids
    return found


def run_processes(tmp_path: Path, runner: int) -> set[int]:
    """The runner's workers and kernels (and anything they started), by tree and by tag."""
    token = json.loads((tmp_path / "telemetry" / ".pack-run.lock").read_text())["token"]
    return descendants(runner) | set(tagged(token + "/"))


def kernels(pids: set[int]) -> set[int]:
    return {p for p in pids if alive(p) and b"ipykernel" in Path(f"/proc/{p}/cmdline").read_bytes()}


def check_resumed(tmp_path: Path, before: dict[str, dict]) -> None:
    """A rerun completes every member, redoes none that had completed, and leaves one completed
    run per member in the telemetry (a killed member's partial telemetry replaced)."""
    done_before = {
        m: tmp_path.joinpath("reports", "tiny", "smoke", m + ".ipynb").stat().st_mtime_ns for m, s in before.items() if s["status"] == "completed"
    }
    result = rerun(tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{MEMBERS}/{MEMBERS} runs completed" in result.stdout
    assert "without encryption" not in result.stderr  # the kernel's transport warning is filtered
    after = statuses(tmp_path)
    assert {s["status"] for s in after.values()} == {"completed"} and len(after) == MEMBERS
    assert {m: tmp_path.joinpath("reports", "tiny", "smoke", m + ".ipynb").stat().st_mtime_ns for m in done_before} == done_before
    runs = Store(tmp_path / "telemetry").runs()
    assert sorted(runs["status"]) == ["completed"] * MEMBERS


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_of_the_runner_takes_its_workers_and_kernels_along_then_a_rerun_resumes(tmp_path, seed):
    write_pack(tmp_path, REAL_MEMBER)
    runner = start(tmp_path)
    try:
        wait_for(lambda: any(s["status"] == "running" for s in statuses(tmp_path).values()), 120, "a member to start")
        time.sleep(random.Random(seed).uniform(0, KILL_WINDOW))
        processes = run_processes(tmp_path, runner.pid)
        assert runner.poll() is None, "the pack finished before the kill: widen the window"
        runner.kill()
        runner.wait()
    finally:
        runner.kill()
    assert processes, "no worker was running at the kill"
    wait_for(lambda: not any(alive(p) for p in processes), GONE_WITHIN, f"processes {sorted(processes)} to die with the runner")
    before = statuses(tmp_path)
    assert "running" in {s["status"] for s in before.values()}  # readable: these were in flight
    check_resumed(tmp_path, before)


@pytest.mark.parametrize("seed", [3, 4])
def test_kill_9_of_a_worker_reruns_its_member_and_the_pack_completes_with_every_row_once(tmp_path, seed):
    write_pack(tmp_path, REAL_MEMBER)
    runner = start(tmp_path)
    try:
        wait_for(lambda: any(s["status"] == "running" for s in statuses(tmp_path).values()), 120, "a member to start")
        time.sleep(random.Random(seed).uniform(0, KILL_WINDOW))
        running = {m: s for m, s in statuses(tmp_path).items() if s["status"] == "running"}
        assert running, "the pack finished before the kill: widen the window"
        member, victim = next((m, s["worker_pid"]) for m, s in running.items())
        its_kernels = kernels(descendants(victim))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not any(alive(p) for p in its_kernels), GONE_WITHIN, f"kernels {its_kernels} of the killed worker to go")
        assert runner.wait(timeout=300) == 0
    finally:
        runner.kill()
    log = (tmp_path / "runner.log").read_text()
    assert f"{MEMBERS}/{MEMBERS} runs completed" in log and "without encryption" not in log
    after = statuses(tmp_path)
    assert {s["status"] for s in after.values()} == {"completed"} and len(after) == MEMBERS
    assert after[member]["worker_pid"] != victim  # run again, by another worker
    assert sorted(Store(tmp_path / "telemetry").runs()["status"]) == ["completed"] * MEMBERS
    assert_every_row_once(tmp_path / "telemetry")


def test_ctrl_c_stops_promptly_marks_members_in_flight_interrupted_and_a_rerun_resumes(tmp_path):
    write_pack(tmp_path, REAL_MEMBER)
    runner = start(tmp_path)
    try:

        def in_flight():
            now = statuses(tmp_path)
            states = [s["status"] for s in now.values()]
            return now if "completed" in states and states.count("running") == 2 else None

        before = wait_for(in_flight, 180, "one member completed and two in flight")
        processes = run_processes(tmp_path, runner.pid)
        os.killpg(runner.pid, signal.SIGINT)  # as a terminal does: to the whole foreground group
        assert runner.wait(timeout=10) == 130
    finally:
        runner.kill()
    wait_for(lambda: not any(alive(p) for p in processes), GONE_WITHIN, f"processes {sorted(processes)} to be stopped")
    log = (tmp_path / "runner.log").read_text().replace("\r", "\n")
    printed = [line for line in log.splitlines() if line.strip() and not line.startswith("tiny smoke")]
    assert len(printed) == 1 and printed[0].startswith("esper-lab: interrupted: 2 member(s) in flight stopped"), printed
    after = statuses(tmp_path)
    running = {m for m, s in before.items() if s["status"] == "running"}
    assert {m for m, s in after.items() if s["status"] == "interrupted"} == running
    assert len(after) == len(before)  # no member started after Ctrl-C
    check_resumed(tmp_path, after)


def test_a_pack_run_with_failed_members_exits_1_and_says_how_many_of_each(tmp_path):
    write_pack(tmp_path, 'if cohort == "ladder":\n    raise RuntimeError("boom")')
    result = rerun(tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "2/4 runs completed; 2 failed (ladder seed=0, ladder seed=1)"
    assert sorted(s["status"] for s in statuses(tmp_path).values()) == ["completed", "completed", "failed", "failed"]


SLEEPY_MEMBER = """
import pathlib, subprocess, time
left = subprocess.Popen(["sleep", "600"], start_new_session=True)  # outlives its kernel, as a stray child would
pathlib.Path(telemetry_root, f"leftover-{cohort}-{seed}").write_text(str(left.pid))
if pathlib.Path(telemetry_root, "hold").exists():
    time.sleep(600)
"""


def test_a_live_runner_keeps_its_folders_and_a_dead_ones_leftovers_are_killed_before_a_rerun(tmp_path):
    write_pack(tmp_path, SLEEPY_MEMBER)
    (tmp_path / "telemetry").mkdir()
    (tmp_path / "telemetry" / "hold").touch()
    first = start(tmp_path)
    try:
        wait_for(lambda: len(list((tmp_path / "telemetry").glob("leftover-*"))) == 2, 120, "two members in flight")
        second = rerun(tmp_path)
        assert second.returncode == 2
        assert second.stderr.strip() == (
            f"esper-lab: error: another pack run (pid {first.pid}) is using {tmp_path / 'telemetry'}: wait for it to end or stop it"
        )
        first.kill()
        first.wait()
    finally:
        first.kill()
    leftovers = [int(p.read_text()) for p in (tmp_path / "telemetry").glob("leftover-*")]
    time.sleep(GONE_WITHIN)  # workers and kernels are gone by now; the strays they started are not
    assert all(alive(p) for p in leftovers)
    (tmp_path / "telemetry" / "hold").unlink()
    third = rerun(tmp_path)
    assert third.returncode == 0, third.stderr
    assert not any(alive(p) for p in leftovers)  # the rerun killed them before starting
    assert {s["status"] for s in statuses(tmp_path).values()} == {"completed"}
    token = json.loads((tmp_path / "telemetry" / ".pack-run.lock").read_text())["token"]
    assert not tagged(token + "/")  # and the rerun's own members left nothing behind
