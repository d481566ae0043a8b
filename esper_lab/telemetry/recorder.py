"""The flight recorder: buffers one run's rows and writes them as atomic Parquet parts.

Layout and atomic writes are in `parts`: a part appears whole or not at all, even under
SIGKILL, and close merges the run's parts into one per table. The `runs` manifest
(the newest `runs/part-<n>.parquet`) is replaced the same way at start, at every flush and at close, with the
run's status: `running` until close, then `completed`, `failed` (with the error) or `killed`
(SIGTERM, Ctrl-C). A run killed with SIGKILL therefore still reads `running`.

One recorded step is appended to the buffer as a single tuple, so a signal can never leave the
buffer holding half a step. Slot rows are kept as the plane's `[S, F]` arrays and turned into
columns once per flush.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import threading
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from esper_lab.config import RunConfig
from esper_lab.contracts import GERMINATION_HEADS, HEADS, REWARD_PARTS, Action, AlphaTarget, Op, RunKind, RunStatus, StepResult, Tempo, heads_used
from esper_lab.telemetry.parts import compact_run, latest_part, replace_single_part, run_folder, truncate_table, write_part
from esper_lab.telemetry.schema import SCHEMA_VERSION, SCHEMAS, SLOT_TYPES, STEP_TYPES, TABLES, UPDATE_STATS

FLUSH_EVERY = 100  # env steps per part: a SIGKILL loses at most this many, and parts stay few

_HEAD_FLOATS = tuple(f"{h}_{p}" for h in HEADS for p in ("logp", "entropy"))
_DECISION_INPUTS = {*HEADS, *(f"{h}_mask" for h in HEADS), *_HEAD_FLOATS, "value", "logp", "used"}

ENDINGS = tuple(s for s in RunStatus if s is not RunStatus.RUNNING)  # what `close` may record


def new_run_id(config: RunConfig) -> str:
    """`<task>-s<seed>-<UTC time>-<random>`: sorts by time, never collides."""
    return f"{config.task}-s{config.seed}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


class _Step(NamedTuple):
    """Everything one `record_step` buffers, appended to the buffer in one go."""

    steps: tuple
    slots: np.ndarray  # [S, F] plane report
    decision: dict
    events: list[tuple]


class Recorder:
    """Records one run (one `RunConfig` played by one VecEnv) under `<root>/cohort=<c>/run=<id>`.

    Use it as a context manager: a clean exit marks the run `completed`, an exception `failed`
    with the error text. SIGTERM flushes, marks it `killed` and then lets the previous handler act.
    `flush_every` counts `record_step` calls, so N envs write a part every flush_every / N steps.
    """

    def __init__(
        self,
        root: str | Path,
        cohort: str,
        config: RunConfig,
        run_id: str | None = None,
        parent_run: str | None = None,
        branch_step: int | None = None,
        flush_every: int = FLUSH_EVERY,
        kind: str = RunKind.BASELINE,  # a `RunKind`, or the CLI's policy name for its `run` episodes
        preset: str | None = None,
        arm: str | None = None,
        ppo_config: dict | None = None,
        policy_config: dict | None = None,
    ):
        if not (isinstance(flush_every, int) and flush_every >= 1):
            raise ValueError(f"flush_every={flush_every!r} must be an integer >= 1")
        self.config = config
        self.run_id = run_id or new_run_id(config)
        self.cohort = cohort
        self.folder = run_folder(root, cohort, self.run_id)
        if (self.folder / "runs").exists():
            raise FileExistsError(f"run {self.run_id!r} already has telemetry at {self.folder}")
        self.flush_every = flush_every
        self._parts = dict.fromkeys(TABLES[1:], 0)
        self._steps_recorded = 0
        sha, dirty = _git_state()
        self._manifest = {
            "run_id": self.run_id,
            "kind": kind,
            "arm": arm,
            "preset": preset,
            "task": config.task,
            "seed": config.seed,
            "config_json": config.to_json(),
            "ppo_config_json": _json(ppo_config),
            "policy_config_json": _json(policy_config),
            "versions": json.dumps(_versions(), sort_keys=True),
            "git_sha": sha,
            "git_dirty": dirty,
            "torch_threads": torch.get_num_threads(),
            "parent_run": parent_run,
            "branch_step": branch_step,
            "started_at": datetime.now(UTC),
            "ended_at": None,
            "error": None,
        }
        self._start()

    @classmethod
    def resume(cls, root: str | Path, cohort: str, run_id: str, episodes: int, updates: int, flush_every: int = FLUSH_EVERY) -> Recorder:
        """Continue recording run `run_id` after a kill: rows of episodes >= `episodes` and
        updates >= `updates` (what the killed attempt recorded past its last checkpoint) are
        dropped, so the resumed training writes each episode exactly once."""
        self = cls.__new__(cls)
        self.folder = run_folder(root, cohort, run_id)
        manifest_part = latest_part(self.folder / "runs")
        if manifest_part is None:
            raise FileNotFoundError(f"no run {run_id!r} to resume at {self.folder}")
        row = pq.read_table(manifest_part).to_pylist()[0]
        self.run_id, self.cohort, self.flush_every = run_id, cohort, flush_every
        self.config = RunConfig.from_json(row["config_json"])
        self._manifest = {k: v for k, v in row.items() if k not in ("schema_version", "status", "steps_recorded", "pid", "host")}
        self._manifest.update(ended_at=None, error=None)
        self._parts = {
            table: truncate_table(self.folder / table, "update" if table == "updates" else "episode", updates if table == "updates" else episodes)
            for table in TABLES[1:]
        }
        steps = sorted((self.folder / "steps").glob("part-*.parquet"))
        self._steps_recorded = sum(pq.read_metadata(p).num_rows for p in steps)
        self._start()
        return self

    def _start(self) -> None:
        self.status = RunStatus.RUNNING
        self._buffer: list[_Step] = []
        self._updates: list[dict] = []
        self._slot_index: list[int] | None = None
        self._busy = self._sigterm_pending = self._closed = False
        self._write_manifest()
        self._previous_handler = None  # set while this recorder's SIGTERM handler is installed
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm) or signal.SIG_DFL

    # --- recording ----------------------------------------------------------------------------
    def record_step(self, env: int, episode: int, action: Action, result: StepResult, decision: dict | None = None) -> None:
        """Record what env `env` did at `result.step`: `action` is the policy's choice; `decision`
        (from a learned policy) holds each head's sampled value, log-prob, entropy and mask."""
        if self._closed:
            raise RuntimeError(f"recorder for run {self.run_id!r} is closed ({self.status})")
        metrics, reward = result.metrics, result.reward
        step = (env, episode, result.step, result.done, result.episode_seed, dict(metrics), tuple(getattr(reward, p) for p in REWARD_PARTS))
        events = [(i, int(e.kind), e.slot, e.surface_uid, e.name, e.value) for i, e in enumerate(result.events)]
        row = self._decision_row(action, metrics.get("veto", 0) > 0, decision)
        self._buffer.append(_Step(step, self._slot_values(result), row, events))
        self._steps_recorded += 1
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def record_update(self, update: int, stats: dict[str, float]) -> None:
        """One PPO update's statistics; names outside `UPDATE_STATS` land in the `extra` map."""
        if self._closed:
            raise RuntimeError(f"recorder for run {self.run_id!r} is closed ({self.status})")
        self._updates.append({"update": int(update), **{k: float(v) for k, v in stats.items()}})

    def record_audit(self, rows: list[dict]) -> None:
        """An audit's `audits` rows (every column but `run_id`), written at once as a new part."""
        if self._closed:
            raise RuntimeError(f"recorder for run {self.run_id!r} is closed ({self.status})")
        schema = SCHEMAS["audits"]
        for row in rows:
            wrong = sorted(set(schema.names[1:]) ^ set(row))
            if wrong:
                raise ValueError(f"audit row has missing or unknown columns {wrong} (expected {schema.names[1:]})")
        with self._critical():
            write_part(
                self.folder / "audits" / f"part-{self._parts['audits']}.parquet",
                pa.Table.from_pylist([{"run_id": self.run_id, **row} for row in rows], schema=schema),
            )
            self._parts["audits"] += 1

    def _slot_values(self, result: StepResult) -> np.ndarray:
        report = result.report
        if self._slot_index is None:
            missing = [c for c in SLOT_TYPES if c not in report.columns]
            if missing:
                raise ValueError(f"plane report lacks slot columns {missing}; telemetry schema expects {list(SLOT_TYPES)}")
            self._slot_index = [report.columns.index(c) for c in SLOT_TYPES]
        return report.values.numpy()[:, self._slot_index]

    @staticmethod
    def _decision_row(action: Action, vetoed: bool, decision: dict | None) -> dict:
        """Sampled head values -> the config the executed op resolved to."""
        op = Op(action.op)
        row = {h: int(getattr(action, h)) for h in HEADS}
        if decision is not None:
            missing = sorted(_DECISION_INPUTS - set(decision))
            if missing:
                raise ValueError(f"decision lacks keys {missing}")
            used = decision["used"]  # the heads that decided (a partner's scripted choices did not)
            for h in used:
                if int(decision[h]) != row[h]:
                    raise ValueError(f"decision sampled {h}={decision[h]} but the action has {h}={row[h]}")
            row.update({h: int(decision[h]) for h in HEADS})
            row.update({f"{h}_mask": [bool(m) for m in decision[f"{h}_mask"]] for h in HEADS})
            # a head the choices before it did not use decided nothing: its log-prob and entropy are null, so
            # per-head means count only the decisions that head made
            row.update({f"{h}_{p}": float(decision[f"{h}_{p}"]) if h in used else None for h in HEADS for p in ("logp", "entropy")})
            row.update(value=float(decision["value"]), logp=float(decision["logp"]))
            row["sampled_legal"] = all(0 <= row[h] < len(row[f"{h}_mask"]) and row[f"{h}_mask"][row[h]] for h in HEADS)
        executed = Op.WAIT if vetoed else op
        row.update(executed_op=int(executed), vetoed=vetoed, executed_slot=None if executed is Op.WAIT else action.slot)
        used = heads_used(executed)
        for h in GERMINATION_HEADS:
            row[f"resolved_{h}"] = int(getattr(action, h)) if h in used else None
        row["resolved_tempo_steps"] = Tempo(action.tempo).steps if "tempo" in used else None
        row["resolved_alpha_target"] = AlphaTarget(action.target).alpha if "target" in used else None
        return row

    # --- writing ------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write buffered rows as new parts and refresh the manifest."""
        with self._critical():
            buffer, self._buffer = self._buffer, []
            updates, self._updates = self._updates, []
            tables = _tables(self.run_id, buffer) if buffer else {}
            if updates:
                tables["updates"] = _updates_table(self.run_id, updates)
            for name, table in tables.items():
                if table.num_rows:
                    write_part(self.folder / name / f"part-{self._parts[name]}.parquet", table)
                    self._parts[name] += 1
            self._write_manifest()

    def _write_manifest(self) -> None:
        row = {
            **self._manifest,
            "schema_version": SCHEMA_VERSION,
            "status": self.status,
            "steps_recorded": self._steps_recorded,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        replace_single_part(self.folder / "runs", pa.Table.from_pylist([row], schema=SCHEMAS["runs"]))

    def close(self, status: RunStatus = RunStatus.COMPLETED, error: str | None = None) -> None:
        """Flush, stamp the end time and final status, and give SIGTERM back to its old handler."""
        if status not in ENDINGS:
            raise ValueError(f"status={status!r} is not one of: {', '.join(ENDINGS)}")
        if self._closed:
            return
        with self._critical():
            self._closed = True
            self._restore_handler()
            write_error = None
            try:
                self.flush()
                compact_run(self.folder, tuple(self._parts))
            except OSError as caught:  # a full disk, say: what is on disk stays readable as it is
                write_error, status = caught, RunStatus.FAILED
                error = "; then ".join(e for e in (error, f"{type(caught).__name__}: {caught}") if e)
            self.status = status
            self._manifest.update(ended_at=datetime.now(UTC), error=error)
            self._write_manifest()  # last: a final status means the parts are merged (if this fails too, the run reads `running`, then `killed`)
            if write_error is not None:
                raise write_error

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close(RunStatus.COMPLETED)
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close(RunStatus.KILLED, error="KeyboardInterrupt")
        else:
            self.close(RunStatus.FAILED, error=f"{exc_type.__name__}: {exc}")

    # --- SIGTERM ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _critical(self):
        """Writing parts or closing: a SIGTERM waits until the outermost such section is done."""
        outer, self._busy = self._busy, True
        try:
            yield
        finally:
            self._busy = outer
        if not outer and self._sigterm_pending:
            self._terminate()

    def _on_sigterm(self, signum, frame) -> None:
        if self._busy:
            self._sigterm_pending = True
            return
        self._terminate()

    def _terminate(self) -> None:
        self.close(RunStatus.KILLED, error="SIGTERM")
        self._restore_handler()  # handlers run in the main thread, so this always succeeds here
        signal.raise_signal(signal.SIGTERM)  # now handled as if this recorder had never been there

    def _restore_handler(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None


# --- rows to Arrow, once per flush -------------------------------------------------------------
def _column(values: list, type_: pa.DataType) -> pa.Array:
    """A typed column from Python values (metrics arrive as floats, flags as 0.0/1.0)."""
    if pa.types.is_boolean(type_):
        values = [None if v is None else bool(v) for v in values]
    elif pa.types.is_integer(type_):
        values = [None if v is None else int(v) for v in values]
    elif pa.types.is_floating(type_):
        values = [None if v is None else float(v) for v in values]
    return pa.array(values, type=type_)


def _tables(run_id: str, buffer: list[_Step]) -> dict[str, pa.Table]:
    n = len(buffer)
    env, episode, step, done, episode_seed, metrics, rewards = zip(*(b.steps for b in buffer))
    steps = {"env": env, "episode": episode, "step": step, "done": done, "episode_seed": episode_seed}
    steps |= {k: [m.get(k) for m in metrics] for k in STEP_TYPES}
    steps |= {f"reward_{p}": [r[i] for r in rewards] for i, p in enumerate(REWARD_PARTS)}
    steps["extra_metrics"] = [[(k, float(v)) for k, v in m.items() if k not in STEP_TYPES] or None for m in metrics]

    values = np.concatenate([b.slots for b in buffer])
    counts = np.array([len(b.slots) for b in buffer])
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    slots = {k: np.repeat(np.asarray(steps[k], dtype=np.int32), counts) for k in ("env", "episode", "step")}
    slots["slot"] = (np.arange(len(values)) - starts).astype(np.int16)
    for i, (name, type_) in enumerate(SLOT_TYPES.items()):
        column = values[:, i]
        slots[name] = np.rint(column).astype(type_.to_pandas_dtype()) if pa.types.is_integer(type_) else column

    decisions = {k: steps[k] for k in ("env", "episode", "step")}
    decisions |= {c: [b.decision.get(c) for b in buffer] for c in SCHEMAS["decisions"].names[4:]}

    events = [(b.steps[0], b.steps[1], b.steps[2], *e) for b in buffer for e in b.events]
    event_columns = SCHEMAS["events"].names[1:]
    events = dict(zip(event_columns, zip(*events))) if events else {c: [] for c in event_columns}

    rows = {"steps": (steps, n), "slots": (slots, len(values)), "decisions": (decisions, n), "events": (events, len(events["env"]))}
    return {name: _table(run_id, name, columns, length) for name, (columns, length) in rows.items()}


def _table(run_id: str, name: str, columns: dict, length: int) -> pa.Table:
    schema = SCHEMAS[name]
    arrays = [pa.repeat(pa.scalar(run_id, pa.string()), length)]
    for field in list(schema)[1:]:
        values = columns[field.name]
        arrays.append(pa.array(values, type=field.type) if isinstance(values, np.ndarray) else _column(list(values), field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _updates_table(run_id: str, updates: list[dict]) -> pa.Table:
    columns = {"update": [u["update"] for u in updates]}
    columns |= {k: [u.get(k) for u in updates] for k in UPDATE_STATS}
    known = {"update", *UPDATE_STATS}
    columns["extra"] = [[(k, v) for k, v in u.items() if k not in known] or None for u in updates]
    return _table(run_id, "updates", columns, len(updates))


def mark_stale_runs(root: str | Path) -> list[str]:
    """Mark `killed` every run under `root` that still reads `running` although its writer, a
    process on this host, is gone (a SIGKILL leaves no chance to say so); return their ids."""
    stale = []
    for folder in Path(root).glob("cohort=*/run=*/runs"):
        try:
            row = pq.read_table(latest_part(folder)).to_pylist()[0]
        except (pa.ArrowException, OSError, IndexError, TypeError):
            continue  # unreadable or gone: the store reports it
        if row["status"] != RunStatus.RUNNING or row.get("host") != socket.gethostname() or row.get("pid") is None or _alive(row["pid"]):
            continue
        row.update(status=RunStatus.KILLED, error=f"stale: its writer (pid {row['pid']}) is gone", ended_at=datetime.now(UTC))
        replace_single_part(folder, pa.Table.from_pylist([row], schema=SCHEMAS["runs"]))
        stale.append(row["run_id"])
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


# --- provenance ---------------------------------------------------------------------------------
def _json(config: dict | None) -> str | None:
    return None if config is None else json.dumps(config, sort_keys=True, default=str)


def _versions() -> dict[str, str]:
    return {
        "esper_lab": metadata.version("esper_lab"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "platform": platform.platform(),
    }


def _git_state() -> tuple[str | None, bool | None]:
    """HEAD of the checkout this package runs from and whether tracked files differ from it."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an installed wheel)
        return None, None
    return sha, bool(status.stdout.strip())
