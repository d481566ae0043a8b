"""Forensic replay (seed 003 §8.2): re-run a recorded run from its manifest, or branch it.

Every episode starts from `MorphEnv.reset(episode_seed)`, which rebuilds host, plane, optimizer
and data order from the episode's seed (recorded in `steps`), and every step after that is a
function of the actions taken.
So re-applying the recorded chosen actions (the `decisions` table) to fresh envs reproduces the
run on the same machine with the recorded torch thread count, each (env, episode) on its own.
`branch` replays one (env, episode) to a step, injects a different action there, lets a policy
continue, and records the result as a new run whose manifest names its parent and branch step.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from esper_lab.config import RunConfig
from esper_lab.contracts import HEADS, Action, RunKind, StepResult
from esper_lab.env import MorphEnv
from esper_lab.telemetry import Recorder, Store
from esper_lab.telemetry.recorder import FLUSH_EVERY
from esper_lab.telemetry.schema import POLICY_COLUMNS

# What a replay must reproduce exactly: every recorded column except the policy's internals
# (log-probs, entropies, masks, value), which a replay without the policy cannot know.
COMPARED: dict[str, tuple[str, ...]] = {"steps": (), "slots": (), "events": (), "decisions": POLICY_COLUMNS}
_SORT = {
    "steps": ["env", "episode", "step"],
    "slots": ["env", "episode", "step", "slot"],
    "events": ["env", "episode", "step", "seq"],
    "decisions": ["env", "episode", "step"],
}


class ReplayError(RuntimeError):
    """The recording cannot be replayed as asked (unknown run, gap in its steps, bad branch step)."""


@dataclass(frozen=True)
class ReplayResult:
    run_id: str
    replay_run_id: str
    mismatches: list[str]  # one line per differing table/column; empty when the replay is exact
    steps: pl.DataFrame  # the replay's `steps` rows

    @property
    def ok(self) -> bool:
        return not self.mismatches


def recorded_run(store: Store, run_id: str) -> tuple[dict, RunConfig]:
    """The run's manifest row and the `RunConfig` rebuilt from it."""
    manifest = store.runs(run=run_id)
    if manifest.is_empty():
        raise ReplayError(f"no run {run_id!r} under {store.root}")
    row = manifest.row(0, named=True)
    return row, RunConfig.from_json(row["config_json"])


@dataclass(frozen=True)
class RecordedEpisode:
    """One recorded episode, ready to play again up to `step`: what an audit and an export rebuild."""

    manifest: dict
    config: RunConfig
    seed: int  # the episode seed
    decisions: pl.DataFrame  # its decisions rows, steps 1..n in order
    step: int  # the step asked for (default: the episode's last)


def recorded_episode(store: Store, run_id: str, env: int, episode: int, step: int | None = None) -> RecordedEpisode:
    """The run's config, the episode's seed and decisions, and `step` checked against them."""
    manifest, config = recorded_run(store, run_id)
    seed = episode_seeds(store, run_id).get((env, episode))
    if seed is None:
        raise ReplayError(f"run {run_id!r} has no env {env} episode {episode}")
    decisions = store.rows("decisions", run=run_id).filter((pl.col("env") == env) & (pl.col("episode") == episode)).sort("step")
    recorded = decisions["step"].to_list()
    if recorded != list(range(1, len(recorded) + 1)):
        raise ReplayError(f"run {run_id!r} env {env} episode {episode}: recorded steps are not 1..{len(recorded)}")
    step = len(recorded) if step is None else step
    if not (isinstance(step, int) and 1 <= step <= len(recorded)):
        raise ValueError(f"step={step!r} must be an integer in 1..{len(recorded)} (the recorded steps)")
    return RecordedEpisode(manifest, config, seed, decisions, step)


def action_from_row(row: dict) -> Action:
    """The action the policy chose, from a `decisions` row."""
    return Action(**{h: row[h] for h in HEADS if row[h] is not None})  # a head an older writer lacked: its default


def episode_seeds(store: Store, run_id: str) -> dict[tuple[int, int], int]:
    """(env, episode) -> the seed that episode was played from."""
    frame = store.episodes(run=run_id)
    return {(e, k): seed for e, k, seed in frame.select("env", "episode", "episode_seed").iter_rows()}


def _play(config: RunConfig, env_index: int, episode: int, seed: int, decisions: pl.DataFrame, recorder: Recorder) -> tuple[MorphEnv, StepResult]:
    """Reset env `env_index` to episode seed `seed` and re-apply one episode's recorded actions,
    recording each step."""
    env = MorphEnv(config, env_index)
    result = env.reset(seed)
    for row in decisions.iter_rows(named=True):
        if row["step"] != result.step + 1:
            raise ReplayError(f"env {env_index} episode {episode}: recording jumps from step {result.step} to {row['step']}")
        action = action_from_row(row)
        result = env.step(action)
        recorder.record_step(env_index, episode, action, result)
    return env, result


@contextlib.contextmanager
def recorded_threads(count: int | None):
    """Run with the recorded torch thread count (it changes float reductions), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(count or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def replay(store_or_root: Store | str | Path, run_id: str, recorder_root: str | Path | None = None) -> ReplayResult:
    """Re-run `run_id` from its recorded config and actions and compare every step with the
    recording. The replay is recorded as run `<run_id>-replay-<hex>` under `recorder_root`
    (a temporary folder, deleted afterwards, when None)."""
    store = store_or_root if isinstance(store_or_root, Store) else Store(store_or_root)
    manifest, config = recorded_run(store, run_id)
    decisions = store.rows("decisions", run=run_id)
    seeds = episode_seeds(store, run_id)
    replay_id = f"{run_id}-replay-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory() as scratch, recorded_threads(manifest["torch_threads"]):
        root = Path(recorder_root or scratch)
        with Recorder(root, manifest["cohort"], config, run_id=replay_id, parent_run=run_id, kind=RunKind.REPLAY) as recorder:
            for (env_index, episode), rows in decisions.group_by(["env", "episode"], maintain_order=True):
                _play(config, env_index, episode, seeds[env_index, episode], rows, recorder)
        replayed = Store(root)
        mismatches = [line for table in COMPARED for line in _compare(table, store, run_id, replayed, replay_id)]
        return ReplayResult(run_id, replay_id, mismatches, replayed.rows("steps", run=replay_id))


def _compare(table: str, store: Store, run_id: str, replayed: Store, replay_id: str) -> list[str]:
    ignored = ["cohort", "run_id", *COMPARED[table]]
    recorded = store.rows(table, run=run_id).drop(ignored).sort(_SORT[table])
    again = replayed.rows(table, run=replay_id).drop(ignored).sort(_SORT[table])
    if recorded.height != again.height:
        return [f"{table}: {recorded.height} rows recorded, {again.height} replayed"]
    lines = []
    for column in recorded.columns:
        differs = recorded[column].ne_missing(again[column])
        if differs.any():
            i = int(differs.arg_max())
            where = ", ".join(f"{k}={recorded[k][i]}" for k in _SORT[table])
            lines.append(
                f"{table}.{column}: {int(differs.sum())} rows differ, first at {where} "
                f"(recorded {recorded[column][i]!r}, replayed {again[column][i]!r})"
            )
    return lines


def branch(
    root: str | Path,
    run_id: str,
    step: int,
    action: Action,
    policy,
    cohort: str | None = None,
    env: int = 0,
    episode: int = 0,
    flush_every: int = FLUSH_EVERY,
) -> str:
    """Replay env `env`, episode `episode` of `run_id` up to `step - 1`, take `action` at `step`,
    continue with `policy` to the episode's end, and record it as a new run (returned id) in
    `cohort` (default: the parent's) with `parent_run` and `branch_step` in its manifest."""
    store = Store(root)
    manifest, config = recorded_run(store, run_id)
    if not (isinstance(step, int) and 1 <= step <= config.episode_length):
        raise ReplayError(f"step={step!r} must be an integer in 1..{config.episode_length} (the episode length)")
    decisions = store.rows("decisions", run=run_id).filter((pl.col("env") == env) & (pl.col("episode") == episode) & (pl.col("step") < step))
    if decisions.height != step - 1:
        raise ReplayError(f"run {run_id!r} env {env} episode {episode} has {decisions.height} recorded steps before step {step}")
    seed = episode_seeds(store, run_id).get((env, episode))
    if seed is None:
        raise ReplayError(f"run {run_id!r} has no env {env} episode {episode}")
    branch_id = f"{run_id}-b{step}-{secrets.token_hex(3)}"
    with recorded_threads(manifest["torch_threads"]):
        with Recorder(
            root,
            cohort or manifest["cohort"],
            config,
            run_id=branch_id,
            parent_run=run_id,
            branch_step=step,
            flush_every=flush_every,
            kind=RunKind.BRANCH,
        ) as recorder:
            morph, result = _play(config, env, episode, seed, decisions, recorder)
            while not result.done:
                result = morph.step(action)
                recorder.record_step(env, episode, action, result)
                action = None if result.done else policy.act([result])[0]
    return branch_id
