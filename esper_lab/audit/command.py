"""`esper-lab audit` (also `python -m esper_lab.audit`; arguments in `esper_lab.cli`): audit a
recorded run's seeds, or record the scripted demo run first (`--demo smoke|full`), and print the
v(S) table, the credits beside the run's probe and decisions, the agreement statistics and the
Monte Carlo error curve."""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from esper_lab.audit.demo import demo_preset, record_demo_run
from esper_lab.audit.oracle import Audit, agreement, run_audit, write_audit
from esper_lab.audit.protocol import DEFAULT_CANDIDATES, DEFAULT_REPLICATES, from_run
from esper_lab.audit.shapley import error_curve
from esper_lab.experiments.replay import ReplayError
from esper_lab.telemetry import Store

MC_REPEATS = 200  # independent Monte Carlo estimates per sample count: a stable mean and 95th percentile


def audit_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if (args.run is None) == (args.demo is None):
        raise ValueError("give a run id to audit, or --demo PRESET (not both)")
    run, step, replicates = args.run, args.step, args.replicates
    if args.demo is not None:
        Path(args.root).mkdir(parents=True, exist_ok=True)
        preset = demo_preset(args.demo)
        run = record_demo_run(args.root, args.demo, seed=args.seed)
        step, replicates = step or preset.step, replicates or preset.replicates
        print(f"recorded the {args.demo} demo run {run} under {args.root}")
    slots = None if args.slots is None else _slots(args.slots)
    store = Store(args.root)
    try:
        try:
            protocol = from_run(
                store, run, step, args.env, args.episode, slots, replicates or DEFAULT_REPLICATES, args.max_candidates or DEFAULT_CANDIDATES
            )
        except ReplayError as error:  # an unknown run or episode: bad input, one line
            raise ValueError(str(error)) from None
        with tqdm(total=protocol.trainings, desc=f"audit {run}", unit="training", leave=False) as bar:
            audit = run_audit(protocol, args.workers, on_job=lambda: bar.update(1), scheduler=args.scheduler)
        audit_id = write_audit(audit, args.root)
        print(summary(audit, audit_id, store))
    finally:
        store.close()
    return 0


def _slots(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"--slots {text!r} must be comma-separated slot numbers, e.g. 3,4,5") from None


def summary(audit: Audit, audit_id: str, store: Store) -> str:
    """The audit as text: protocol and wall time, v(S), credits with the run's view, agreement
    (read back through the store) and the Monte Carlo error curve on the mean v table."""
    p = audit.protocol
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=160, fmt_str_lengths=60, float_precision=4, tbl_hide_dataframe_shape=True):
        return "\n".join(
            [
                f"audit {audit_id} of run {p.audited_run} (env {p.env}, episode {p.episode}) at step {p.step}: {len(p.candidates)} seeds, "
                f"{p.replicates} replicates, {len(audit.values)} trainings in {audit.wall_seconds:.1f} s with {audit.workers} worker(s); "
                f"{audit.skipped} recorded action(s) skipped",
                f"\nv(S) = {p.metric} on the whole validation split after {p.step} steps, per replicate (replicate 0 = the recorded episode):",
                str(audit.value_table()),
                "\nShapley credit (mean over replicates, 95% t interval), leave-one-out, the run's online probe and its decision:",
                str(audit.credits()),
                f"\nagreement: {agreement(store.audits(run=audit_id))}",
                "\nMonte Carlo (permutation sampling) and leave-one-out error against exact, on the mean v table "
                f"({MC_REPEATS} estimates per sample count):",
                str(pl.DataFrame(error_curve(audit.mean_table(), p.players, repeats=MC_REPEATS))),
            ]
        )
