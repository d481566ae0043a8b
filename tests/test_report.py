"""The pack report: one page per (pack, preset, telemetry root), saying what it is, with gates
judged on held-out episodes, readable offline."""

from __future__ import annotations

import re

import polars as pl
import pytest

from esper_lab.contracts import DEFAULT_ARMS, GREEDY, SAMPLED
from esper_lab.experiments.member import run_member
from esper_lab.experiments.packs import load_pack
from esper_lab.experiments.report import build_report, report_path, write_report
from esper_lab.experiments.stats import combine
from esper_lab.studies import seed002
from esper_lab.studies.common import not_stuck
from esper_lab.studies.evidence import Evidence

PACK = """
name = "tiny"
title = "Tiny pack"
notebook = "pack.ipynb"
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


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["smoke", "full"])
def test_a_root_holding_two_presets_gives_one_report_per_preset_never_a_mix(root, preset):
    pack = load_pack(root / "tiny.toml")
    report = build_report(pack, root / "telemetry", preset)
    assert f"**Preset `{preset}`**" in report.header
    # 2 cohorts x (1 training run + the default arms but the oracle, which these cohorts do not name) of this preset only
    arms = len(DEFAULT_ARMS) - 1
    assert "ppo completed: 2" in report.header and f"eval completed: {2 * arms}" in report.header
    assert set(report.evidence.outcomes["preset"]) == {preset}
    assert set(report.behaviour["runs"]) == {1}
    assert {(g.name, g.cohort) for g in report.gates} >= {("1 usage", "ladder"), ("2 dominance", "ladder"), ("3 stability", "base")}
    assert all(g.verdict in ("PASS", "FAIL", "INCONCLUSIVE") for g in report.gates)
    assert set(report.outcomes["arm"]) == set(DEFAULT_ARMS) - {"oracle"} == set(report.frontier["arm"])
    path = write_report(pack, root / "telemetry", preset, report_path(root / "reports", pack, preset, root / "telemetry"))
    assert path.name == f"telemetry-{preset}.html"
    assert not re.search(r'<(script|link)[^>]*(src|href)="https?://', path.read_text())  # offline: no tag fetches a script or a stylesheet


def test_a_report_of_a_preset_with_no_runs_says_so(root):
    pack = load_pack(root / "tiny.toml")
    with pytest.raises(ValueError, match="no runs of preset 'other'"):
        build_report(pack, root / "telemetry", "other")


GATES_PACK = (
    PACK
    + """
[cohorts.growth]   # a growth-only policy: no op of it sends a seed to PRUNED
task = "digits_cnn"
blueprints = ["conv_heavy"]
policy = { ops = ["germinate", "advance"] }
"""
)


def held_out_rows(cohort: str, arm: str, **values) -> list[dict]:
    """5 seeds x 4 held-out episodes of one (cohort, arm), every statistic the same on each."""
    base = dict(
        score=80.0,
        episode_return=1.0,
        conv_heavy_share=0.5,
        roi=1.0,
        rollbacks=0.0,
        level_change_rate=0.0,
        regerminations=0.0,
        forward_params_mean=100.0,
        host_params=5000.0,
    )
    return [
        {"cohort": cohort, "arm": arm, "seed": s, "parent_run": f"{cohort}-{s}", "episode_seed": 100 * s + k, **base, **values}
        for s in range(5)
        for k in range(4)
    ]


def test_a_greedy_policy_stuck_on_wait_fails_no_collapse_even_where_the_sampled_one_is_fine():
    """`not_stuck` is what Stage 1's "3 no collapse" and Phase 5's "6 no collapse" read."""
    heads = pl.DataFrame([{"cohort": "base", "head": "op", "open_entropy": 1.0}])

    def no_collapse(greedy_wait: float) -> tuple[str, str]:
        usage = pl.DataFrame(
            [
                {"cohort": "base", "arm": arm, "seed": s, "grow_shrink_share": 0.0, "wait_share": wait}
                for arm, wait in ((GREEDY, greedy_wait), (SAMPLED, 0.6))
                for s in range(5)
            ]
        )
        parts, said = not_stuck(Evidence(pl.DataFrame(), usage, pl.DataFrame(), heads), "base")
        return combine(parts), said

    stuck, said = no_collapse(1.0)  # WAIT on every held-out step of the arm one would deploy
    assert stuck == "FAIL" and f"{GREEDY} +1 [" in said and f"{SAMPLED} +0.6 [" in said
    assert no_collapse(0.6)[0] == "PASS"


def test_anti_thrash_judges_re_germination_in_every_cohort_that_can_prune_ladder_or_not(tmp_path):
    (tmp_path / "tiny.toml").write_text(GATES_PACK)
    pack = load_pack(tmp_path / "tiny.toml")
    cycles = {("base", SAMPLED): 1.5}  # 6x the limit
    outcomes = pl.DataFrame(
        [
            row
            for cohort in ("base", "growth")
            for arm in (GREEDY, SAMPLED)
            for row in held_out_rows(cohort, arm, regerminations=cycles.get((cohort, arm), 0.0))
        ]
    )
    entropy = pl.DataFrame([{"cohort": c, "seed": s, "kept": 0.9} for c in ("base", "growth") for s in range(5)])
    gates = {(g.name, g.cohort): g for g in seed002.gates(pack, Evidence(outcomes, pl.DataFrame(), entropy, pl.DataFrame()))}
    thrash = gates["4 anti-thrash", "base"]  # no ladder, and every op open: PRUNE too
    assert thrash.verdict == "FAIL" and "prune->re-germinate per episode +1.5 [" in thrash.evidence and "level changes" not in thrash.evidence
    assert ("4 anti-thrash", "growth") not in gates  # germinate and advance only, no ladder: nothing can thrash
