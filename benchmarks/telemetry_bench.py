"""Telemetry benchmark: recorder rows/second on real env steps, and the latency of every store
query on a generated root (default 10 M `slots` rows).

    python -m benchmarks.telemetry_bench --rows 10_000_000 --root /tmp/esper_bench

The generated root has the recorder's schemas and closed-run layout (one part per table per
run) with plausible values: lifecycle stages, ladder levels, ops (GROW/SHRINK among them),
per-head entropies and masks, vetoes and transition events.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from esper_lab.config import RunConfig
from esper_lab.contracts import HEADS, Blueprint, EventKind, Op, Stage
from esper_lab.policy import RandomPolicy
from esper_lab.telemetry.parts import run_folder, write_part
from esper_lab.telemetry.recorder import FLUSH_EVERY, Recorder
from esper_lab.telemetry.schema import SCHEMA_VERSION, SCHEMAS
from esper_lab.telemetry.store import Store
from esper_lab.vecenv import VecEnv

COHORTS, RUNS_PER_COHORT, ENVS, SLOTS, EPISODE_LENGTH = 4, 5, 4, 8, 50  # a Pack-0-sized grid
REPEATS = 3  # each query's latency is the median of this many runs
BENCH_STEPS = 40  # real env steps collected, then recorded over and over
RECORDED_STEPS = 20_000  # record_step calls timed


def _column(field: pa.Field, n: int, given: dict) -> pa.Array:
    if field.name in given:
        value = given[field.name]
        return value.cast(field.type) if isinstance(value, pa.Array) else pa.array(value, type=field.type)
    if pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_boolean(field.type):
        return pa.array(np.zeros(n, dtype=field.type.to_pandas_dtype()), type=field.type)
    return pa.nulls(n, field.type)


def _table(name: str, run_id: str, n: int, /, **given) -> pa.Table:
    given["run_id"] = pa.repeat(pa.scalar(run_id), n)
    return pa.Table.from_arrays([_column(f, n, given) for f in SCHEMAS[name]], schema=SCHEMAS[name])


def synthetic_run(root: Path, cohort: str, run_id: str, env_steps: int, rng: np.random.Generator) -> None:
    """One run with `env_steps` steps per env, written as one part per table."""
    n = env_steps * ENVS
    env, t = np.repeat(np.arange(ENVS), env_steps), np.tile(np.arange(env_steps), ENVS)
    keys = {"env": env, "episode": t // EPISODE_LENGTH, "step": t % EPISODE_LENGTH + 1}
    op = rng.choice(len(Op), n, p=[0.5, 0.08, 0.02, 0.1, 0.05, 0.05, 0.1, 0.06, 0.02, 0.02])
    veto = rng.random(n) < 0.03
    gain = rng.normal(0.0, 0.01, n) + 0.004 * (op == Op.GROW_INTERNAL)
    folder = run_folder(root, cohort, run_id)
    write_part(
        folder / "steps" / "part-0.parquet",
        _table(
            "steps",
            run_id,
            n,
            **keys,
            done=keys["step"] == EPISODE_LENGTH,
            metric=rng.random(n),
            metric_gain=gain,
            full_metric=np.where(keys["step"] == EPISODE_LENGTH, rng.random(n), np.nan),
            forward_params=rng.integers(0, 20_000, n),
            veto=veto,
            rollback=rng.random(n) < 0.002,
            reward_rent=rng.random(n) * 0.1,
            reward_churn=rng.random(n) * 0.2,
            reward_total=rng.normal(0, 1, n),
            level_change_rate=rng.random(n) * 0.3,
            net_level_change=rng.integers(-3, 4, n).astype(float),
        ),
    )
    masks = {f"{h}_mask": pa.FixedSizeListArray.from_arrays(rng.random(n * len(Op)) < 0.95, len(Op)).cast(pa.list_(pa.bool_())) for h in HEADS}
    legal = rng.random(n) > 0.01
    write_part(
        folder / "decisions" / "part-0.parquet",
        _table(
            "decisions",
            run_id,
            n,
            **keys,
            op=op,
            slot=rng.integers(0, SLOTS, n),
            executed_op=np.where(veto, 0, op),
            vetoed=veto,
            sampled_legal=legal,
            **{f"{h}_entropy": rng.random(n) for h in HEADS},
            **masks,
        ),
    )
    m = n * SLOTS
    stage = rng.choice([int(s) for s in Stage], m)
    blueprint = np.where(stage == Stage.DORMANT, -1, rng.integers(0, len(Blueprint), m))
    ladder = blueprint >= Blueprint.CONV_CHANNEL_LADDER
    write_part(
        folder / "slots" / "part-0.parquet",
        _table(
            "slots",
            run_id,
            m,
            **{k: np.repeat(v, SLOTS) for k, v in keys.items()},
            slot=np.tile(np.arange(SLOTS), n),
            stage=stage,
            blueprint=blueprint,
            max_level=np.where(ladder, 4, 0),
            internal_level=np.where(ladder, rng.integers(0, 5, m), 0),
            seed_param_count_active=rng.integers(0, 5000, m),
            in_forward=np.isin(stage, [Stage.BLENDING, Stage.HOLDING, Stage.FOSSILIZED]).astype(np.int8),
            contribution_measured=(rng.random(m) < 0.25).astype(np.int8),
            contribution=rng.normal(0, 0.01, m).astype(np.float32),
            delta_l2_norm=rng.random(m, dtype=np.float32),
            alpha=rng.random(m, dtype=np.float32),
        ),
    )
    # events: a transition every other step or so, a level change per executed grow/shrink, a veto per veto
    level = np.flatnonzero(~veto & np.isin(op, [Op.GROW_INTERNAL, Op.SHRINK_INTERNAL]))
    rows = np.concatenate([rng.choice(n, n // 2, replace=False), level, np.flatnonzero(veto)])
    kind = np.repeat([int(EventKind.TRANSITION), int(EventKind.LEVEL_CHANGED), int(EventKind.VETO)], [n // 2, len(level), int(veto.sum())])
    name = np.where(kind == EventKind.TRANSITION, "TRAINING->BLENDING", "governor_veto_internal_grow")
    name[n // 2 : n // 2 + len(level)] = [Op(o).name for o in op[level]]
    order = np.argsort(rows, kind="stable")
    e = len(rows)
    write_part(
        folder / "events" / "part-0.parquet",
        _table(
            "events",
            run_id,
            e,
            **{k: v[rows[order]] for k, v in keys.items()},
            kind=kind[order],
            slot=rng.integers(0, SLOTS, e),
            name=name[order],
            value=rng.integers(1, 7, e).astype(float),
        ),
    )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "kind": "synthetic",
        "task": "digits_cnn",
        "seed": 0,
        "config_json": RunConfig().to_json(),
        "started_at": datetime.now(UTC),
        "status": "completed",
        "steps_recorded": n,
    }
    write_part(folder / "runs" / "part-0.parquet", pa.Table.from_pylist([manifest], schema=SCHEMAS["runs"]))


def synthetic_root(root: Path, slot_rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    env_steps = slot_rows // (COHORTS * RUNS_PER_COHORT * ENVS * SLOTS)
    for c in range(COHORTS):
        for r in range(RUNS_PER_COHORT):
            synthetic_run(root, f"cohort{c}", f"run{c}-{r}", env_steps, rng)


def time_queries(store: Store, cohort: str, run: str) -> list[tuple[str, str, float, int]]:
    """(query, scope, median seconds, result rows) for every named query, whole root and one run."""
    queries = [
        "runs",
        "rent_churn",
        "conv_heavy_share",
        "episode_outcomes",
        "learning_curve",
        "cohort_behaviour",
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
    ]
    results = []
    for name in queries:
        method = getattr(store, name)
        scopes = [("all", {}), ("cohort", {"cohort": cohort})] + ([("run", {"run": run})] if name != "cohort_behaviour" else [])
        for scope, kwargs in scopes:
            times = []
            for _ in range(REPEATS):
                start = time.perf_counter()
                frame = method(**kwargs)
                times.append(time.perf_counter() - start)
            results.append((name, scope, statistics.median(times), frame.height))
    return results


def recorder_rate(flush_every: int = FLUSH_EVERY) -> dict[str, float]:
    """Rows/s of `record_step` (flushes and the closing compaction included) on real step results."""
    config = RunConfig(task="digits_cnn_deep", density="a1", episode_length=BENCH_STEPS, batches_per_step=1, data_fraction=0.1)
    vec, policy = VecEnv(config, 1), RandomPolicy(0)
    results = vec.reset()
    captured, env_start = [], time.perf_counter()
    for _ in range(BENCH_STEPS):
        acts = policy.act(results)
        results = vec.step(acts)
        captured.append((acts[0], results[0]))
    env_seconds = (time.perf_counter() - env_start) / BENCH_STEPS
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        with Recorder(root, "bench", config, run_id="bench", flush_every=flush_every) as recorder:
            for i in range(RECORDED_STEPS):
                action, result = captured[i % BENCH_STEPS]
                recorder.record_step(0, i // BENCH_STEPS, action, result)
        seconds = time.perf_counter() - start
        store = Store(root)
        rows = {t: store.sql(f"SELECT count(*) AS n FROM {t}")["n"][0] for t in ("steps", "slots", "decisions", "events")}
    total = sum(rows.values())
    return {
        "steps": RECORDED_STEPS,
        "rows": total,
        "seconds": seconds,
        "rows_per_s": total / seconds,
        "slot_rows_per_s": rows["slots"] / seconds,
        "us_per_step": seconds / RECORDED_STEPS * 1e6,
        "env_step_ms": env_seconds * 1e3,
        "slots_per_step": rows["slots"] / RECORDED_STEPS,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=lambda s: int(s.replace("_", "")), default=10_000_000, help="slots rows to generate")
    parser.add_argument("--root", default=None, help="where to generate (default: a temporary folder, removed after)")
    parser.add_argument("--flush-every", type=int, default=FLUSH_EVERY, help="recorder steps per part")
    parser.add_argument("--skip-recorder", action="store_true")
    parser.add_argument("--skip-queries", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not args.skip_recorder:
        rate = recorder_rate(args.flush_every)
        print(
            f"recorder: {rate['steps']} steps x {rate['slots_per_step']:.0f} slots -> {rate['rows']} rows in "
            f"{rate['seconds']:.2f} s: {rate['rows_per_s']:,.0f} rows/s ({rate['slot_rows_per_s']:,.0f} slot rows/s), "
            f"{rate['us_per_step']:.0f} us per record_step vs {rate['env_step_ms']:.0f} ms per env step "
            f"(flush_every={args.flush_every})"
        )
    if args.skip_queries:
        return
    root = Path(args.root or tempfile.mkdtemp(prefix="esper_bench_"))
    try:
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        synthetic_root(root, args.rows)
        print(f"generated {args.rows:,} slots rows under {root} in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        store = Store(root)
        print(f"Store(root), every part's footer checked: {(time.perf_counter() - start) * 1e3:.0f} ms")
        print(f"{'query':<26} {'scope':<7} {'median ms':>10} {'rows':>10}")
        for name, scope, seconds, rows in time_queries(store, "cohort1", "run1-2"):
            print(f"{name:<26} {scope:<7} {seconds * 1e3:>10.0f} {rows:>10}")
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
