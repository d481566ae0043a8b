"""Exact full-retrain Shapley audits (seed 003 §5.3): train every coalition of the candidate seeds
under the protocol, credit each seed, set the credit beside what the run measured and decided,
and record it all as labels a critic can learn from (the `audits` table).

The subset trainings are independent jobs. With `workers` > 0 they run on a local Dask cluster
of that many single-threaded worker processes, which die with this one, and with a `scheduler`
on that Dask cluster (the pack runner's engine, `experiments.cluster`); each on one torch thread.

The interval: each replicate's credits are an exact Shapley decomposition of one draw of the
protocol's randomness (its coalitions share an episode seed), so the R per-replicate values of a
seed are independent draws, and `phi` is their mean with a Student-t 95% interval.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from distributed import as_completed
from scipy import stats

from esper_lab.audit.protocol import AUDIT_THREADS, DEFAULT_CANDIDATES, DEFAULT_REPLICATES, Protocol, Training, from_run, train
from esper_lab.audit.shapley import coalitions, exact_shapley, leave_one_out, t_interval
from esper_lab.contracts import Blueprint, Op, RunKind
from esper_lab.experiments.cluster import engine
from esper_lab.telemetry import Recorder, Store

CI_METHOD = "95% Student-t interval over the per-replicate exact values"


def coalition_key(coalition: frozenset) -> str:
    """`{}` or `{3,5}`: a coalition of slots as the `subset_values` map's key."""
    return "{" + ",".join(str(s) for s in sorted(coalition)) + "}"


@dataclass(frozen=True)
class Audit:
    protocol: Protocol
    values: dict[tuple[frozenset, int], float]  # (coalition, replicate) -> v
    skipped: int  # recorded actions the gating made illegal, played as WAIT (0 in a clean audit)
    wall_seconds: float
    workers: int

    def table(self, replicate: int) -> dict[frozenset, float]:
        """v of every coalition in one replicate."""
        return {c: v for (c, r), v in self.values.items() if r == replicate}

    def mean_table(self) -> dict[frozenset, float]:
        """v of every coalition, averaged over the replicates."""
        return {c: float(np.mean([self.values[c, r] for r in range(self.protocol.replicates)])) for c in coalitions(self.protocol.players)}

    def phi_replicates(self) -> dict[int, list[float]]:
        """Each candidate's exact Shapley value in every replicate."""
        per = [exact_shapley(self.table(r), self.protocol.players) for r in range(self.protocol.replicates)]
        return {slot: [p[slot] for p in per] for slot in self.protocol.players}

    def credits(self) -> pl.DataFrame:
        """`rows` to read: per candidate, phi with its interval, leave-one-out, and the run's own
        view of the seed (online contribution, fate)."""
        return pl.DataFrame(
            [
                {
                    "slot": row["slot"],
                    "blueprint": Blueprint(row["blueprint"]).name.lower(),
                    "germinated_step": row["germinated_step"],
                    **{k: row[k] for k in ("phi", "phi_low", "phi_high", "loo", "contribution")},
                    "fate": "kept" if row["fate_op"] is None else Op(row["fate_op"]).name,
                    "fate_step": row["fate_step"],
                }
                for row in self.rows()
            ]
        )

    def value_table(self) -> pl.DataFrame:
        """v(S) per coalition: mean and standard deviation over the replicates, and each value."""
        rows = []
        for c in coalitions(self.protocol.players):
            values = [self.values[c, r] for r in range(self.protocol.replicates)]
            rows.append(
                {"coalition": coalition_key(c), "size": len(c), "v_mean": float(np.mean(values)), "v_std": float(np.std(values, ddof=1)), "v": values}
            )
        return pl.DataFrame(rows)

    def rows(self) -> list[dict]:
        """The `audits` rows of this audit (every column but the audit's run id)."""
        p = self.protocol
        replicates = self.phi_replicates()
        loo = [leave_one_out(self.table(r), p.players) for r in range(p.replicates)]
        subset_values = [(coalition_key(c), [self.values[c, r] for r in range(p.replicates)]) for c in coalitions(p.players)]
        description = json.dumps({**p.describe(), "ci": CI_METHOD, "skipped_actions": self.skipped, "workers": self.workers}, sort_keys=True)
        rows = []
        for c in p.candidates:
            phi, low, high = t_interval(replicates[c.slot])
            rows.append(
                {
                    "env": p.env,
                    "episode": p.episode,
                    "step": p.step,
                    "audited_run": p.audited_run,
                    "slot": c.slot,
                    "surface_uid": c.surface_uid,
                    "blueprint": int(c.blueprint),
                    "germinated_step": c.germinated_step,
                    "phi": phi,
                    "phi_low": low,
                    "phi_high": high,
                    "phi_replicates": replicates[c.slot],
                    "loo": float(np.mean([x[c.slot] for x in loo])),
                    "contribution": c.contribution,
                    "contribution_step": c.contribution_step,
                    "fate_op": None if c.fate_op is None else int(c.fate_op),
                    "fate_step": c.fate_step,
                    "candidates": len(p.candidates),
                    "replicates": p.replicates,
                    "subset_values": subset_values,
                    "metric": p.metric,
                    "protocol_json": description,
                    "wall_seconds": self.wall_seconds,
                }
            )
        return rows


def run_audit(protocol: Protocol, workers: int = 0, on_job: Callable[[], None] | None = None, scheduler: str | None = None) -> Audit:
    """Train every (coalition, replicate) of the protocol: on `scheduler`'s Dask cluster, or on
    a local one of `workers` processes (0: here, one after another); `on_job()` after each."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers={workers!r} must be an integer >= 0 (0: in this process)")
    jobs = [(c, r) for r in range(protocol.replicates) for c in coalitions(protocol.players)]
    started = time.perf_counter()
    results = _run_jobs(protocol, jobs, workers, scheduler, on_job or (lambda: None))
    return Audit(protocol, {job: r.value for job, r in zip(jobs, results)}, sum(r.skipped for r in results), time.perf_counter() - started, workers)


def _run_jobs(protocol: Protocol, jobs: list[tuple[frozenset, int]], workers: int, scheduler: str | None, on_job: Callable[[], None]) -> list:
    if workers == 0 and scheduler is None:
        with _threads(AUDIT_THREADS):
            results = []
            for coalition, replicate in jobs:
                results.append(train(protocol, coalition, replicate))
                on_job()
            return results
    with engine(scheduler, min(workers, len(jobs)) or 1, f"{os.getpid()}.{time.time_ns()}") as cluster:
        futures = {cluster.client.submit(_train, protocol, c, r, pure=False): i for i, (c, r) in enumerate(jobs)}
        try:
            results: list[Training | None] = [None] * len(jobs)
            for future in as_completed(futures):
                results[futures[future]] = future.result()  # a training's error is raised here
                on_job()
            return results
        finally:
            cluster.client.cancel(list(futures))  # after an error (or Ctrl-C): nothing queued starts


def _train(protocol: Protocol, coalition: frozenset, replicate: int) -> Training:
    """One subset training on a Dask worker, on the audit's thread count."""
    with _threads(AUDIT_THREADS):
        return train(protocol, coalition, replicate)


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_audit(audit: Audit, root: str | Path, cohort: str | None = None, audit_id: str | None = None) -> str:
    """Record the audit as a run of kind `audit` (parent: the audited run; the audited run's
    config and preset) holding its `audits` rows; return its run id."""
    p = audit.protocol
    audit_id = audit_id or f"{p.audited_run}-audit-s{p.step}-{secrets.token_hex(3)}"
    with Recorder(root, cohort or p.cohort, p.config, run_id=audit_id, parent_run=p.audited_run, kind=RunKind.AUDIT, preset=p.preset) as recorder:
        recorder.record_audit(audit.rows())
    return audit_id


def audit_run(
    root: str | Path,
    run_id: str,
    step: int | None = None,
    env: int = 0,
    episode: int = 0,
    slots: tuple[int, ...] | None = None,
    replicates: int = DEFAULT_REPLICATES,
    max_candidates: int = DEFAULT_CANDIDATES,
    workers: int = 0,
    on_job: Callable[[], None] | None = None,
) -> tuple[Audit, str]:
    """Audit the seeds of a recorded run at `step` (default: the episode's last) and record the
    audit under the same telemetry root; return the audit and its run id."""
    store = Store(root)
    try:
        protocol = from_run(store, run_id, step, env, episode, slots, replicates, max_candidates)
    finally:
        store.close()
    audit = run_audit(protocol, workers, on_job)
    return audit, write_audit(audit, root)


def agreement(audits: pl.DataFrame) -> dict:
    """Did the policy keep what Shapley credits and prune what it does not? Over audited seeds
    (rows of `Store.audits`): Spearman's rho between phi and the online contribution, the share
    of pruned seeds with phi <= 0, the share of kept ones with phi > 0, and how many seeds' phi
    intervals exclude 0. Counts say how much evidence each share rests on."""
    probed = audits.drop_nulls("contribution").filter(pl.col("contribution").is_not_nan())
    rho = None
    if probed.height >= 3 and probed["phi"].n_unique() > 1 and probed["contribution"].n_unique() > 1:
        rho = float(stats.spearmanr(probed["phi"].to_numpy(), probed["contribution"].to_numpy()).statistic)
    pruned = audits.filter(pl.col("fate_op") == int(Op.PRUNE))
    kept = audits.filter(pl.col("fate_op").is_null() | (pl.col("fate_op") == int(Op.FOSSILIZE)))
    return {
        "seeds": audits.height,
        "rank_correlation": rho,
        "rank_correlation_seeds": probed.height,
        "pruned": pruned.height,
        "pruned_phi_nonpositive_share": _share(pruned, pl.col("phi") <= 0),
        "kept": kept.height,
        "kept_phi_positive_share": _share(kept, pl.col("phi") > 0),
        "phi_ci_above_zero": audits.filter(pl.col("phi_low") > 0).height,
        "phi_ci_below_zero": audits.filter(pl.col("phi_high") < 0).height,
    }


def _share(frame: pl.DataFrame, condition: pl.Expr) -> float | None:
    return None if frame.is_empty() else frame.filter(condition).height / frame.height
