"""Packs: validated specs, the papermill runner (skip, retry, failures recorded, reserved
parameters, packs given by path), notebook list parameters, the report's guards, exit gates."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import nbformat
import numpy as np
import panel as pn
import papermill
import polars as pl
import pytest

from esper_lab.cli import main
from esper_lab.config import DecayConfig
from esper_lab.contracts import Blueprint
from esper_lab.dashboards import Selection, decay_page
from esper_lab.data import DATA_ENV_VAR, write_cifar10_batches
from esper_lab.episodes import run_episodes
from esper_lab.experiments.evaluation import eval_seeds
from esper_lab.experiments.member import run_member
from esper_lab.experiments.packs import load_pack, pack_names
from esper_lab.experiments.params import as_list
from esper_lab.experiments.runner import RESERVED_PARAMETERS, members, notebook_parameters, run_pack
from esper_lab.experiments.settings import Settings
from esper_lab.policy import OraclePolicy, PlanterPolicy, StaticPolicy
from esper_lab.studies import phase5, seed002, stage1, stage2
from esper_lab.studies.common import ENTROPY_KEPT
from esper_lab.studies.evidence import Evidence, evidence
from esper_lab.studies.phase5 import churn_drop
from esper_lab.studies.seed002 import GROW_SHRINK_GATE
from esper_lab.telemetry import Store
from esper_lab.vecenv import VecEnv

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

PACK_TOML = """
name = "tiny"
title = "Tiny pack"
notebook = "{notebook}"
seeds = [0, 1]
control = "base"

[presets.smoke]
rounds = 1
envs = 1
episode_length = 2
batches_per_step = 1
data_fraction = 0.1

[cohorts.base]
task = "digits_cnn"
blueprints = ["conv_heavy"]

[cohorts.ladder]
task = "digits_cnn"
blueprints = ["conv_heavy", "conv_channel_ladder"]
"""


def write_pack(tmp_path, body: str = PACK_TOML, notebook: str = "member.ipynb"):
    path = tmp_path / "tiny.toml"
    path.write_text(body.format(notebook=tmp_path / notebook))
    return path


def write_notebook(tmp_path, code: str) -> None:
    """A stand-in pack notebook: the same parameters cell as the real ones, then `code`."""
    params = nbformat.v4.new_code_cell('pack = "tiny"\npreset = "smoke"\ncohort = "base"\nseed = 0\ntelemetry_root = ""\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(code)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "member.ipynb")


@pytest.mark.slow
def test_every_shipped_pack_notebook_declares_what_the_runner_passes(tmp_path):
    for name in pack_names():
        shared = notebook_parameters(load_pack(name), "smoke", tmp_path, {})
        assert {"pack", "preset", "telemetry_root"} <= set(shared), name


def test_shipped_packs_load_and_validate_every_member():
    assert {"pack0", "pack1", "pack2", "pack3_economy"} <= set(pack_names())
    pack0 = load_pack("pack0")
    assert set(pack0.cohorts) == {"baseline", "a0_only", "c0_only", "a0_c0"}
    assert len(pack0.preset_seeds("full")) >= 5  # a verdict needs five seeds
    budgets = {p: (s := pack0.settings("baseline", 0, p)).rounds * s.envs * s.run.episode_length for p in pack0.presets}
    assert budgets["full"] > budgets["smoke"] > 0
    assert pack0.run_config("a0_c0", 2, "full").task == "digits_cnn_deep"
    assert pack0.settings("baseline", 0, "full").eval_episodes >= 12


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda t: t.replace('blueprints = ["conv_heavy"]', 'blueprints = ["lora"]'), "cohort 'base'"),
        (lambda t: t.replace("rounds = 1", "rounds = 1\nrunds = 2"), "runds"),
        (lambda t: t.replace('control = "base"', 'control = "nope"'), "control='nope' is not a cohort"),
        (lambda t: t.replace('task = "digits_cnn"\nblueprints = ["conv_heavy"]', 'task = "digits_cnn"\nwidth = 3'), "width"),
    ],
)
def test_a_bad_pack_fails_on_load_naming_what_is_wrong(tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        load_pack(write_pack(tmp_path, edit(PACK_TOML)))


def test_a_misspelt_parameter_is_refused_before_any_kernel_starts(tmp_path):
    write_notebook(tmp_path, "pass")
    pack = load_pack(write_pack(tmp_path))
    with pytest.raises(ValueError, match="sed"):
        notebook_parameters(pack, "smoke", tmp_path / "telemetry", {"sed": "1"})
    with pytest.raises(ValueError, match="preset='huge'"):
        notebook_parameters(pack, "huge", tmp_path / "telemetry", {})


@pytest.mark.slow
def test_runner_records_failures_keeps_going_skips_completed_and_retries_failed(tmp_path):
    # seed 1 fails until a marker file exists; everything else succeeds
    marker = tmp_path / "fixed"
    write_notebook(tmp_path, f"import pathlib\nassert seed == 0 or pathlib.Path({str(marker)!r}).exists(), 'seed 1 breaks'")
    pack = load_pack(write_pack(tmp_path))
    reports = tmp_path / "reports"
    statuses = run_pack(pack, "smoke", jobs=2, telemetry_root=tmp_path / "telemetry", reports_dir=reports)
    assert {k: v["status"] for k, v in statuses.items()} == {
        ("base", 0): "completed",
        ("base", 1): "failed",
        ("ladder", 0): "completed",
        ("ladder", 1): "failed",
    }
    assert "seed 1 breaks" in statuses[("base", 1)]["error"]
    assert (reports / "tiny" / "smoke" / "base" / "seed=0.ipynb").is_file()

    root = tmp_path / "telemetry"
    done = {m.output: m.output.stat().st_mtime_ns for m in members(pack, "smoke", reports, root) if m.seed == 0}
    marker.touch()
    statuses = run_pack(pack, "smoke", jobs=1, telemetry_root=root, reports_dir=reports)
    assert all(v["status"] == "completed" for v in statuses.values())
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in done.items())  # not re-run
    status = json.loads((root / ".members" / "tiny" / "smoke" / "ladder" / "seed=1.status.json").read_text())
    assert status["preset"] == "smoke" and status["error"] is None

    elsewhere = tmp_path / "other-telemetry"  # completed, but into another root: that is new work there...
    run_pack(pack, "smoke", jobs=1, telemetry_root=elsewhere, reports_dir=reports)
    assert all(path.stat().st_mtime_ns > mtime for path, mtime in done.items())
    assert json.loads((elsewhere / ".members" / "tiny" / "smoke" / "base" / "seed=0.status.json").read_text())["status"] == "completed"
    again = {m.output: m.output.stat().st_mtime_ns for m in members(pack, "smoke", reports, root)}
    run_pack(pack, "smoke", jobs=1, telemetry_root=root, reports_dir=reports)  # ...and the first root's members stay done
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in again.items())


@pytest.mark.slow
@pytest.mark.parametrize(("machine", "jobs", "each"), [("4", 2, "2"), ("2", 2, "1"), ("1", 3, "1")])
def test_the_runner_shares_the_cores_out_among_its_jobs(tmp_path, monkeypatch, machine, jobs, each):
    write_notebook(tmp_path, "import os, pathlib\npathlib.Path(telemetry_root, f'{cohort}{seed}').write_text(os.environ['ESPER_LAB_CORES'])")
    monkeypatch.setenv("ESPER_LAB_CORES", machine)
    run_pack(load_pack(write_pack(tmp_path)), "smoke", jobs=jobs, telemetry_root=tmp_path / "t", reports_dir=tmp_path / "r")
    assert {p.read_text() for p in (tmp_path / "t").glob("*[01]")} == {each}


@pytest.mark.parametrize("name", RESERVED_PARAMETERS)
def test_a_reserved_parameter_cannot_be_overridden(tmp_path, name):
    write_notebook(tmp_path, "pass")
    pack = load_pack(write_pack(tmp_path))
    with pytest.raises(ValueError, match=rf"\['{name}'\] are set by the pack runner and cannot be overridden"):
        notebook_parameters(pack, "smoke", tmp_path / "telemetry", {name: "1"})


def test_the_cli_refuses_a_reserved_parameter_in_one_line(tmp_path, capsys):
    write_notebook(tmp_path, "pass")
    argv = ["pack", "run", str(write_pack(tmp_path)), "--param", "preset=full", "--telemetry", str(tmp_path / "t")]
    assert main([*argv, "--reports", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("esper-lab: error: parameters ['preset'] are set by the pack runner") and error.count("\n") == 1
    assert not (tmp_path / "r").exists()  # refused before anything ran


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pack0", "mypack"])
def test_a_pack_given_by_path_runs_with_its_own_settings(tmp_path, name):
    # named like a shipped pack, or like none: either way the members must load this very file
    write_notebook(
        tmp_path,
        "from esper_lab.experiments.packs import load_pack\nspec = load_pack(pack)\n"
        "assert (spec.title, spec.presets[preset]['episode_length']) == ('Tiny pack', 2), spec",
    )
    pack = load_pack(write_pack(tmp_path, PACK_TOML.replace('name = "tiny"', f'name = "{name}"').replace("[0, 1]", "[0]")))
    statuses = run_pack(pack, "smoke", jobs=2, telemetry_root=tmp_path / "telemetry", reports_dir=tmp_path / "reports")
    assert {s["status"] for s in statuses.values()} == {"completed"}, [s["error"] for s in statuses.values()]
    assert statuses[("base", 0)]["parameters"]["pack"] == str(tmp_path / "tiny.toml")


def test_pack_report_on_an_empty_root_is_one_clear_line(tmp_path, capsys):
    write_notebook(tmp_path, "pass")
    (tmp_path / "empty").mkdir()
    argv = ["pack", "report", str(write_pack(tmp_path)), "--telemetry", str(tmp_path / "empty"), "--reports", str(tmp_path / "r")]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"esper-lab: error: no runs of preset 'smoke' under {tmp_path / 'empty'}: run `esper-lab pack run tiny --preset smoke` first\n"
    )


def test_a_list_parameter_given_as_one_string_is_one_item():
    assert as_list("cohorts", "a0_only") == ["a0_only"]  # not ['a', '0', '_', ...]
    assert as_list("slot_counts", 8) == [8]
    assert as_list("cohorts", ("a", "b")) == ["a", "b"]
    with pytest.raises(ValueError, match="cohorts=None must be a list"):
        as_list("cohorts", None)


@pytest.mark.slow
def test_a_phase_notebook_takes_one_cohort_from_the_papermill_command_line(tmp_path):
    # `papermill ... -p cohorts a0_only` passes the string "a0_only" for the list parameter
    output = tmp_path / "phase0.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "phase0_ladders.ipynb"),
        str(output),
        kernel_name="python3",
        progress_bar=False,
        parameters={"cohorts": "a0_only"},
        cwd=str(NOTEBOOKS),
    )
    text = output.read_text()
    assert "a0_only" in text and "cohort='a'" not in text


def outcome_rows(cohort: str, arm: str, rng: np.random.Generator, **means) -> list[dict]:
    """Held-out episodes of one (cohort, arm): 5 seeds x 12 episodes around the given means."""
    base = dict(score=80.0, conv_heavy_share=0.5, roi=1.0, rollbacks=0.0, level_change_rate=0.1, regerminations=0.0)
    rows = []
    for seed in range(5):
        for k in range(12):
            row = {name: value + (rng.normal(0, 0.02) if name in ("score", "roi") else 0.0) for name, value in {**base, **means}.items()}
            rows.append({"cohort": cohort, "arm": arm, "seed": seed, "parent_run": f"{cohort}-{seed}", "episode_seed": 1000 * seed + k, **row})
    return rows


@pytest.mark.slow
def test_exit_gates_judge_each_cohort_against_the_control_with_cis(tmp_path):
    write_notebook(tmp_path, "pass")
    pack = load_pack(write_pack(tmp_path))
    rng = np.random.default_rng(0)
    rows = []
    for arm in ("ppo_greedy", "ppo_sampled", "static"):
        rows += outcome_rows("base", arm, rng)
        rows += outcome_rows("ladder", arm, rng, conv_heavy_share=0.2, roi=1.5, level_change_rate=0.9)
    usage = pl.DataFrame(
        [
            {"cohort": c, "arm": "ppo_sampled", "seed": s, "grow_shrink_share": v}
            for s in range(5)
            for c, v in (("base", 0.0), ("ladder", GROW_SHRINK_GATE + 0.05))
        ]
    )
    entropy = pl.DataFrame([{"cohort": c, "seed": s, "kept": v} for s in range(5) for c, v in (("base", 0.9), ("ladder", ENTROPY_KEPT * 0.5))])
    ev = Evidence(pl.DataFrame(rows), usage, entropy, pl.DataFrame())
    verdicts = {(g.name, g.cohort): g.verdict for g in seed002.gates(pack, ev)}
    assert verdicts == {
        ("3 stability", "base"): "PASS",
        ("4 anti-thrash", "base"): "PASS",  # no ladder, but it can prune: re-germination is judged
        ("1 usage", "ladder"): "PASS",
        ("2 dominance", "ladder"): "PASS",
        ("3 stability", "ladder"): "FAIL",  # op entropy collapsed below half its first value
        ("4 anti-thrash", "ladder"): "FAIL",  # 0.9 level changes per step
    }
    # usage spread across seeds so that its CI straddles the 10% line: neither PASS nor FAIL
    straddling = usage.with_columns(pl.when(pl.col("cohort") == "ladder").then(pl.col("seed") * 0.05).otherwise(0.0).alias("grow_shrink_share"))
    gates = {(g.name, g.cohort): g for g in seed002.gates(pack, Evidence(ev.outcomes, straddling, entropy, ev.heads))}
    assert gates["1 usage", "ladder"].verdict == "INCONCLUSIVE" and "[" in gates["1 usage", "ladder"].evidence


@pytest.mark.slow
def test_stage1_gates_judge_growth_against_the_static_host_and_the_baselines(tmp_path):
    write_notebook(tmp_path, "pass")
    pack = load_pack(write_pack(tmp_path))
    rng = np.random.default_rng(1)
    common = dict(host_params=5000.0, regerminations=0.1)
    frontier = dict(frontier_gain_params=1.0, frontier_gain_flops=-0.5)  # above the frontier at its params, below at its FLOPs
    rows = outcome_rows("base", "static", rng, episode_return=10.0, forward_params_mean=0.0, **common)
    rows += outcome_rows("base", "ppo_greedy", rng, score=82.0, episode_return=12.0, forward_params_mean=1000.0, **common, **frontier)
    rows += outcome_rows("base", "ppo_sampled", rng, score=81.0, episode_return=11.0, forward_params_mean=1000.0, **common)
    for name in ("heuristic", "random"):
        rows += outcome_rows("base", name, rng, episode_return=9.0, forward_params_mean=500.0, **common)
    rows += outcome_rows("base", "gain_trigger", rng, score=81.0, episode_return=9.0, forward_params_mean=800.0, **common)
    usage = pl.DataFrame(
        [
            {"cohort": "base", "arm": a, "seed": s, "grow_shrink_share": 0.0, "wait_share": 0.6}
            for a in ("ppo_greedy", "ppo_sampled")
            for s in range(5)
        ]
    )
    heads = pl.DataFrame([{"cohort": "base", "head": h, "open_entropy": e} for h, e in (("op", 1.0), ("blueprint", 0.01))])
    verdicts = {g.name: g.verdict for g in stage1.gates(pack, Evidence(pl.DataFrame(rows), usage, pl.DataFrame(), heads))}
    assert verdicts == {
        "0 moves the frontier": "FAIL",  # it must beat width at its FLOPs too
        "1 growth pays": "PASS",
        "2 beats baselines": "PASS",
        "3 no collapse": "FAIL",  # the blueprint head is dead (0.01 nats where it had a choice)
        "4 no oscillation": "PASS",
    }


@pytest.mark.slow
def test_phase5_gates_tell_a_disciplined_economy_from_one_stuck_fossilising(tmp_path):
    write_notebook(tmp_path, "pass")
    pack = load_pack(write_pack(tmp_path))
    rng = np.random.default_rng(2)
    quiet = dict(vetoes=0.0, roi_vetoes=0.0, episode_return=0.0, fossils=0, fossils_kept=0, conv_heavy_share=0.0)
    rows, curves, ops = [], [], []
    for cohort, lost, heavy, falling, top in (("steady", 0, 0.1, True, None), ("stuck", 1, 0.6, False, "FOSSILIZE")):
        rows += outcome_rows(cohort, "static", rng, **quiet) + outcome_rows(cohort, "heuristic", rng, **quiet)
        rows += outcome_rows(
            cohort,
            "ppo_greedy",
            rng,
            score=81.0,
            conv_heavy_share=heavy,
            vetoes=1.0,
            roi_vetoes=0.5,
            episode_return=2.0,
            fossils=2,
            fossils_kept=2 - lost,
            fossil_contribution=0.5,
            frontier_gain_params=1.0 - 2 * lost,  # the stuck cohort sits below the static frontier
            frontier_gain_flops=1.0 - 2 * lost,
        )
        for seed in range(5):
            churn = np.linspace(2.0, 0.5, 20) if falling else np.linspace(0.5, 2.0, 20)
            curves += [
                {"cohort": cohort, "run_id": f"{cohort}-{seed}", "seed": seed, "episode": e, "churn": c + rng.normal(0, 0.05)}
                for e, c in enumerate(churn)
            ]
            ops += [
                {"cohort": cohort, "seed": seed, "op_name": name, "chosen": 19 if name == top else 1 if top else 7}
                for name in ("GERMINATE", "ADVANCE", "FOSSILIZE")
            ]
    per_seed = lambda **values: pl.DataFrame([{"cohort": c, "seed": s, **values} for c in ("steady", "stuck") for s in range(5)])
    heads = pl.DataFrame([{"cohort": c, "head": "op", "open_entropy": 1.0} for c in ("steady", "stuck")])
    ev = Evidence(
        pl.DataFrame(rows, infer_schema_length=None),
        per_seed(wait_share=0.6).join(pl.DataFrame({"arm": ["ppo_greedy", "ppo_sampled"]}), how="cross"),
        per_seed(kept=0.9),
        heads,
        curves=pl.DataFrame(curves),
        ops=pl.DataFrame(ops),
    )
    assert churn_drop(ev.curves).filter(pl.col("cohort") == "steady").height == 5 * 4  # 20 episodes: 4 pairs a run
    verdicts = {(g.name, g.cohort): g.verdict for g in phase5.gates(pack, ev)}
    assert {name: v for (name, cohort), v in verdicts.items() if cohort == "steady"} == {
        "0 moves the frontier": "PASS",
        "1 churn drops": "PASS",
        "2 ROI stays high": "PASS",
        "3 fossils stable and beneficial": "PASS",
        "4 minimal conv_heavy": "PASS",
        "5 governor consistent": "PASS",
        "6 no collapse": "PASS",
        "7 metric kept": "PASS",
    }
    assert {name: v for (name, cohort), v in verdicts.items() if cohort == "stuck" and v != "PASS"} == {
        "0 moves the frontier": "FAIL",
        "1 churn drops": "FAIL",
        "3 fossils stable and beneficial": "FAIL",  # a fossil per episode was lost
        "4 minimal conv_heavy": "FAIL",
        "6 no collapse": "FAIL",
    }  # 19 of 21 non-WAIT decisions fossilise


@pytest.mark.slow
def test_the_stage1_study_runs_on_cifar10_too(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    write_cifar10_batches(tmp_path / "cifar", per_batch=64)
    overrides = {"task": "cifar10_cnn", "cifar_folder": str(tmp_path / "cifar"), "host": {"widths": [4, 8]}, "batch_size": 16}
    run_id = run_member("stage1_growth", "growth", 0, "smoke", tmp_path / "telemetry", overrides)
    runs = Store(tmp_path / "telemetry").runs()
    assert set(runs["task"]) == {"cifar10_cnn"} and set(runs["status"]) == {"completed"}
    assert set(runs.filter(pl.col("parent_run") == run_id)["arm"]) == set(load_pack("stage1_growth").cohorts["growth"]["arms"])


@pytest.mark.slow
def test_the_stage1_economy_lets_a_cheap_seed_pay_and_prices_a_host_sized_one_below_it():
    """The calibration (stage1_growth.toml), over four held-out episodes: the scripted attention
    seed earns a positive return, a conv_heavy as big as the host less (its rent eats its gain),
    and the static host exactly 0. (Before the test split took a fifth of digits, conv_heavy's rent
    was about its gain; with 1,077 training images its gain is smaller: -2.5 an episode on these.)"""
    settings = load_pack("stage1_growth").settings("growth", 0, "full")
    returns = {}
    for name, policy in (
        ("attention", OraclePolicy(Blueprint.ATTENTION)),
        ("conv_heavy", OraclePolicy(Blueprint.CONV_HEAVY)),
        ("static", StaticPolicy()),
    ):
        summaries = run_episodes(VecEnv(settings.run, 1), policy, seeds=eval_seeds(0, 4))
        returns[name] = statistics.fmean(s.episode_return for s in summaries)
    assert returns["static"] == 0.0
    assert returns["attention"] > 1.0 and returns["conv_heavy"] < returns["attention"]


def test_scripted_arms_need_what_they_play_and_only_a_ppo_arm_needs_training():
    settings = load_pack("stage2_decay").settings("emrakul", 0, "smoke")
    assert settings.rounds == 0 and settings.arms == ("static", "planter") and settings.planter is Blueprint.CONV_HEAVY
    base = {"task": "digits_cnn", "rounds": 0}
    with pytest.raises(ValueError, match="rounds=0 must be an integer >= 1"):
        Settings.build(base)  # the default arms include the trained policy
    with pytest.raises(ValueError, match="'planter' needs settings that name the blueprint"):
        Settings.build({**base, "arms": ["planter"]})
    with pytest.raises(ValueError, match="'plantr' is not one of"):
        Settings.build({**base, "arms": ["plantr"], "planter": "conv_heavy"})
    with pytest.raises(ValueError, match="planter='lora' must be one of the run's blueprints"):
        Settings.build({**base, "arms": ["planter"], "planter": "lora"})
    assert Settings.build({"arms": ["static"]}).rounds == 0  # the default budget trains only when a ppo arm plays
    with pytest.raises(ValueError, match="rounds=5 would train a policy no arm plays"):
        Settings.build({"arms": ["static"], "rounds": 5})


def test_a_learned_emrakul_sets_the_policys_role_and_plays_beside_the_planter():
    settings = load_pack("stage2_learned").settings("learned", 0, "smoke")
    assert settings.run.decay.learned and settings.policy.role == "emrakul"
    assert isinstance(settings.partner(), PlanterPolicy) and Settings.build(settings.to_dict()) == settings
    alone = Settings.build({"decay": {"enabled": True, "learned": True}})
    assert alone.policy.role == "both" and alone.partner() is None  # no scripted Tamiyo: one agent learns both sets
    assert Settings.build({}).policy.role == "tamiyo"
    learned = {"decay": {"enabled": True, "learned": True}, "planter": "conv_heavy"}
    with pytest.raises(ValueError, match="arms must include ppo_greedy or ppo_sampled"):
        Settings.build({**learned, "rounds": 0, "arms": ["static"]})
    with pytest.raises(ValueError, match=r"arms \['planter'\] play Tamiyo's script beside a learned Emrakul"):
        Settings.build({**learned, "arms": ["ppo_greedy", "planter"]})
    with pytest.raises(ValueError, match="policy.role='tamiyo': decay.learned and planter make it 'emrakul'"):
        Settings.build({**learned, "policy": {"role": "tamiyo"}})


@pytest.mark.slow
def test_the_decay_gates_read_emrakul_against_the_same_planted_episodes_without_it(tmp_path):
    """Both Stage 2 cohorts at the smoke preset, then the report's evidence: the two cohorts
    played the same held-out episodes, Emrakul probed and lysed in live training, and every gate
    reads those numbers (one seed: INCONCLUSIVE where a CI is needed)."""
    root = tmp_path / "telemetry"
    for cohort in ("planted", "emrakul"):
        run_member("stage2_decay", cohort, 0, "smoke", root)
    ev = evidence(Store(root))
    planter = ev.outcomes.filter(pl.col("arm") == "planter")
    seeds = {c: sorted(planter.filter(pl.col("cohort") == c)["episode_seed"]) for c in ("planted", "emrakul")}
    assert seeds["planted"] == seeds["emrakul"]  # paired
    assert planter.filter(pl.col("cohort") == "planted")["lyses"].sum() == 0
    emrakul = planter.filter(pl.col("cohort") == "emrakul")
    assert emrakul["lyses"].sum() >= 1 and (emrakul["probes"] >= emrakul["lyses"]).all()
    assert ev.probes.height == emrakul["restored"].sum() + emrakul["cleared"].sum()
    assert (ev.probes["recovery_steps"].drop_nulls() >= 1).all() and set(ev.probes["lock_steps"]) == {10}
    assert set(ev.probes["watch_steps"]) == {DecayConfig.watch_steps}
    gates = {g.name: g for g in stage2.gates(load_pack("stage2_decay"), ev)}
    assert list(gates) == ["1 lyses", "2 no lasting spike", "3 locks hold", "4 cheaper", "5 accuracy kept"]
    assert gates["1 lyses"].verdict == "INCONCLUSIVE" and f"of {ev.probes.height} judged probes" in gates["2 no lasting spike"].evidence
    selection = Selection(Store(root), cohort="emrakul", run=planter.filter(pl.col("cohort") == "emrakul")["run_id"][0])
    page = decay_page(Store(root), selection)
    assert page.select(pn.pane.Markdown)[0].object.startswith("### Decay — emrakul-seed0-smoke-flat-eval-planter")
    assert len(page.select(pn.pane.HoloViews)) == 2  # debt and sedation per phage
    probes = page.select(pn.pane.DataFrame)[0].object
    assert len(probes) == ev.probes.filter((pl.col("run_id") == selection.run.value) & (pl.col("env") == 0) & (pl.col("episode") == 0)).height


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_notebook_parameter_has_a_type_and_a_meaning(notebook):
    """`papermill --help-notebook NOTEBOOK` lists each parameter with its type and its comment, and
    none goes missing (papermill skips an assignment whose annotation it cannot parse, `str | None`)."""
    declared = papermill.inspect_notebook(str(notebook))
    cell = next(c for c in nbformat.read(notebook, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    assigned = [line.split(":")[0].split("=")[0].strip() for line in cell.source.splitlines() if line and line[0].isalpha()]
    assert list(declared) == assigned
    assert all(p["inferred_type_name"] != "None" and p["help"] for p in declared.values()), declared


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_every_shipped_notebook_cell_has_an_id(path):
    """nbformat 4.5 wants cell ids; without them every papermill read warns (and one day fails)."""
    assert all("id" in cell for cell in json.loads(path.read_text())["cells"])
