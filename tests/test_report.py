"""The pack report: one page per (pack, preset, telemetry root), saying what it is, with gates
judged on held-out episodes, readable offline."""

from __future__ import annotations

import re

import pytest

from esper_lab.experiments.member import run_member
from esper_lab.experiments.packs import load_pack
from esper_lab.experiments.report import build_report, report_path, write_report

PACK = """
name = "tiny"
title = "Tiny pack"
notebook = "pack0_validation_grid.ipynb"
seeds = [0, 1, 2, 3, 4]
control = "base"

[presets.smoke]
seeds = [0]
rounds = 1
envs = 2
eval_episodes = 2
episode_length = 3
batches_per_step = 2
data_fraction = 0.2

[presets.full]
rounds = 2
envs = 2
eval_episodes = 2
episode_length = 3
batches_per_step = 2
data_fraction = 0.2

[cohorts.base]
task = "digits_cnn"
blueprints = ["conv_heavy"]

[cohorts.ladder]
task = "digits_cnn"
blueprints = ["conv_heavy", "conv_channel_ladder"]
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    (folder / "tiny.toml").write_text(PACK)
    for preset in ("smoke", "full"):
        for cohort in ("base", "ladder"):
            run_member(folder / "tiny.toml", cohort, 0, preset, folder / "telemetry")
    return folder


@pytest.mark.parametrize("preset", ["smoke", "full"])
def test_a_root_holding_two_presets_gives_one_report_per_preset_never_a_mix(root, preset):
    pack = load_pack(root / "tiny.toml")
    report = build_report(pack, root / "telemetry", preset)
    assert f"**Preset `{preset}`**" in report.header
    # 2 cohorts x (1 training run + 5 eval arms) of this preset only
    assert "ppo completed: 2" in report.header and "eval completed: 10" in report.header
    assert set(report.evidence.outcomes["preset"]) == {preset}
    assert set(report.behaviour["runs"]) == {1}
    assert {(g.name, g.cohort) for g in report.gates} >= {("1 usage", "ladder"), ("2 dominance", "ladder"), ("3 stability", "base")}
    assert all(g.verdict in ("PASS", "FAIL", "INCONCLUSIVE") for g in report.gates)
    assert set(report.outcomes["arm"]) == {"ppo_greedy", "ppo_sampled", "static", "heuristic", "random"}
    path = write_report(pack, root / "telemetry", preset, report_path(root / "reports", pack, preset, root / "telemetry"))
    assert path.name == f"telemetry-{preset}.html"
    assert not re.search(r'<(script|link)[^>]*(src|href)="https?://', path.read_text())  # offline: no tag fetches a script or a stylesheet


def test_a_report_of_a_preset_with_no_runs_says_so(root):
    pack = load_pack(root / "tiny.toml")
    with pytest.raises(ValueError, match="no runs of preset 'other'"):
        build_report(pack, root / "telemetry", "other")
