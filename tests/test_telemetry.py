"""The flight recorder on real env steps: schemas round trip, sampled -> resolved -> executed,
run status on clean exit, error, SIGTERM and SIGKILL, corrupt parts, and the CLI wiring."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esper_lab.cli import main
from esper_lab.config import RunConfig
from esper_lab.contracts import HEADS, SLOT_COLUMNS, STEP_METRICS, Action, Op
from esper_lab.env import MorphEnv
from esper_lab.episodes import run_episodes
from esper_lab.policy import RandomPolicy
from esper_lab.telemetry import SCHEMA_VERSION, SCHEMAS, Recorder
from esper_lab.telemetry import recorder as recorder_module
from esper_lab.telemetry.parts import write_part
from esper_lab.telemetry.schema import METADATA_KEY, SLOT_TYPES
from esper_lab.telemetry.store import CorruptPart, Store
from esper_lab.vecenv import VecEnv

CONFIG = RunConfig(episode_length=5, batches_per_step=2, data_fraction=0.1, density="a1")
QUERIES = (
    "runs",
    "episodes",
    "episode_outcomes",
    "learning_curve",
    "rent_churn",
    "economy",
    "conv_heavy_share",
    "conv_heavy_share_bands",
    "lifecycle_op_counts",
    "grow_shrink_share",
    "policy_entropy",
    "invalid_action_rate",
    "governor_counts",
    "level_change",
    "oscillation",
    "contributions",
    "grow_lagged_correlation",
    "delta_norm_by_level",
    "fossilisation_ratio",
    "slot_series",
    "event_log",
    "cohort_behaviour",
    "run_status_counts",
)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Two envs, two episodes of a random policy, recorded with small parts; plus what the env returned."""
    root = tmp_path_factory.mktemp("telemetry")
    seen = []
    with Recorder(root, "unit", CONFIG, run_id="rt", flush_every=3) as recorder:
        run_episodes(
            VecEnv(CONFIG, 2),
            RandomPolicy(1),
            2,
            recorder=recorder,
            on_step=lambda episode, actions, results: seen.append((episode, actions, results)),
        )
    return root, seen


def test_schemas_cover_the_env_and_plane_contracts():
    assert tuple(SLOT_TYPES) == SLOT_COLUMNS
    env = MorphEnv(CONFIG)
    assert set(env.reset().metrics) == set(STEP_METRICS)


def test_schema_round_trip(recorded):
    root, seen = recorded
    folder = root / "cohort=unit" / "run=rt"
    for table in ("runs", "steps", "slots", "decisions", "events"):
        parts = list((folder / table).glob("*.parquet"))
        assert len(parts) == 1  # closed runs are compacted
        schema = pq.read_schema(parts[0])
        assert schema.metadata[METADATA_KEY] == str(SCHEMA_VERSION).encode()
        assert schema.remove_metadata() == SCHEMAS[table].remove_metadata()

    store = Store(root)
    steps = store.rows("steps", run="rt")
    slots = store.rows("slots", run="rt")
    assert steps.height == 2 * 2 * CONFIG.episode_length
    for episode, _, results in seen:
        for env, result in enumerate(results):
            row = steps.filter(env=env, episode=episode, step=result.step).row(0, named=True)
            for key, value in result.metrics.items():
                assert row[key] == pytest.approx(value, nan_ok=True), key
            assert row["reward_total"] == result.reward.total and row["done"] == result.done
            got = slots.filter(env=env, episode=episode, step=result.step).sort("slot").select(SLOT_COLUMNS)
            assert np.array_equal(got.to_numpy().astype(np.float32), result.report.values.numpy(), equal_nan=True)
    events = store.rows("events", run="rt")
    assert events.height == sum(len(r.events) for _, _, results in seen for r in results)

    manifest = store.runs(run="rt").row(0, named=True)
    assert manifest["status"] == "completed" and manifest["cohort"] == "unit" and manifest["steps_recorded"] == steps.height
    assert RunConfig.from_json(manifest["config_json"]) == CONFIG
    assert manifest["git_sha"] and manifest["ended_at"] >= manifest["started_at"]


def test_decisions_prove_sampled_resolved_executed(recorded):
    """Every executed GERMINATE's resolved config is what the slot shows right after the step."""
    root, seen = recorded
    store = Store(root)
    decisions = store.rows("decisions", run="rt")
    chosen = [(a.op, a.slot) for _, actions, _ in seen for a in actions]
    assert sorted(chosen) == sorted(zip(map(Op, decisions["op"]), decisions["slot"]))
    joined = store.sql(
        """
        SELECT d.*, s.blueprint AS slot_blueprint, s.blend AS slot_blend, s.alpha_target AS slot_alpha_target
        FROM decisions d JOIN slots s ON s.run = d.run AND s.env = d.env AND s.episode = d.episode
             AND s.step = d.step AND s.slot = d.executed_slot
        WHERE d.executed_op = $germinate""",
        germinate=int(Op.GERMINATE),
    )
    assert joined.height > 0
    for row in joined.iter_rows(named=True):
        assert row["blueprint"] == row["resolved_blueprint"] == row["slot_blueprint"]
        assert row["blend"] == row["resolved_blend"] == row["slot_blend"]
        assert row["resolved_alpha_target"] == row["slot_alpha_target"]
        assert row["resolved_tempo_steps"] in (3, 5, 8) and row["op_logp"] is None
    waits = decisions.filter(executed_op=int(Op.WAIT))
    assert waits["resolved_blueprint"].null_count() == waits.height and waits["executed_slot"].null_count() == waits.height


def test_learned_policy_decision_is_checked_and_stored(tmp_path):
    env = MorphEnv(CONFIG)
    env.reset()
    action = Action(Op.WAIT)
    result = env.step(action)
    masks = {
        "op": [True] * 10,
        "slot": [True] * 6,
        "blueprint": [True] * 14,
        "blend": [True] * 3,
        "curve": [True] * 3,
        "tempo": [True] * 3,
        "target": [False, False, True],
        "decay": [True, False],
        "phage": [True] * 6,
    }
    decision = {h: int(getattr(action, h)) for h in HEADS} | {"value": 0.5, "logp": -3.0, "used": ["op"]}
    decision |= {f"{h}_logp": -0.5 for h in HEADS} | {f"{h}_entropy": 0.25 for h in HEADS} | {f"{h}_mask": masks[h] for h in HEADS}
    with Recorder(tmp_path, "unit", CONFIG, run_id="ppo", kind="ppo") as recorder:
        with pytest.raises(ValueError, match="lacks keys"):
            recorder.record_step(0, 0, action, result, {"op": 0})
        with pytest.raises(ValueError, match="sampled op=1 but the action has op=0"):
            recorder.record_step(0, 0, action, result, decision | {"op": 1})
        recorder.record_step(0, 0, action, result, decision)
        recorder.record_update(0, {"policy_loss": 0.1, "approx_kl": 0.01, "entropy_op": 1.5, "my_timer": 2.0})
    store = Store(tmp_path)
    row = store.rows("decisions").row(0, named=True)
    assert row["value"] == 0.5 and row["target_mask"] == [False, False, True] and row["sampled_legal"] is True
    update = store.rows("updates").row(0, named=True)
    assert update["policy_loss"] == 0.1 and update["entropy_op"] == 1.5 and update["extra"] == {"my_timer": 2.0}


def test_status_on_error_and_bad_names(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with Recorder(tmp_path, "unit", CONFIG, run_id="broken"):
            raise RuntimeError("boom")
    manifest = Store(tmp_path).runs().row(0, named=True)
    assert manifest["status"] == "failed" and manifest["error"] == "RuntimeError: boom"
    with pytest.raises(ValueError, match="cohort='a/b'"):
        Recorder(tmp_path, "a/b", CONFIG)
    with pytest.raises(FileExistsError, match="broken"):
        Recorder(tmp_path, "unit", CONFIG, run_id="broken")


def test_empty_root_gives_empty_views(tmp_path):
    store = Store(tmp_path)
    for name in QUERIES:
        assert getattr(store, name)().height == 0, name


_CHILD = """
import sys, torch
torch.set_num_threads(1)
from esper_lab.config import RunConfig
from esper_lab.vecenv import VecEnv
from esper_lab.episodes import run_episodes
from esper_lab.policy import RandomPolicy
from esper_lab.telemetry import Recorder
config = RunConfig(episode_length=400, batches_per_step=1, data_fraction=0.1, density="a1")
with Recorder(sys.argv[1], "crash", config, run_id="victim", flush_every=2) as recorder:
    run_episodes(VecEnv(config, 1), RandomPolicy(0), 1, recorder=recorder)
"""


def _run_and_signal(root, sig: signal.Signals) -> int:
    """Start a long recorded episode in a subprocess and send `sig` once 3 parts are on disk."""
    process = subprocess.Popen([sys.executable, "-c", _CHILD, str(root)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    steps = root / "cohort=crash" / "run=victim" / "steps"
    deadline = time.monotonic() + 120
    while len(list(steps.glob("part-*.parquet"))) < 3:
        assert process.poll() is None, "the recording subprocess ended before it was signalled"
        assert time.monotonic() < deadline, "no parts appeared within 120 s"
        time.sleep(0.05)
    process.send_signal(sig)
    return process.wait(timeout=120)


@pytest.mark.slow
def test_sigkill_leaves_readable_parts_and_a_running_manifest(tmp_path):
    assert _run_and_signal(tmp_path, signal.SIGKILL) == -signal.SIGKILL
    parts = sorted(tmp_path.rglob("*.parquet"))
    for part in parts:
        pq.read_table(part)  # every visible part is whole
    steps = [p for p in parts if p.parent.name == "steps"]
    assert len(steps) >= 3 and all(pq.read_metadata(p).num_rows == 2 for p in steps)
    store = Store(tmp_path)
    assert store.runs().row(0, named=True)["status"] == "running"
    for name in QUERIES:
        getattr(store, name)()
    assert store.rent_churn(run="victim").height == 2 * len(steps)


@pytest.mark.slow
def test_sigterm_flushes_and_marks_killed(tmp_path):
    assert _run_and_signal(tmp_path, signal.SIGTERM) == -signal.SIGTERM
    store = Store(tmp_path)
    manifest = store.runs().row(0, named=True)
    assert manifest["status"] == "killed" and manifest["error"] == "SIGTERM" and manifest["ended_at"] is not None
    assert store.rows("steps").height == manifest["steps_recorded"]  # the buffer was flushed
    assert len(list((tmp_path / "cohort=crash" / "run=victim" / "steps").iterdir())) == 1  # compacted


def test_corrupt_parts_are_named(tmp_path):
    with Recorder(tmp_path, "unit", CONFIG, run_id="ok") as recorder:
        run_episodes(VecEnv(CONFIG.replace(episode_length=2), 1), RandomPolicy(0), 1, recorder=recorder)
    part = next((tmp_path / "cohort=unit" / "run=ok" / "slots").glob("*.parquet"))
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])  # truncated: the footer is gone
    with pytest.warns(UserWarning, match=f"run=ok/slots/{part.name}"):
        store = Store(tmp_path)  # one bad part is skipped and named, not a wall for the whole root
    assert list(store.bad_parts) == [part] and store.rows("slots").is_empty() and store.rows("steps").height == 2
    with pytest.raises(CorruptPart, match=f"run=ok/slots/{part.name}"):
        store.validate()
    part.write_bytes(data)

    # damaged data pages behind an intact footer: every page is read against its CRC, so the part
    # is quarantined and named like a truncated one, and the rest of the root still reads
    damaged = part.with_name("part-999.parquet")
    values = np.random.default_rng(0).random(200_000)  # big enough that the damage misses the footer
    write_part(damaged, pa.table({"x": values}))
    with damaged.open("r+b") as f:
        f.seek(values.nbytes // 3)
        f.write(b"\xab" * 50_000)
    assert pq.read_metadata(damaged).num_rows == 200_000  # the footer is intact
    with pytest.warns(UserWarning, match="run=ok/slots/part-999.parquet"):
        store = Store(tmp_path)
    assert list(store.bad_parts) == [damaged]
    assert store.rows("slots").height > 0 and store.rows("steps").height == 2  # every other part still reads
    with pytest.raises(CorruptPart, match="part-999.parquet"):
        store.validate()


def _disk_fills_after(monkeypatch, parts: int) -> None:
    """Data parts fail with ENOSPC once `parts` were written; the small manifest still fits."""
    written = []

    def write_part(path, table):
        if len(written) >= parts:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        recorder_module.write_part.__wrapped__(path, table)

    write_part.__wrapped__ = recorder_module.write_part
    monkeypatch.setattr(recorder_module, "write_part", write_part)


def test_a_full_disk_ends_the_run_failed_with_the_error_and_keeps_every_earlier_part(tmp_path, monkeypatch):
    _disk_fills_after(monkeypatch, 3)
    with pytest.raises(OSError, match="No space left"), Recorder(tmp_path, "full", CONFIG, run_id="r", flush_every=1) as recorder:
        run_episodes(VecEnv(CONFIG, 1), RandomPolicy(0), 1, recorder=recorder)
    store = Store(tmp_path)
    manifest = store.runs().row(0, named=True)
    assert manifest["status"] == "failed" and "No space left on device" in manifest["error"]
    assert store.rows("steps").height >= 1 and not store.bad_parts  # what was written before stays whole and readable


def test_a_full_disk_is_one_error_line_and_exit_1(tmp_path, monkeypatch, capsys):
    _disk_fills_after(monkeypatch, 0)
    assert main(["run", "--episode-length", "2", "--set", "batches_per_step=1", "--telemetry", str(tmp_path), "--cohort", "full"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("esper-lab: error: [Errno 28] No space left on device") and not any("Traceback" in line for line in err)
    assert Store(tmp_path).runs()["status"].to_list() == ["failed"]


@pytest.mark.slow
def test_cli_run_records_telemetry(tmp_path, capsys):
    args = ["run", "--episode-length", "2", "--envs", "2", "--workers", "2", "--telemetry", str(tmp_path), "--cohort", "cli"]
    assert main(args) == 0
    assert "telemetry written to" in capsys.readouterr().out
    runs = Store(tmp_path).runs()
    assert runs["cohort"].to_list() == ["cli"] and runs["kind"].to_list() == ["heuristic"]
    assert runs["status"].to_list() == ["completed"] and runs["steps_recorded"].to_list() == [4]  # 2 envs x 2 steps
