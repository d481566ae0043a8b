"""Replay reproduces a recorded run exactly; a counterfactual branch matches its parent before
the branch step and differs from it at that step."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from esper_lab.config import RunConfig
from esper_lab.contracts import Action, Op
from esper_lab.env import MorphEnv
from esper_lab.episodes import run_episodes
from esper_lab.experiments.replay import ReplayError, action_from_row, branch, replay
from esper_lab.policy import HeuristicPolicy, RandomPolicy
from esper_lab.telemetry import Recorder
from esper_lab.telemetry.store import Store
from esper_lab.vecenv import VecEnv

CONFIG = RunConfig(episode_length=5, batches_per_step=2, data_fraction=0.1, density="a1", seed=3)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    with Recorder(root, "replay", CONFIG, run_id="parent", flush_every=4) as recorder:
        run_episodes(VecEnv(CONFIG, 2), RandomPolicy(7), 2, recorder=recorder)
    return root


@pytest.mark.slow
def test_replay_reproduces_the_run_exactly(root, tmp_path):
    result = replay(root, "parent", recorder_root=tmp_path)
    assert result.ok, result.mismatches
    assert result.steps.height == 2 * 2 * CONFIG.episode_length
    manifest = Store(tmp_path).runs().row(0, named=True)
    assert (manifest["kind"], manifest["parent_run"], manifest["run_id"]) == ("replay", "parent", result.replay_run_id)


@pytest.mark.slow
def test_replay_uses_the_recorded_thread_count(root):
    """The parent was recorded with one torch thread; a caller with two still replays it exactly."""
    assert Store(root).runs(run="parent")["torch_threads"].to_list() == [1]
    torch.set_num_threads(2)
    try:
        assert replay(root, "parent").ok
        assert torch.get_num_threads() == 2  # restored afterwards
    finally:
        torch.set_num_threads(1)


def test_replay_reports_a_difference(root, tmp_path):
    """A recording whose config no longer matches what it did is caught, column by column."""
    store = Store(root)
    decisions = store.rows("decisions", run="parent").filter(env=0, episode=0).sort("step")
    with Recorder(tmp_path, "replay", CONFIG.replace(lr=1e-2), run_id="altered") as recorder:
        env = MorphEnv(CONFIG, 0)  # recorded under the original lr, filed under another
        env.reset()
        for row in decisions.iter_rows(named=True):
            action = action_from_row(row)
            recorder.record_step(0, 0, action, env.step(action))
    result = replay(tmp_path, "altered")
    assert not result.ok and any(line.startswith("steps.train_loss") for line in result.mismatches)


def test_branch_diverges_only_from_the_branch_step(root):
    store = Store(root)
    parent = store.rows("decisions", run="parent").filter(env=1, episode=1, vetoed=False)
    step = parent.filter((pl.col("step") >= 2) & (pl.col("executed_op") != int(Op.WAIT)))["step"][0]
    child = branch(root, "parent", step, Action(Op.WAIT), HeuristicPolicy(), env=1, episode=1)

    store.refresh()
    manifest = store.runs(run=child).row(0, named=True)
    assert (manifest["parent_run"], manifest["branch_step"], manifest["kind"], manifest["cohort"]) == ("parent", step, "branch", "replay")
    for table in ("steps", "slots", "events"):
        ours = store.rows(table, run=child).drop("run_id")
        theirs = store.rows(table, run="parent").filter(env=1, episode=1).drop("run_id")
        assert ours.filter(pl.col("step") < step).equals(theirs.filter(pl.col("step") < step)), table
    steps = store.rows("steps", run=child)
    assert steps["step"].to_list() == list(range(1, CONFIG.episode_length + 1))
    at = lambda frame: frame.filter(step=step).drop("run_id")
    assert not at(store.rows("slots", run=child)).equals(at(store.rows("slots", run="parent").filter(env=1, episode=1)))
    assert store.rows("decisions", run=child).filter(step=step)["op"].to_list() == [int(Op.WAIT)]


def test_branch_rejects_bad_steps(root):
    with pytest.raises(ReplayError, match="step=0 must be an integer in 1..5"):
        branch(root, "parent", 0, Action(Op.WAIT), HeuristicPolicy())
    with pytest.raises(ReplayError, match="no run 'nope'"):
        branch(root, "nope", 1, Action(Op.WAIT), HeuristicPolicy())
