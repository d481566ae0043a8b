"""A pack member saves its trained policy beside its telemetry, and `esper-lab evaluate` plays it
again: on the member's own held-out episodes it records exactly the member's eval runs; on other
seeds, hosts or data it records new eval runs of the same training run; a bad file is one line."""

from __future__ import annotations

import json

import pytest
import torch

from esper_lab.cli import main
from esper_lab.experiments.member import run_member
from esper_lab.experiments.saved import load_policy, policy_path
from esper_lab.telemetry import Store

# the stage1 smoke member, smaller still: seconds of compute
TINY = {"episode_length": 3, "batches_per_step": 2, "data_fraction": 0.25, "arms": ["ppo_greedy", "ppo_sampled", "static"], "workers": 0}
TABLES = ("steps", "slots", "decisions", "events")


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    """(telemetry root, training run id, its saved policy file) of one tiny stage1 member."""
    root = tmp_path_factory.mktemp("telemetry")
    run_id = run_member("stage1_growth", "growth", 0, "smoke", root, TINY)
    return root, run_id, policy_path(root, "growth", run_id)


def test_the_member_saves_its_trained_policy_in_its_run_folder(member):
    root, run_id, path = member
    saved = load_policy(path)
    assert path.parent == root / "cohort=growth" / f"run={run_id}"  # a rerun of the member deletes it with the run
    assert (saved.run_id, saved.cohort, saved.preset) == (run_id, "growth", "smoke")
    assert saved.settings["episode_length"] == 3 and saved.settings["rounds"] == 1
    assert not list(path.parent.glob(".*.tmp"))  # written atomically


def test_a_saved_policy_replays_the_recorded_eval_runs_exactly(member, capsys):
    root, run_id, path = member
    argv = ["evaluate", str(path), "--telemetry", str(root), "--arms", "ppo_greedy,ppo_sampled"]
    assert main(argv) == 0
    store = Store(root)
    for arm in ("ppo_greedy", "ppo_sampled"):
        for table in TABLES:
            recorded = store.rows(table, run=f"{run_id}-eval-{arm}").drop("run_id")
            replayed = store.rows(table, run=f"{run_id}-reeval-{arm}").drop("run_id")
            assert recorded.height > 0 or table == "events"
            assert replayed.equals(recorded), (arm, table)
    runs = store.runs(kind="eval").filter(store.runs(kind="eval")["run_id"].str.contains("-reeval-"))
    assert set(runs["parent_run"]) == {run_id} and set(runs["status"]) == {"completed"} and set(runs["preset"]) == {"smoke"}
    capsys.readouterr()
    assert main(argv) == 2  # the same name again would overwrite the first re-evaluation
    assert "already holds a re-evaluation" in capsys.readouterr().err


def test_a_saved_policy_plays_other_seeds_hosts_and_data(member):
    root, run_id, path = member
    assert main(["evaluate", str(path), "--telemetry", str(root), "--seeds", "11,12,13", "--set", "host={widths=[10,20]}", "--name", "wide"]) == 0
    argv = ["evaluate", str(path), "--telemetry", str(root), "--episodes", "1", "--set", "data_fraction=0.5", "--name", "half", "--cohort", "other"]
    assert main(argv) == 0
    store = Store(root)
    wide = store.runs(run=f"{run_id}-wide-ppo_greedy").row(0, named=True)
    assert wide["parent_run"] == run_id and wide["status"] == "completed"
    assert json.loads(wide["config_json"])["host"] == {"widths": [10, 20]}
    assert sorted(store.episodes(run=f"{run_id}-wide-ppo_greedy")["episode_seed"]) == [11, 12, 13]
    half = store.runs(cohort="other", run=f"{run_id}-half-ppo_greedy").row(0, named=True)
    assert json.loads(half["config_json"])["data_fraction"] == 0.5 and half["status"] == "completed"
    assert store.episodes(run=f"{run_id}-half-ppo_greedy").height == 1


def test_a_bad_policy_file_or_setting_is_one_error_line(member, tmp_path, capsys):
    root, _, path = member
    garbage, foreign, module = tmp_path / "garbage.pt", tmp_path / "foreign.pt", tmp_path / "module.pt"
    garbage.write_bytes(b"not a torch file")
    torch.save({"weights": torch.zeros(2)}, foreign)
    torch.save(torch.nn.Linear(2, 2), module)  # would run code to load: refused
    cases = {
        str(tmp_path / "missing.pt"): "no policy file at",
        str(garbage): "is not an esper-lab policy file",
        str(foreign): "is not an esper-lab policy file",
        str(module): "is not an esper-lab policy file",
    }
    for file, message in cases.items():
        assert main(["evaluate", file, "--telemetry", str(tmp_path / "out")]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("esper-lab: error: ") and message in line
    refused = {"host={depth=3}": "host has unknown keys", "policy.hidden=8": "policy.*", "eval_episodes=-1": "eval_episodes=-1"}
    for flags, message in [*((["--set", s], m) for s, m in refused.items()), (["--arms", "nope"], "'nope'")]:
        assert main(["evaluate", str(path), "--telemetry", str(tmp_path / "out"), *flags]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert message in line
    assert not (tmp_path / "out").exists()  # refused before anything was recorded
