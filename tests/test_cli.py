"""The command line's guards: a count that would run nothing fails before anything is built, and
`run` and `train` use one torch thread unless `--threads` says otherwise."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from esper_lab.cli import build_parser, main
from esper_lab.telemetry import Store


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--episodes", "-1"],
        ["run", "--episodes", "0"],
        ["train", "--rounds", "-1"],
        ["train", "--rounds", "0"],
        ["run", "--envs", "0"],
        ["train", "--envs", "-2"],
        ["run", "--workers", "-1"],
        ["train", "--workers", "-1"],
        ["train", "--episode-length", "0"],
        ["run", "--threads", "0"],
        ["pack", "run", "pack0", "--jobs", "0"],
    ],
)
def test_a_count_that_would_run_nothing_fails_before_any_compute(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--telemetry", str(tmp_path)])
    assert exited.value.code == 2
    assert f"argument {argv[-2]}: must be an integer >= " in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no run was recorded


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="torch's default is already one thread on one core")
def test_run_and_train_use_one_torch_thread_unless_told(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # as a fresh shell
    commands = {
        "run": ["run"],
        "train": ["train", "--rounds", "1", "--envs", "1"],
        "run-2-threads": ["run", "--threads", "2"],
    }
    for cohort, argv in commands.items():
        subprocess.run(
            [sys.executable, "-m", "esper_lab.cli", *argv, "--episode-length", "1", "--telemetry", str(tmp_path), "--cohort", cohort],
            env=environment,
            check=True,
            capture_output=True,
        )
    threads = dict(Store(tmp_path).runs().select("cohort", "torch_threads").iter_rows())
    assert threads == {"run": 1, "train": 1, "run-2-threads": 2}


def test_every_command_and_flag_says_what_it_is_for():
    """A newcomer reads `esper-lab CMD --help`: no flag may show up there without a line of help."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    bare = [
        f"{name} {a.option_strings or a.dest}"
        for name, sub in commands.items()
        for a in sub._actions
        if not a.help and not isinstance(a, argparse._HelpAction)
    ]
    assert bare == []


def test_notebooks_force_replaces_a_link_in_dest_never_what_it_points_to(tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("mine")
    dest = tmp_path / "lab"
    dest.mkdir()
    (dest / "00_organism_tour.ipynb").symlink_to(outside)
    assert main(["notebooks", str(dest)]) == 2  # it differs: refused without --force
    assert main(["notebooks", str(dest), "--force"]) == 0
    assert outside.read_text() == "mine" and not (dest / "00_organism_tour.ipynb").is_symlink()
