"""The pack runner's job engine: Dask distributed.

Each member is one Dask task (`workers.execute`) keyed by what it computes. Without a scheduler
the runner starts its own `LocalCluster`: `--jobs` worker processes of one thread each, which die
with the runner. With `--scheduler tcp://HOST:PORT` it submits to a cluster that is already up
(started by hand, or by dask-jobqueue on Slurm or PBS) and leaves it up. Dask reschedules a member
whose worker is lost; the member's locks make a retry or a duplicate write once.

Every worker must see the telemetry root and the reports folder at the same paths as the runner
(shared storage): `check_folders` asks each worker to read a file the runner wrote there and to
write one of its own, before anything is submitted.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from distributed import Client, LocalCluster, WorkerPlugin

from esper_lab.checks import ConfigError
from esper_lab.experiments.workers import RUN_TAG, kill_tagged

# Kernel log lines a pack's user cannot act on, dropped from a local worker's output (they break
# the progress bar): ipykernel warns on every start that its loopback TCP sockets are unencrypted
# (jupyter_client picks the transport), and jupyter_client interrupts every kernel it shuts down,
# which ipykernel sometimes logs as an error.
KERNEL_NOISE = (b"Kernel is running over TCP without encryption", b"KeyboardInterrupt caught in kernel")
CONNECT_TIMEOUT = "30s"  # for a --scheduler to answer and have at least one worker


class LocalWorker(WorkerPlugin):
    """Sets up each worker process of the runner's own cluster: its own process group, so a
    terminal's Ctrl-C reaches only the runner (which then stops the workers and their kernels in
    order), and its stderr, which its kernels inherit, filtered of `KERNEL_NOISE`."""

    def setup(self, worker) -> None:
        os.setpgid(0, 0)
        read, write = os.pipe()
        terminal = os.dup(2)
        os.dup2(write, 2)
        os.close(write)
        threading.Thread(target=_forward, args=(read, terminal), daemon=True).start()


def _forward(read: int, terminal: int) -> None:
    with os.fdopen(read, "rb") as lines:
        for line in lines:
            if not any(noise in line for noise in KERNEL_NOISE):
                os.write(terminal, line)


@dataclass
class Engine:
    """A client on the cluster the members run on; `local` when the runner started it."""

    client: Client
    local: LocalCluster | None

    @property
    def where(self) -> str:
        workers = len(self.client.scheduler_info(n_workers=-1)["workers"])
        what = "local Dask cluster" if self.local else f"Dask cluster {self.client.scheduler.address}"
        return f"{what}, {workers} worker(s); dashboard {self.client.dashboard_link}"

    def stop(self, token: str, futures: list) -> None:
        """Stop what is in flight now: a local cluster's workers and kernels are killed; on a
        remote cluster the members are cancelled, and a member already running finishes there
        (Dask cannot stop a running task)."""
        if self.local is None:
            self.client.cancel(futures, force=True)
            return
        for nanny in self.local.workers.values():
            if nanny.process is not None and nanny.process.pid:
                os.kill(nanny.process.pid, signal.SIGKILL)
        kill_tagged(f"{token}/")


def check_scheduler(address: str) -> None:
    """Only tcp:// addresses: tls:// would need certificates these commands cannot take."""
    if not address.startswith("tcp://"):
        raise ConfigError(f"--scheduler {address}: give a tcp://HOST:PORT address (what `dask scheduler` prints)")


@contextmanager
def engine(scheduler: str | None, jobs: int, token: str) -> Iterator[Engine]:
    """Connect to `scheduler`, or start a LocalCluster of `jobs` single-threaded workers whose
    kernels carry this run's tag; close what was started on the way out, with anything the
    members left running."""
    if scheduler is not None:
        check_scheduler(scheduler)
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, ValueError, TypeError) as error:  # unreachable, or not an address
            raise ValueError(f"--scheduler {scheduler}: {error}") from None
        with client:
            try:
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
            except TimeoutError:
                raise ValueError(f"--scheduler {scheduler} has no workers (waited {CONNECT_TIMEOUT})") from None
            yield Engine(client, None)
        return
    cluster = LocalCluster(
        n_workers=jobs,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
        env={RUN_TAG: f"{token}/", "OMP_NUM_THREADS": "1"},
    )
    try:
        with Client(cluster) as client:
            client.register_plugin(LocalWorker(), name="esper-lab-local-worker")
            yield Engine(client, cluster)
    finally:
        cluster.close(timeout=10)
        kill_tagged(f"{token}/")


def check_folders(client: Client, folders: list[Path], token: str) -> None:
    """Refuse to submit unless every worker sees these folders as the runner does: it must find
    the file the runner wrote in each, and be able to write there."""
    probes = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{token}"
        probe.write_text(token)
        probes.append(str(probe))
    try:
        answers = client.run(_probe, probes)
    finally:
        for probe in probes:
            Path(probe).unlink()
    problems = [f"{worker}: {problem}" for worker, problem in answers.items() if problem]
    if problems:
        raise ValueError(
            "every Dask worker must see the telemetry root and the reports folder at the same paths, on storage they share "
            "with this machine: " + "; ".join(problems)
        )


def _probe(probes: list[str]) -> str | None:
    """On a worker: None if it sees each of the runner's probe files and can write beside it."""
    for probe in map(Path, probes):
        if not probe.is_file():
            return f"does not see {probe.parent} (not the runner's storage)"
        try:
            mine = probe.with_name(f"{probe.name}-{socket.gethostname()}-{os.getpid()}")
            mine.touch()
            mine.unlink()
        except OSError as error:
            return f"cannot write in {probe.parent} ({error.strerror or error})"
    return None
