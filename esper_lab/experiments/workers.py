"""The pack runner's worker processes: each runs papermill members one at a time, and none of
them, nor their kernels, outlives the runner.

A worker is `python -m esper_lab.experiments.workers RUNNER_PID` in its own process group, so a
terminal's Ctrl-C reaches only the runner, which then stops everything in order. It reads one
task per line on stdin and answers each with the member's status on stdout; anything else it or
its kernel prints goes to stderr, which the runner forwards above its progress bar. It dies with
the runner (PR_SET_PDEATHSIG on Linux, a polling thread elsewhere) and its kernel follows within
a second (ipykernel exits when the JPY_PARENT_PID that jupyter_client sets is gone). Every worker
and kernel carries `RUN_TAG` in its environment, so the runner can kill a kernel whose worker is
already dead, and a rerun can kill the leftovers of a killed run before it starts.
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

RUN_TAG = "ESPER_LAB_PACK_RUN"  # environment variable: "<run token>/<worker number>/"
# Cores one study may use when something above it shares the machine out (each of the runner's
# --jobs members gets cores // jobs for its env workers); unset: every core this process may use.
CORES_ENV_VAR = "ESPER_LAB_CORES"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
KERNEL_START_RETRIES = 2  # kernel launches can race for a port when several start at once
_KERNEL_START_ERRORS = ("Kernel died before replying", "Address already in use", "Kernel didn't respond")
# Kernel log lines a pack's user cannot act on, dropped from the workers' output (they break the
# progress bar): ipykernel warns on every start that its loopback TCP sockets are unencrypted
# (jupyter_client picks the transport), and jupyter_client interrupts every kernel it shuts down,
# which ipykernel sometimes logs as an error. A user's Ctrl-C never reaches a kernel (see above).
KERNEL_NOISE = (b"Kernel is running over TCP without encryption", b"KeyboardInterrupt caught in kernel")


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


# -- the runner's side ---------------------------------------------------------------------------


@dataclass
class _Worker:
    process: subprocess.Popen
    tag: str
    job: tuple | None = None  # (key, task, started) of the member it runs
    gone: bool = False  # its stdin broke: it died idle, and its end is not yet read
    results: bytes = b""  # a partial status line
    output: bytes = b""  # a partial line of stderr


@dataclass
class Pool:
    """Up to `size` workers over the jobs of one pack run; `write` prints a worker's output line.

    Each member's status file says `running` while a worker has it; the worker replaces it with
    `completed` or `failed`, and the pool with `failed` when the worker dies under it.
    """

    size: int
    token: str  # the run's tag: the workers are `<token>/1`, `<token>/2`, ...
    write: Callable[[str], None]
    cores: int  # each member's share of the machine (its env workers: `settings.auto_workers`)
    workers: list[_Worker] = field(default_factory=list)
    _started: int = 0
    _selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)

    def run(self, jobs: Iterable[tuple[object, dict]]) -> Iterator[tuple[object, dict]]:
        """Run each (key, task); yield (key, status) as members finish, in any order."""
        queue = deque(jobs)
        while queue or any(w.job for w in self.workers):
            for worker in [w for w in self.workers if w.job is None and not w.gone]:
                if queue:
                    self._dispatch(worker, queue)
            while queue and len(self.workers) < self.size:
                self._dispatch(self._start(), queue)
            yield from self._wait()
        for worker in self.workers:  # idle workers exit when their stdin closes
            worker.process.stdin.close()
        while self._selector.get_map():
            for _ in self._wait():
                pass

    def _start(self) -> _Worker:
        self._started += 1
        tag = f"{self.token}/{self._started}/"
        process = subprocess.Popen(  # unbuffered: a task is written whole, or fails at once on a dead worker
            [sys.executable, "-m", __name__, str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, process_group=0, env={**os.environ, RUN_TAG: tag, CORES_ENV_VAR: str(self.cores)}, bufsize=0,
        )  # fmt: skip
        worker = _Worker(process, tag)
        self._selector.register(process.stdout, selectors.EVENT_READ, (worker, "results"))
        self._selector.register(process.stderr, selectors.EVENT_READ, (worker, "output"))
        self.workers.append(worker)
        return worker

    def _dispatch(self, worker: _Worker, queue: deque) -> None:
        key, task = queue.popleft()
        started = time.time()
        write_status(Path(task["status_file"]), status(task, "running", started, worker_pid=worker.process.pid))
        try:
            worker.process.stdin.write((json.dumps(task) + "\n").encode())
        except BrokenPipeError:  # killed while idle: the member goes to the next worker
            worker.gone = True
            queue.appendleft((key, task))
            return
        worker.job = (key, task, started)

    def _wait(self) -> Iterator[tuple[object, dict]]:
        """Read what the workers wrote within a second; yield the members that finished."""
        for key, _ in self._selector.select(timeout=1.0):
            worker, stream = key.data
            chunk = os.read(key.fd, 65536)
            if not chunk:
                self._selector.unregister(key.fileobj)
                key.fileobj.close()
                if stream == "results":
                    yield from self._died(worker)
                continue
            *lines, rest = (getattr(worker, stream) + chunk).split(b"\n")
            setattr(worker, stream, rest)
            for line in lines:
                if stream == "results":
                    member, _, _ = worker.job
                    worker.job = None
                    yield member, json.loads(line)
                elif not any(noise in line for noise in KERNEL_NOISE):
                    self.write(line.decode(errors="replace"))

    def _died(self, worker: _Worker) -> Iterator[tuple[object, dict]]:
        """A worker's status channel closed: it exited (its stdin closed) or was killed."""
        code = worker.process.wait()
        worker.process.stdin.close()
        kill_tagged(worker.tag)  # its kernel, now orphaned
        self.workers.remove(worker)
        if worker.job is not None:
            key, task, started = worker.job
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            failed = status(task, "failed", started, f"WorkerDied: the worker process running this member died ({how})")
            write_status(Path(task["status_file"]), failed)
            yield key, failed

    def stop(self, state: str) -> list:
        """Kill every worker and kernel now; mark their members `state` (unless one has just
        completed) and return those members' keys. Does nothing once every worker has exited."""
        for worker in self.workers:
            os.killpg(worker.process.pid, signal.SIGKILL)  # its group: the worker (kernels have their own)
        kill_tagged(f"{self.token}/")
        stopped = []
        for worker in self.workers:
            worker.process.wait()
            if worker.job is not None:
                key, task, started = worker.job
                path = Path(task["status_file"])
                if json.loads(path.read_text())["status"] != "completed":
                    write_status(path, status(task, state, started))
                    stopped.append(key)
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            key.fileobj.close()
        for worker in self.workers:
            worker.process.stdin.close()
        self.workers.clear()
        return stopped


# -- the worker's side ---------------------------------------------------------------------------


def die_with(runner: int) -> None:
    """Make this process die as soon as its parent `runner` does (the pack runner's workers, and
    the audit's subset trainings)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        def watch() -> None:
            while os.getppid() == runner:
                time.sleep(0.2)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != runner:  # the runner died before the watch was armed
        os._exit(1)


def execute(task: dict) -> dict:
    """One papermill run; writes and returns its status (never raises)."""
    import papermill

    started = time.time()
    Path(task["output"]).parent.mkdir(parents=True, exist_ok=True)
    error = None
    for _ in range(1 + KERNEL_START_RETRIES):
        try:
            papermill.execute_notebook(
                task["notebook"], task["output"], parameters=task["parameters"], kernel_name="python3",
                progress_bar=False, cwd=task["cwd"],
            )  # fmt: skip
            error = None
            break
        except Exception as exc:  # noqa: BLE001 - a failed run is data: it is recorded, not raised
            error = f"{type(exc).__name__}: {exc}"
            if not any(marker in str(exc) for marker in _KERNEL_START_ERRORS):
                break
    result = status(task, "failed" if error else "completed", started, error)
    write_status(Path(task["status_file"]), result)
    return result


def main() -> None:
    die_with(int(sys.argv[1]))
    results = os.fdopen(os.dup(1), "w")  # the status channel; os.dup's copy is not inherited by kernels
    os.dup2(2, 1)  # anything else printed on stdout joins stderr, which the runner forwards
    for line in sys.stdin:
        results.write(json.dumps(execute(json.loads(line))) + "\n")
        results.flush()


if __name__ == "__main__":
    main()
