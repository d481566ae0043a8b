"""Run a pack: every (cohort, seed) is one papermill execution of the pack's notebook.

Outputs go to `reports/<pack>/<cohort>/seed=<n>.ipynb`, telemetry to one shared root. Each run
leaves a status file beside its notebook, so re-running a pack skips completed runs and retries
the others; a failed run is recorded with its error and never stops the others. Parameters are
checked against the notebook's `parameters` cell before any kernel starts. One runner at a time
uses a pack's folders (a lock file in each). Members are Dask tasks (`cluster`): on the runner's
own LocalCluster, whose workers die with it, or on a cluster given by its scheduler's address.
Ctrl-C stops the members in flight and marks them `interrupted`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from distributed import as_completed
from tqdm import tqdm

from esper_lab.contracts import MemberStatus
from esper_lab.experiments.cluster import check_folders, check_scheduler, engine
from esper_lab.experiments.packs import Pack
from esper_lab.experiments.workers import NOTEBOOKS_DIR, cores, execute, kill_tagged, status, write_status
from esper_lab.telemetry.recorder import mark_stale_runs

# What a pack run writes goes under the working folder (as `run` and `train` write theirs), not
# under the installed source: `./telemetry/<pack>` and `./reports`, unless told otherwise.
REPORTS_DIR = Path("reports")
TELEMETRY_DIR = Path("telemetry")
# The runner sets these for every member: overriding them would bypass the preset check, split
# the telemetry from the report, or be silently replaced per member.
RESERVED_PARAMETERS = ("pack", "preset", "telemetry_root", "cohort", "seed")
LOCK_NAME = ".pack-run.lock"  # in the reports folder and the telemetry root: {"pid", "token"} of the runner


class PackBusy(ValueError):
    """Another runner holds a folder this run needs."""


class PackInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; the message says what was stopped and how to resume."""


MEMBERS_DIR = ".members"  # in the telemetry root: each member's status lives with the telemetry it wrote


@dataclass(frozen=True)
class Member:
    cohort: str
    seed: int
    output: Path  # the executed notebook
    status_file: Path

    def status(self) -> dict:
        return json.loads(self.status_file.read_text()) if self.status_file.is_file() else {"status": "pending"}


def members(pack: Pack, preset: str, reports_dir: Path = REPORTS_DIR, telemetry_root: Path = TELEMETRY_DIR) -> list[Member]:
    """Every (cohort, seed) of the preset: its notebook under `<reports>/<pack>/<preset>/`, its
    status under the telemetry root it writes to (so a run into another root is new work)."""
    return [
        Member(
            cohort,
            seed,
            reports_dir / pack.name / preset / cohort / f"seed={seed}.ipynb",
            Path(telemetry_root) / MEMBERS_DIR / pack.name / preset / cohort / f"seed={seed}.status.json",
        )
        for cohort in pack.cohorts
        for seed in pack.preset_seeds(preset)
    ]


def notebook_parameters(pack: Pack, preset: str, telemetry_root: Path, overrides: dict) -> dict:
    """The parameters every member shares, checked against the notebook's `parameters` cell."""
    import papermill

    reserved = sorted(set(overrides) & set(RESERVED_PARAMETERS))
    if reserved:
        raise ValueError(
            f"parameters {reserved} are set by the pack runner and cannot be overridden "
            f"(reserved: {', '.join(RESERVED_PARAMETERS)}); choose them with the pack file, --preset or --telemetry"
        )
    notebook = NOTEBOOKS_DIR / pack.notebook
    declared = papermill.inspect_notebook(str(notebook))
    # a pack given by path runs with its own settings, not a shipped pack's of the same name
    shared = {"pack": pack.reference, "preset": preset, "telemetry_root": str(telemetry_root), **overrides}
    unknown = sorted((set(shared) | {"cohort", "seed"}) - set(declared))
    if unknown:
        raise ValueError(f"parameters {unknown} are not in the parameters cell of {notebook.name} (it has: {', '.join(declared)})")
    if preset not in pack.presets:
        raise ValueError(f"preset={preset!r} is not in pack {pack.name!r} (presets: {', '.join(pack.presets)})")
    return shared


@contextmanager
def exclusive(folders: list[Path], token: str) -> Iterator[None]:
    """Hold each folder's lock for the run. A live holder is an error; a dead one (a killed
    runner) is taken over after killing whatever of its run is still alive."""
    with ExitStack() as stack:
        for folder in dict.fromkeys(f.resolve() for f in folders):  # once each: a second flock would wait on the first
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / LOCK_NAME
            path.touch()
            handle = stack.enter_context(path.open("r+"))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the OS when the runner dies
            except BlockingIOError:
                holder = json.loads(handle.read() or "{}").get("pid", "?")
                raise PackBusy(f"another pack run (pid {holder}) is using {folder}: wait for it to end or stop it") from None
            previous = handle.read()
            if previous:
                kill_tagged(json.loads(previous)["token"] + "/")
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "token": token}))
            handle.flush()
        yield


@contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Let the stop finish even if Ctrl-C is pressed again (only the main thread owns signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def task_key(pack: Pack, preset: str, member: Member, task: dict) -> str:
    """The member's Dask key: what it computes (its parameters and where it writes), so the same
    member submitted twice is one task, and another root or other settings are another."""
    digest = hashlib.sha256(json.dumps(task, sort_keys=True).encode()).hexdigest()[:16]
    return f"member-{pack.name}-{preset}-{member.cohort}-seed{member.seed}-{digest}"


def run_pack(
    pack: Pack,
    preset: str,
    jobs: int = 1,
    telemetry_root: Path = TELEMETRY_DIR,
    reports_dir: Path = REPORTS_DIR,
    overrides: dict | None = None,
    scheduler: str | None = None,
) -> dict[tuple[str, int], dict]:
    """Execute every member not yet completed with these parameters, on `scheduler`'s Dask cluster
    or a local one of `jobs` workers; return each member's status."""
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs={jobs!r} must be an integer >= 1")
    if scheduler is not None:
        check_scheduler(scheduler)
    telemetry_root, reports_dir = Path(telemetry_root).resolve(), Path(reports_dir).resolve()  # members run in their notebook's folder
    shared = notebook_parameters(pack, preset, telemetry_root, overrides or {})
    everyone = members(pack, preset, reports_dir, telemetry_root)
    token = f"{os.getpid()}.{time.time_ns()}"  # tags this run's kernels
    # a local member gets its share of this machine; a remote one what its worker's $ESPER_LAB_CORES says
    share = max(1, cores() // jobs) if scheduler is None else None
    with exclusive([Path(telemetry_root), reports_dir / pack.name], token):
        mark_stale_runs(telemetry_root)  # runs a killed runner left `running` say `killed` from now on
        tasks = {
            m: {
                "notebook": pack.notebook,
                "output": str(m.output),
                "status_file": str(m.status_file),
                "parameters": {**shared, "cohort": m.cohort, "seed": m.seed},
                "cores": share,
            }
            for m in everyone
        }
        statuses = {m: m.status() for m in everyone}
        todo = [m for m, s in statuses.items() if s["status"] != MemberStatus.COMPLETED or s.get("parameters") != tasks[m]["parameters"]]
        if todo:
            _execute(pack, preset, todo, tasks, scheduler, jobs, token, len(everyone), [telemetry_root, reports_dir / pack.name])
    return {(m.cohort, m.seed): m.status() for m in everyone}


def _execute(
    pack: Pack, preset: str, todo: list[Member], tasks: dict, scheduler: str | None, jobs: int, token: str, total: int, folders: list[Path]
) -> None:
    """Submit the members, show their progress as they finish, and stop them on Ctrl-C."""
    label = f"{pack.name} {preset}"
    with engine(scheduler, jobs, token) as cluster, tqdm(total=total, initial=total - len(todo), desc=label, unit="run") as bar:
        check_folders(cluster.client, folders, token)
        bar.write(f"{label}: {len(todo)} member(s) on the {cluster.where}")
        futures = {cluster.client.submit(execute, tasks[m], key=task_key(pack, preset, m, tasks[m]), pure=False): m for m in todo}
        finished = set()
        try:
            for future in as_completed(futures):
                member = futures[future]
                finished.add(member)
                bar.update(1)
                if future.status == "finished":
                    done = future.result()
                else:  # the member killed every worker it was given (Dask's allowed-failures), or was lost
                    done = _failed(member, tasks[member], f"{type(future.exception()).__name__}: {future.exception()}")
                where = f" on {done['host']}" if done.get("host") else ""
                bar.write(
                    f"{label}: {member.cohort} seed={member.seed} {done['status']} in {done['seconds']:.0f} s{where}"
                    + (f": {done['error'][:300]}" if done["error"] else "")
                )
        except KeyboardInterrupt:
            with _ctrl_c_ignored():
                cluster.stop(token, list(futures))
                stopped = [m for m in todo if m not in finished and _interrupt(m)]
            left = sum(m not in finished and m not in stopped for m in todo)
            names = ", ".join(f"{m.cohort} seed={m.seed}" for m in stopped) or "none"
            remote = "" if cluster.local else " (on the cluster, a member already running finishes there)"
            raise PackInterrupted(
                f"interrupted: {len(stopped)} member(s) in flight stopped and marked interrupted ({names}){remote}, "
                f"{left} not started; run the same command again to resume"
            ) from None


def _interrupt(member: Member) -> bool:
    """Mark a member that was running `interrupted`; False if it was not running."""
    current = member.status()
    if current["status"] != MemberStatus.RUNNING:
        return False
    write_status(member.status_file, {**current, "status": MemberStatus.INTERRUPTED})
    return True


def _failed(member: Member, task: dict, error: str) -> dict:
    """Record a member Dask gave up on, unless it completed meanwhile."""
    current = member.status()
    if current["status"] == MemberStatus.COMPLETED:
        return current
    failed = status(task, MemberStatus.FAILED, time.time(), error)
    write_status(member.status_file, failed)
    return failed
