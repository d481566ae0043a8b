"""The pack runner on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on
127.0.0.1, started as a lab would start them, running Pack 0 at the smoke preset through
`esper-lab pack run --scheduler`. Its telemetry must equal a local run's; a worker killed mid-pack
must cost nothing but time; a worker that cannot see the telemetry root is refused before
anything is submitted; an audit credits what it credits in process; and a member submitted
twice runs once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from processes import assert_every_row_once, wait_for

from esper_lab.experiments.workers import execute
from esper_lab.telemetry import Store

pytestmark = pytest.mark.slow  # every test here runs packs, clusters, wheels or ranks

DASK = str(Path(sys.executable).with_name("dask"))
WORKER_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ESPER_LAB_CORES": "1"}


class Cluster:
    """A scheduler and its workers, each a `dask` command in its own process group."""

    def __init__(self, folder: Path):
        self.folder, self.processes = folder, []
        scheduler_file = folder / "scheduler.json"
        self.start("scheduler", DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file))
        self.address = wait_for(lambda: scheduler_file.is_file() and json.loads(scheduler_file.read_text())["address"], 60, "the scheduler")

    def start(self, name: str, *command: str) -> subprocess.Popen:
        with (self.folder / f"{name}.log").open("w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=WORKER_ENV, start_new_session=True)
        self.processes.append(process)
        return process

    def worker(self, name: str, *prefix: str) -> None:
        self.start(name, *prefix, DASK, "worker", self.address, "--name", name, "--nthreads", "1", "--no-dashboard")

    def workers(self) -> int:
        from distributed import Client

        with Client(self.address, timeout="10s") as client:
            return len(client.scheduler_info(n_workers=-1)["workers"])

    def stop(self, process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.processes.remove(process)

    def close(self) -> None:
        for process in list(self.processes):
            self.stop(process)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One scheduler and two workers for the module: a test that changes the cluster (a killed
    worker's nanny starts another; a third worker) leaves it with two healthy workers again."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    cluster.worker("w1")
    cluster.worker("w2")
    wait_for(lambda: cluster.workers() == 2, 60, "two workers")
    yield cluster
    cluster.close()


def pack_run(folder: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "esper_lab.cli",
        "pack",
        "run",
        "pack0",
        "--preset",
        "smoke",
        "--no-report",
        "--telemetry",
        str(folder / "telemetry"),
        "--reports",
        str(folder / "reports"),
        *flags,
    ]


def telemetry_hashes(root: Path) -> dict[str, str]:
    store = Store(root)
    digests = store.digests()
    store.close()
    return digests


def statuses(root: Path) -> dict[str, dict]:
    return {f"{p.parent.name}/{p.name}": json.loads(p.read_text()) for p in (root / ".members").rglob("*.status.json")}


@pytest.fixture(scope="module")
def local_hashes(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("local")
    result = subprocess.run(pack_run(folder, "--jobs", "2"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return telemetry_hashes(folder / "telemetry")


def test_a_pack_on_a_dask_cluster_records_what_a_local_run_records(cluster, tmp_path, local_hashes):
    result = subprocess.run(pack_run(tmp_path, "--scheduler", cluster.address), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "4/4 runs completed" in result.stdout
    assert f"Dask cluster {cluster.address}, 2 worker(s); dashboard" in result.stdout
    assert telemetry_hashes(tmp_path / "telemetry") == local_hashes
    assert len({s["worker_pid"] for s in statuses(tmp_path / "telemetry").values()}) == 2  # both workers took members
    assert cluster.workers() == 2  # the runner leaves a cluster it did not start running


def test_a_worker_killed_mid_pack_costs_only_time(cluster, tmp_path, local_hashes):
    with (tmp_path / "runner.log").open("w") as log:
        runner = subprocess.Popen(pack_run(tmp_path, "--scheduler", cluster.address), stdout=log, stderr=subprocess.STDOUT)
    try:
        running = wait_for(lambda: [s for s in statuses(tmp_path / "telemetry").values() if s["status"] == "running"], 120, "a member")
        time.sleep(3)  # into its training
        victim = running[0]["worker_pid"]
        os.kill(victim, signal.SIGKILL)  # the worker process; its nanny starts a new one
        assert runner.wait(timeout=600) == 0, (tmp_path / "runner.log").read_text()
    finally:
        runner.kill()
    assert "4/4 runs completed" in (tmp_path / "runner.log").read_text()
    after = statuses(tmp_path / "telemetry")
    assert {s["status"] for s in after.values()} == {"completed"} and victim not in {s["worker_pid"] for s in after.values()}
    assert_every_row_once(tmp_path / "telemetry")
    assert telemetry_hashes(tmp_path / "telemetry") == local_hashes


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to give a worker its own view of the disk")
def test_a_worker_that_cannot_see_the_telemetry_root_is_refused_before_anything_runs(cluster, tmp_path):
    hidden = tmp_path / "shared"
    hidden.mkdir()
    # a third worker with its own, empty mount of that folder: a machine without the shared storage
    try:
        subprocess.run(["unshare", "-m", "--propagation", "private", "true"], check=True, capture_output=True)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"unshare -m is not permitted here: {error.stderr.decode().strip()}")
    third = cluster.start(
        "w3",
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount -t tmpfs none "{hidden}" && exec "$0" "$@"',
        DASK,
        "worker",
        cluster.address,
        "--name",
        "w3",
        "--nthreads",
        "1",
        "--no-dashboard",
    )
    try:
        wait_for(lambda: cluster.workers() == 3, 60, "the third worker")
        command = pack_run(tmp_path, "--scheduler", cluster.address)
        command[command.index("--telemetry") + 1] = str(hidden / "telemetry")
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:  # the module's other tests share the cluster: back to its two workers
        cluster.stop(third)
        wait_for(lambda: cluster.workers() == 2, 60, "the third worker to leave")
    assert result.returncode == 2
    assert "every Dask worker must see the telemetry root and the reports folder" in result.stderr
    assert f"does not see {hidden / 'telemetry'}" in result.stderr
    assert not (hidden / "telemetry" / ".members").exists()  # nothing was submitted


def test_an_audit_on_a_dask_cluster_credits_what_one_in_process_credits(cluster, tmp_path):
    def audit(root: Path, *flags: str) -> list:
        command = [sys.executable, "-m", "esper_lab.cli", "audit", "--demo", "smoke", "--root", str(root), *flags]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        store = Store(root)
        rows = store.sql("SELECT slot, phi, phi_replicates, subset_values FROM audits ORDER BY slot").rows()
        store.close()
        return rows

    assert audit(tmp_path / "remote", "--scheduler", cluster.address) == audit(tmp_path / "here")


def test_a_member_submitted_twice_at_once_runs_once(tmp_path):
    """Two copies of one member (a rerun racing a remote worker still on the first): the second
    waits on the member's lock, then finds it completed and runs nothing."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time\nopen(marker, 'a').write('ran\\n')\ntime.sleep(2)")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "member.ipynb")
    marker = tmp_path / "runs.txt"
    task = {
        "notebook": str(tmp_path / "member.ipynb"),
        "output": str(tmp_path / "out.ipynb"),
        "status_file": str(tmp_path / "member.status.json"),
        "parameters": {"preset": "smoke", "marker": str(marker)},
        "cores": None,
    }
    results = []
    copies = [threading.Thread(target=lambda: results.append(execute(task))) for _ in range(2)]
    for copy in copies:
        copy.start()
    for copy in copies:
        copy.join()
    assert [r["status"] for r in results] == ["completed", "completed"]
    assert marker.read_text() == "ran\n"


def test_a_scheduler_address_that_is_not_one_is_one_error_line(tmp_path):
    result = subprocess.run(pack_run(tmp_path, "--scheduler", "tcp://127.0.0.1"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "esper-lab: error: --scheduler tcp://127.0.0.1: missing port number in address '127.0.0.1'"
    assert not (tmp_path / "telemetry" / ".members").exists()
