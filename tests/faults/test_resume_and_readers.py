"""Faults around telemetry (issue 12 items 4, 5, 6, 9): a killed training resumes into the same
run with no episode twice, readers are isolated from bad parts and from compaction, hand-built
actions are validated, and cohort views count completed runs of the intended kind only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest

from esper_lab.config import RunConfig
from esper_lab.contracts import Action, Blueprint, Op, Stage
from esper_lab.env import MorphEnv
from esper_lab.episodes import run_episodes
from esper_lab.experiments.replay import branch
from esper_lab.policy import HeuristicPolicy, RandomPolicy
from esper_lab.telemetry import Recorder, Store
from esper_lab.telemetry.parts import compact_table, next_part, run_folder, write_part
from esper_lab.telemetry.recorder import mark_stale_runs
from esper_lab.vecenv import VecEnv

TINY = RunConfig(episode_length=3, batches_per_step=1, data_fraction=0.1)
TRAIN = """
import sys, torch
torch.set_num_threads(1)
from esper_lab.experiments.settings import Settings
from esper_lab.experiments.train import train_and_record
settings = Settings.build(dict(episode_length=3, batches_per_step=1, data_fraction=0.1, envs=2, rounds=int(sys.argv[3])))
train_and_record(settings, sys.argv[1], "resume", run_id="r", checkpoint=sys.argv[2],
                 on_round=lambda s: print("round", int(s["round"]), flush=True))
"""


def train(root, checkpoint, rounds: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN, str(root), str(checkpoint), str(rounds)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_a_killed_training_resumes_into_the_same_run_with_every_episode_once(tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    rounds = 30  # a round takes a fraction of a second here: enough that the kill lands mid-way
    process = train(tmp_path, checkpoint, rounds)
    for line in process.stdout:  # kill it right after round 2's checkpoint, in the middle of a later round
        if line.startswith("round 2"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert Store(tmp_path).runs().row(0, named=True)["status"] == "running"  # a SIGKILL leaves no word

    resumed = train(tmp_path, checkpoint, rounds)
    resumed.communicate(timeout=300)
    assert resumed.returncode == 0
    store = Store(tmp_path)
    runs = store.runs()
    assert runs["run_id"].to_list() == ["r"] and runs["status"].to_list() == ["completed"]  # one training, one run
    episodes = store.episodes(run="r")
    assert episodes.height == rounds * 2 and episodes["done"].all()  # every round x 2 envs, each exactly once
    assert episodes.select("env", "episode").is_unique().all()
    assert store.rows("steps", run="r").height == rounds * 2 * 3
    assert store.rows("updates", run="r")["update"].to_list() == list(range(rounds))
    assert runs["steps_recorded"][0] == rounds * 2 * 3


def test_a_stale_running_manifest_is_marked_killed(tmp_path):
    child = (
        "import sys, time\nfrom esper_lab.config import RunConfig\nfrom esper_lab.telemetry import Recorder\n"
        "r = Recorder(sys.argv[1], 'c', RunConfig(), run_id='gone')\nprint('ready', flush=True)\ntime.sleep(600)"
    )
    process = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    assert mark_stale_runs(tmp_path) == []  # alive: left alone
    process.kill()
    process.wait()
    assert mark_stale_runs(tmp_path) == ["gone"]
    manifest = Store(tmp_path).runs().row(0, named=True)
    assert manifest["status"] == "killed" and "gone" in manifest["error"]


def record(root, cohort: str, run_id: str, policy=None, status: str = "completed", kind: str = "ppo") -> None:
    recorder = Recorder(root, cohort, TINY, run_id=run_id, kind=kind)
    run_episodes(VecEnv(TINY, 1), policy or RandomPolicy(0), recorder=recorder)
    if status != "running":
        recorder.close(status)


def test_a_query_about_one_run_never_opens_another_runs_parts(tmp_path):
    record(tmp_path, "c", "good")
    record(tmp_path, "c", "bad")
    part = next((run_folder(tmp_path, "c", "bad") / "steps").glob("*.parquet"))
    part.write_bytes(part.read_bytes()[:100])  # corrupt
    with pytest.warns(UserWarning, match=f"run=bad/steps/{part.name}"):
        store = Store(tmp_path)
    assert store.rows("steps", run="good").height == 3  # the good run is whole
    assert store.rows("steps").height == 3  # the cohort view skips the bad part, named in bad_parts
    assert list(store.bad_parts) == [part]


@pytest.mark.slow
def test_readers_racing_compaction_never_fail(tmp_path):
    """A writer keeps adding parts to one run and compacting them, as a recorder does, while
    readers open stores and query that run and the whole root."""
    record(tmp_path, "c", "busy")
    folder = run_folder(tmp_path, "c", "busy") / "slots"
    table = pq.read_table(next(folder.glob("*.parquet")))
    stop, errors = threading.Event(), []

    def churn():  # a compaction every ~20 ms: far more often than runs close in a real root
        while not stop.is_set():
            for i in range(2):
                write_part(next_part(folder), table.slice(i, 1))
            compact_table(folder)
            time.sleep(0.02)

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        for i in range(150):
            try:
                store = Store(tmp_path)
                store.rows("slots", run="busy")
                store.rows("slots")
            except Exception as error:  # noqa: BLE001 - counted, then reported
                errors.append(repr(error))
    finally:
        stop.set()
        writer.join()
    assert errors == []


def test_cohort_views_count_completed_runs_of_the_intended_kind_only(tmp_path):
    record(tmp_path, "rp", "done")
    record(tmp_path, "rp", "broke", status="failed")
    record(tmp_path, "rp", "stopped", status="killed")
    branch(tmp_path, "done", 2, Action(Op.WAIT), HeuristicPolicy())  # a branch, filed under its parent's cohort
    store = Store(tmp_path)
    assert store.cohort_behaviour().row(0, named=True)["runs"] == 1
    counts = {(r["kind"], r["status"]): r["runs"] for r in store.run_status_counts().iter_rows(named=True)}
    assert counts == {("branch", "completed"): 1, ("ppo", "completed"): 1, ("ppo", "failed"): 1, ("ppo", "killed"): 1}
    assert store.episode_outcomes(kind="ppo")["run_id"].to_list() == ["done"]


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(op=1, slot=True), "Action.slot=True"),
        (dict(op=1, slot=1.0), "Action.slot=1.0"),
        (dict(op=1, slot=-1), "Action.slot=-1"),
        (dict(op=42), "Action.op=42"),
        (dict(op=Op.GERMINATE, blueprint=99), "Action.blueprint=99"),
        (dict(op=Op.WAIT, tempo=5), "Action.tempo=5"),
        (dict(op="germinate"), "Action.op='germinate'"),
    ],
)
def test_hand_built_actions_are_checked_at_construction(fields, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        Action(**fields)


def test_integer_fields_are_coerced_so_an_int_op_germinates_for_real():
    env = MorphEnv(TINY)
    env.reset()
    env.step(Action(1, 0, int(Blueprint.NORM)))  # op and blueprint as plain ints
    slot = env.plane.slots[0]
    assert slot.stage is Stage.GERMINATED and slot.seed is not None and slot.blueprint is Blueprint.NORM
    env.step(Action(0, 0))  # WAIT works after it (it used to raise AttributeError)


def test_resuming_drops_what_the_killed_attempt_recorded_past_its_checkpoint(tmp_path):
    """Parts flushed mid-round (after the last checkpoint) are truncated, so the resumed rounds
    are recorded once: here episodes 0-3 and updates 0-1 were checkpointed, 4-5 and 2 were not."""
    recorder = Recorder(tmp_path, "c", TINY, run_id="k", flush_every=2)
    run_episodes(VecEnv(TINY, 1), RandomPolicy(0), 6, recorder=recorder)
    for update in range(3):
        recorder.record_update(update, {"policy_loss": 0.0})
    recorder.flush()  # then a SIGKILL: no close
    resumed = Recorder.resume(tmp_path, "c", "k", episodes=4, updates=2, flush_every=2)
    store = Store(tmp_path)
    assert sorted(set(store.rows("steps", run="k")["episode"])) == [0, 1, 2, 3]
    assert store.rows("updates", run="k")["update"].to_list() == [0, 1]
    assert sorted(set(store.rows("slots", run="k")["episode"])) == [0, 1, 2, 3]
    resumed.record_update(2, {"policy_loss": 1.0})
    resumed.close()
    store = Store(tmp_path)
    assert store.rows("updates", run="k")["update"].to_list() == [0, 1, 2]
    assert store.runs().row(0, named=True)["status"] == "completed" and store.runs().row(0, named=True)["steps_recorded"] == 4 * 3
