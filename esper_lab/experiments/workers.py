"""What runs where a pack member runs: `execute`, one member as one papermill run, and the
process bookkeeping around it.

`execute` is the Dask task of a member (see `cluster`). It holds the member's lock while it runs,
so a duplicate of it (a rerun while a remote worker still runs the first, or Dask retrying a
member whose worker it lost) waits, then finds the member done instead of running it again;
`run_member` holds a second lock, on the member's telemetry, from inside the kernel, so a kernel
that outlives its killed worker by a moment cannot write beside the retry. Every kernel of a local
pack run carries `RUN_TAG` in its environment, so the runner can kill it on Ctrl-C, and a rerun
can kill the leftovers of a killed run before it starts.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from esper_lab.contracts import MemberStatus

RUN_TAG = "ESPER_LAB_PACK_RUN"  # environment variable: "<run token>/"
# Cores one study may use when something above it shares the machine out (each of the runner's
# --jobs members gets cores // jobs for its env workers); unset: every core this process may use.
CORES_ENV_VAR = "ESPER_LAB_CORES"
KERNEL_START_RETRIES = 2  # kernel launches can race for a port when several start at once
_KERNEL_START_ERRORS = ("Kernel died before replying", "Address already in use", "Kernel didn't respond")

# The curated notebooks, shipped in the package (in a checkout, `esper_lab/notebooks` links to the
# top-level `notebooks/`); a pack's `notebook` is a name in here, or a path of its own.
NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def cores() -> int:
    """Cores this study may use: $ESPER_LAB_CORES when set, else this process's CPU affinity."""
    text = os.environ.get(CORES_ENV_VAR)
    if text is None:
        return len(os.sched_getaffinity(0))
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"${CORES_ENV_VAR}={text!r} must be an integer >= 1")
    return int(text)


def write_status(path: Path, status: dict) -> None:
    """Replace a member's status file atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(status, indent=1))
    os.replace(temporary, path)


def status(task: dict, state: str, started: float, error: str | None = None, **extra) -> dict:
    return {
        "status": state,
        "preset": task["parameters"]["preset"],
        "parameters": task["parameters"],  # a rerun with other parameters (another telemetry root) is new work
        "seconds": round(time.time() - started, 1),
        "error": error,
        **extra,
    }


def tagged(prefix: str) -> list[int]:
    """Pids of the live processes whose `RUN_TAG` starts with `prefix` (read from /proc: Linux only)."""
    wanted = f"{RUN_TAG}={prefix}".encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if any(item.startswith(wanted) for item in environment.split(b"\0")):
            pids.append(int(entry.name))
    return pids


def kill_tagged(prefix: str, timeout: float = 10.0) -> None:
    """SIGKILL every process tagged `prefix...` and wait until none is left."""
    deadline = time.monotonic() + timeout
    while pids := tagged(prefix):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of an earlier pack run survive SIGKILL")
        time.sleep(0.05)


@contextmanager
def held(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing), waiting for any other holder; the OS
    drops it when its holder dies, so a killed holder never leaves it taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def execute(task: dict) -> dict:
    """Run one member (papermill) unless it is already done with these parameters; write and
    return its status (a failed run is recorded, never raised)."""
    import papermill

    status_file = Path(task["status_file"])
    with held(status_file.with_suffix(".lock")):
        if status_file.is_file():
            previous = json.loads(status_file.read_text())
            if previous["status"] == MemberStatus.COMPLETED and previous["parameters"] == task["parameters"]:
                return previous  # a duplicate: the first copy did the work
        started = time.time()
        write_status(status_file, status(task, MemberStatus.RUNNING, started, worker_pid=os.getpid(), host=socket.gethostname()))
        if task["cores"] is not None:
            os.environ[CORES_ENV_VAR] = str(task["cores"])  # the kernel inherits it
        # Dask's nanny gives its workers MALLOC_TRIM_THRESHOLD_=65536 so they hand memory back; a
        # kernel that inherits it trims its heap far more often, and the smoke pack ran 1.2x slower.
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        Path(task["output"]).parent.mkdir(parents=True, exist_ok=True)
        notebook = NOTEBOOKS_DIR / task["notebook"]  # this worker's installation of the package (or the pack's own path)
        error = None
        for _ in range(1 + KERNEL_START_RETRIES):
            try:
                papermill.execute_notebook(
                    str(notebook),
                    task["output"],
                    parameters=task["parameters"],
                    kernel_name="python3",
                    progress_bar=False,
                    cwd=str(notebook.parent),
                )
                error = None
                break
            except Exception as exc:  # noqa: BLE001 - a failed run is data: it is recorded, not raised
                error = f"{type(exc).__name__}: {exc}"
                if not any(marker in str(exc) for marker in _KERNEL_START_ERRORS):
                    break
        result = status(
            task, MemberStatus.FAILED if error else MemberStatus.COMPLETED, started, error, worker_pid=os.getpid(), host=socket.gethostname()
        )
        write_status(status_file, result)
        return result
