"""Run a pack: every (cohort, seed) is one papermill execution of the pack's notebook.

Outputs go to `reports/<pack>/<cohort>/seed=<n>.ipynb`, telemetry to one shared root. Each run
leaves a status file beside its notebook, so re-running a pack skips completed runs and retries
failed ones; a failed run is recorded with its error and never stops the others. Parameters are
checked against the notebook's `parameters` cell before any kernel starts.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from esper_lab.experiments.packs import Pack

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
REPORTS_DIR = REPO_ROOT / "reports"
TELEMETRY_DIR = REPO_ROOT / "telemetry"
KERNEL_START_RETRIES = 2  # kernel launches can race for a port when several start at once
_KERNEL_START_ERRORS = ("Kernel died before replying", "Address already in use", "Kernel didn't respond")


@dataclass(frozen=True)
class Member:
    cohort: str
    seed: int
    output: Path

    @property
    def status_file(self) -> Path:
        return self.output.with_suffix(".status.json")

    def status(self) -> dict:
        return json.loads(self.status_file.read_text()) if self.status_file.is_file() else {"status": "pending"}


def members(pack: Pack, reports_dir: Path = REPORTS_DIR) -> list[Member]:
    return [
        Member(cohort, seed, reports_dir / pack.name / cohort / f"seed={seed}.ipynb")
        for cohort in pack.cohorts
        for seed in pack.seeds
    ]


def notebook_parameters(pack: Pack, preset: str, telemetry_root: Path, overrides: dict) -> dict:
    """The parameters every member shares, checked against the notebook's `parameters` cell."""
    import papermill

    notebook = NOTEBOOKS_DIR / pack.notebook
    declared = papermill.inspect_notebook(str(notebook))
    shared = {"pack": pack.name, "preset": preset, "telemetry_root": str(telemetry_root), **overrides}
    unknown = sorted((set(shared) | {"cohort", "seed"}) - set(declared))
    if unknown:
        raise ValueError(f"parameters {unknown} are not in the parameters cell of {notebook.name} (it has: {', '.join(declared)})")
    if preset not in pack.presets:
        raise ValueError(f"preset={preset!r} is not in pack {pack.name!r} (presets: {', '.join(pack.presets)})")
    return shared


def _write_status(member: Member, status: dict) -> None:
    member.status_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = member.status_file.with_suffix(".tmp")
    temporary.write_text(json.dumps(status, indent=1))
    os.replace(temporary, member.status_file)


def _execute(notebook: str, member: Member, parameters: dict) -> dict:
    """One papermill run in its own process; returns its status (never raises)."""
    import papermill

    started = time.time()
    member.output.parent.mkdir(parents=True, exist_ok=True)
    error = None
    for attempt in range(1 + KERNEL_START_RETRIES):
        try:
            papermill.execute_notebook(
                notebook,
                str(member.output),
                parameters={**parameters, "cohort": member.cohort, "seed": member.seed},
                kernel_name="python3",
                progress_bar=False,
                cwd=str(NOTEBOOKS_DIR),
            )
            error = None
            break
        except Exception as exc:  # noqa: BLE001 - a failed run is data: it is recorded, not raised
            error = f"{type(exc).__name__}: {exc}"
            if not any(marker in str(exc) for marker in _KERNEL_START_ERRORS):
                break
    status = {
        "status": "failed" if error else "completed",
        "preset": parameters["preset"],
        "parameters": parameters,  # a rerun with other parameters (another telemetry root) is new work
        "seconds": round(time.time() - started, 1),
        "error": error,
    }
    _write_status(member, status)
    return status


def run_pack(
    pack: Pack,
    preset: str,
    jobs: int = 1,
    telemetry_root: Path = TELEMETRY_DIR,
    reports_dir: Path = REPORTS_DIR,
    overrides: dict | None = None,
) -> dict[tuple[str, int], dict]:
    """Execute every member not yet completed with these parameters; return each member's status."""
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs={jobs!r} must be an integer >= 1")
    parameters = notebook_parameters(pack, preset, telemetry_root, overrides or {})
    everyone = members(pack, reports_dir)
    statuses = {m: m.status() for m in everyone}
    todo = [m for m, s in statuses.items() if not (s.get("status") == "completed" and s.get("parameters") == parameters)]
    notebook = str(NOTEBOOKS_DIR / pack.notebook)
    with tqdm(total=len(everyone), initial=len(everyone) - len(todo), desc=f"{pack.name} {preset}", unit="run") as bar:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_execute, notebook, m, parameters): m for m in todo}
            for future in as_completed(futures):
                member, status = futures[future], future.result()
                bar.update(1)
                if status["status"] == "failed":
                    bar.write(f"{member.cohort} seed={member.seed} failed: {status['error'][:300]}")
    return {(m.cohort, m.seed): m.status() for m in everyone}
