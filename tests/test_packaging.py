"""The package as a user installs it: a wheel built from this checkout, installed (not editable)
into a fresh venv beside the local CPU build of torch, runs the smoke pack from an empty folder
and copies the curated notebooks out, with nothing of this checkout on its path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here runs packs, clusters, wheels or ranks

REPO = Path(__file__).resolve().parents[1]
PIP = ["-m", "pip", "install", "-q", "--disable-pip-version-check"]
# what a checkout holds beside its source: left out of the copy the wheel is built from
NOT_SOURCE = {".git", ".venv", "build", "dist", "esper_lab.egg-info", "telemetry", "reports", "data", ".hypothesis"}


def not_source(folder: str, names: list[str]) -> set[str]:
    return (NOT_SOURCE & set(names) if Path(folder) == REPO else set()) | {n for n in names if n == "__pycache__"}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv holding torch==2.13.0 (the local build, installed first so pip never resolves
    a CUDA one) and the wheel with its notebooks extra."""
    folder = tmp_path_factory.mktemp("wheel")
    # built from a copy of the checkout: setuptools' in-tree build/ folder could carry files since removed
    source = shutil.copytree(REPO, folder / "source", symlinks=True, ignore=not_source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", folder / "dist", source],
        check=True,
        capture_output=True,
    )
    (wheel,) = (folder / "dist").glob("esper_lab-*.whl")
    subprocess.run([sys.executable, "-m", "venv", folder / "venv"], check=True)
    python = folder / "venv" / "bin" / "python"
    subprocess.run([python, *PIP, "torch==2.13.0"], check=True, capture_output=True)
    subprocess.run([python, *PIP, f"{wheel}[notebooks]"], check=True, capture_output=True)
    return folder / "venv"


def user_env(venv: Path) -> dict[str, str]:
    """A shell with the venv activated and nothing of this checkout or its venv around."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PATH": f"{venv / 'bin'}:{env['PATH']}", "VIRTUAL_ENV": str(venv), "OMP_NUM_THREADS": "1"}


def test_the_installed_package_is_the_wheel_not_this_checkout(venv):
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import esper_lab; print(esper_lab.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
        env=user_env(venv),
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)


def test_the_smoke_pack_runs_from_an_empty_folder(venv, tmp_path):
    result = subprocess.run(
        ["esper-lab", "pack", "run", "pack0", "--preset", "smoke", "--jobs", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=user_env(venv),
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4/4 runs completed" in result.stdout
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "telemetry" / "pack0" / ".members").rglob("*.status.json")]
    assert len(statuses) == 4 and {s["status"] for s in statuses} == {"completed"}
    assert (tmp_path / "reports" / "pack0" / "smoke").is_dir()
    assert "report: " + str(tmp_path / "reports") in result.stdout


def test_the_curated_notebooks_copy_out_for_jupyterlab(venv, tmp_path):
    run = ["esper-lab", "notebooks", "lab"]
    first = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, env=user_env(venv))
    assert first.returncode == 0, first.stderr
    copied = sorted(p.name for p in (tmp_path / "lab").glob("*.ipynb"))
    assert copied == sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    (tmp_path / "lab" / copied[0]).write_text("{}")  # the user's edit
    again = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, env=user_env(venv))
    assert again.returncode == 2 and copied[0] in again.stderr and "--force" in again.stderr
    assert (tmp_path / "lab" / copied[0]).read_text() == "{}"  # nothing lost


def test_the_installed_package_never_writes_inside_its_installation(venv, tmp_path):
    """CIFAR-10 from generated batches in the working folder's data/ (the default once installed):
    the byte cache lands beside them, and not one file in the venv changes."""
    before = {p: p.stat().st_mtime_ns for p in venv.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    env = user_env(venv)
    script = "from esper_lab.data import write_cifar10_batches; write_cifar10_batches('data/cifar-10-batches-py', 200)"
    subprocess.run([venv / "bin" / "python", "-c", script], check=True, cwd=tmp_path, env=env)
    run = ["esper-lab", "run", "--task", "cifar10_cnn", "--episode-length", "1", "--set", "batches_per_step=1", "--telemetry", "telemetry"]
    result = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert any((tmp_path / "data" / "cache").glob("cifar10-*"))  # the cache is the user's, in the working folder
    after = {p: p.stat().st_mtime_ns for p in venv.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert after == before
