"""Issue 11: metrics that mean what they say. In-forward vs incubating params, measured
contributions, held-out evaluation seeds, every knob reachable and recorded, and the layers."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esper_lab.config import RunConfig
from esper_lab.contracts import EVAL_SEED_BASE, Action, Blueprint, Op, Stage, eval_episode_seed, training_episode_seed
from esper_lab.env import MorphEnv, slot_count
from esper_lab.experiments.evaluation import eval_seeds, evaluate_arms
from esper_lab.experiments.settings import Settings, merge, parse_assignments, played_arms
from esper_lab.experiments.train import train_and_record
from esper_lab.experiments.workers import CORES_ENV_VAR
from esper_lab.telemetry import Store
from esper_lab.training import evaluate

SMALL = dict(episode_length=6, batches_per_step=3, data_fraction=0.3, contribution_every=1)
HEAVY_SLOT = 1  # digits_cnn at a0: the deeper of the two surfaces


def blended(config: RunConfig) -> tuple[MorphEnv, object]:
    """An env whose conv_heavy seed at the deep surface is blending in (alpha > 0)."""
    env = MorphEnv(config)
    env.reset()
    for action in (Action(Op.GERMINATE, HEAVY_SLOT, Blueprint.CONV_HEAVY), Action(Op.ADVANCE, HEAVY_SLOT)):
        result = env.step(action)
        assert result.metrics["forward_params"] == 0  # germinated, then TRAINING: incubating
        assert result.metrics["incubating_params"] > 0
        assert not result.report.column("in_forward").any()
        assert math.isnan(float(result.report.column("contribution")[HEAVY_SLOT]))
    result = env.step(Action(Op.ADVANCE, HEAVY_SLOT))  # BLENDING: alpha ramps from this step
    assert env.plane.slots[HEAVY_SLOT].stage is Stage.BLENDING and env.plane.slots[HEAVY_SLOT].alpha > 0
    return env, result


def test_in_forward_params_count_only_seeds_the_host_sees():
    env, result = blended(RunConfig(**SMALL))
    seed = env.plane.slots[HEAVY_SLOT].seed
    assert result.metrics["forward_params"] == seed.param_count_active() and result.metrics["incubating_params"] == 0
    assert result.report.column("in_forward").tolist() == [0.0, 1.0]


def test_contribution_is_the_metric_difference_the_seed_alone_makes():
    env, result = blended(RunConfig(**SMALL))
    # measured this step (contribution_every=1): the metric with the seed minus without it
    measured = float(result.report.column("contribution")[HEAVY_SLOT])
    assert result.report.column("contribution_measured").tolist() == [0.0, 1.0]
    with_seed = evaluate(env.host, env.plane, env.probe_x, env.probe_y).accuracy
    host_alone = evaluate(env.host, None, env.probe_x, env.probe_y).accuracy  # the only difference is the seed
    assert measured == pytest.approx(with_seed - host_alone, rel=1e-6)  # the report is float32
    assert env.contribution(HEAVY_SLOT) == pytest.approx(with_seed - host_alone, abs=1e-12)
    # a seed whose alpha is 0 changes nothing: its contribution is exactly 0
    env.plane.slots[HEAVY_SLOT].alpha = 0.0
    assert env.contribution(HEAVY_SLOT) == 0.0


def test_contributions_are_probed_every_k_steps_and_at_the_end():
    env, _ = blended(RunConfig(**{**SMALL, "contribution_every": 2}))  # steps 1-3 played
    measured = []
    while True:
        result = env.step(Action(Op.WAIT))
        measured.append((result.step, bool(result.report.column("contribution_measured")[HEAVY_SLOT])))
        if result.done:
            break
    assert measured == [(4, True), (5, False), (6, True)]
    assert math.isfinite(result.metrics["full_metric"])


@given(st.integers(0, 2**31), st.integers(0, 64), st.integers(0, 10**6), st.integers(0, 9999))
def test_training_and_evaluation_episode_seeds_never_meet(run_seed, env_index, episode, k):
    assert training_episode_seed(run_seed, env_index, episode) < EVAL_SEED_BASE <= eval_episode_seed(run_seed, k)


@pytest.mark.slow
def test_held_out_arms_play_the_same_unseen_episodes_and_the_manifest_holds_every_config(tmp_path):
    values = merge(
        dict(task="digits_cnn", rounds=2, envs=2, eval_episodes=2, **{k: v for k, v in SMALL.items() if k != "contribution_every"}),
        parse_assignments(["economy.rent_weight=0.5", "ppo.lr=2e-3", "ppo.epochs=2", "policy.hidden=32"]),
    )
    settings = Settings.build(values)
    run_id, agent = train_and_record(settings, tmp_path, "unit", run_id="t", preset="smoke")
    evaluate_arms(settings, agent, tmp_path, "unit", run_id, preset="smoke")
    store = Store(tmp_path)
    runs = store.runs().rows_by_key("run_id", named=True, unique=True)
    manifest = runs["t"]
    assert RunConfig.from_json(manifest["config_json"]).economy.rent_weight == 0.5
    assert '"lr": 0.002' in manifest["ppo_config_json"] and '"hidden": 32' in manifest["policy_config_json"]
    outcomes = store.episode_outcomes()
    training = set(outcomes.filter(kind="ppo")["episode_seed"])
    held_out = {arm: set(outcomes.filter(arm=arm)["episode_seed"]) for arm in ("ppo_greedy", "ppo_sampled", "static", "heuristic", "random")}
    assert len(training) == 4  # two rounds x two envs, a new seed per training episode
    assert all(seeds == set(eval_seeds(0, 2)) for seeds in held_out.values())  # every arm, the same episodes
    assert not training & held_out["static"]
    assert {runs[f"t-eval-{arm}"]["parent_run"] for arm in held_out} == {"t"}
    assert "t-eval-oracle" not in runs  # no oracle named, no oracle arm


@pytest.mark.slow
def test_an_oracle_arm_grows_its_blueprint_on_the_same_held_out_episodes(tmp_path):
    settings = Settings.build(dict(rounds=1, envs=2, eval_episodes=2, oracle="conv_heavy", **SMALL))
    assert played_arms(settings)[-1] == "oracle" and Settings.build(settings.to_dict()) == settings
    evaluate_arms(settings, None, tmp_path, "unit", "t", arms=("static", "oracle"))
    outcomes = Store(tmp_path).episode_outcomes()
    oracle, static = outcomes.filter(arm="oracle"), outcomes.filter(arm="static")
    assert set(oracle["episode_seed"]) == set(static["episode_seed"]) == set(eval_seeds(0, 2))
    assert (oracle["forward_params"] > 0).all() and (static["forward_params"] == 0).all()
    with pytest.raises(ValueError, match="oracle='lora'"):
        Settings.build({"oracle": "lora"})


@pytest.mark.parametrize(
    "items,message",
    [
        (["economy.rent_wieght=1"], "economy.rent_wieght"),
        (["ppo.lr=-1"], "ppo.lr=-1"),
        (["policy.encoder=mlp"], "policy.encoder='mlp'"),
        (["batch_sise=3"], "batch_sise"),
        (["rounds=0"], "rounds=0"),
        (["bogus.x=1"], "dotted key"),
        (["noequals"], "KEY=VALUE"),
    ],
)
def test_bad_knobs_fail_before_compute_naming_the_key(items, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        Settings.build(parse_assignments(items))


def test_knob_values_parse_as_toml_literals():
    values = parse_assignments(["host={widths=[4, 8]}", "batch_size=32", "policy.encoder=slot_transformer", "ppo.entropy_coef={op=0.02}"])
    settings = Settings.build(values)
    assert settings.run.host["widths"] == (4, 8) and settings.run.batch_size == 32
    assert settings.policy.encoder == "slot_transformer" and settings.ppo.entropy_coef["op"] == 0.02
    assert Settings.build(settings.to_dict()) == settings
    assert Settings.build({}).policy.max_slots == slot_count(RunConfig())  # the flat encoder's S from the config alone


# --- the layers (DESIGN rule 9) ------------------------------------------------------------------
PACKAGE = Path(__file__).resolve().parents[1] / "esper_lab"
ORGANISM = ("hosts", "seeds", "slot", "plane")
CORE = (
    *("contracts", "checks", "config", "data", *ORGANISM),
    *("training", "economy", "governor", "decay", "env", "vecenv", "episodes", "policy", "ppo", "telemetry"),
)


def project_imports(path: Path) -> set[str]:
    """The esper_lab parts (first name after `esper_lab.`) a module imports, anywhere in it."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("esper_lab"):
            names.add(node.module.split(".")[1] if "." in node.module else node.names[0].name)
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("esper_lab.")}
    return names


def part_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_stay_in_their_rooms(path):
    part, imports = part_of(path), project_imports(path) - {part_of(path)}
    if part in ("contracts", "checks"):  # the vocabulary and the validation layer: the ground floor
        assert not imports
    if part in ORGANISM:
        assert imports <= {"contracts", *ORGANISM}, imports
    if part == "telemetry":
        assert imports <= {"contracts", "checks", "config"}, imports
    if part in ("policy", "env", "governor", "decay", *ORGANISM):
        assert "telemetry" not in imports
    if part in CORE:
        assert "dashboards" not in imports and "experiments" not in imports and "studies" not in imports, imports
    if part in ("experiments", "studies"):  # the core of a study: the dashboards build on it, never the reverse
        assert "dashboards" not in imports, imports


def test_a_contribution_reward_pays_for_what_the_seeds_in_forward_add_every_step():
    config = RunConfig(**{**SMALL, "contribution_every": 0}, economy={"reward_signal": "contribution"})
    env, result = blended(config)  # probed every step all the same: the reward needs it
    contribution = float(result.report.column("contribution")[HEAVY_SLOT])
    assert result.report.column("contribution_measured")[HEAVY_SLOT] == 1
    assert result.reward.task == pytest.approx(config.economy.task_scale * contribution, rel=1e-5)
    env.reset()
    assert env.step(Action(Op.WAIT)).reward.task == 0.0  # nothing in forward: no income, whatever the host learns


def test_the_static_twin_is_the_static_host_and_the_reward_pays_the_gain_over_it():
    """The twin starts when the seed first blends in; from then on its metric equals, bit for bit,
    what an always-WAIT env of the same episode reads, and the episode's task reward sums to the
    final gain over it."""
    config = RunConfig(**SMALL, economy={"reward_signal": "gain_over_static"})
    grown, result = blended(config)
    static = MorphEnv(config)
    static.reset()
    statics = [static.step(Action(Op.WAIT)).metrics["metric"] for _ in range(3)]
    assert grown.twin is not None and result.metrics["static_metric"] == statics[-1]
    task = [result.reward.task]
    while not result.done:
        result = grown.step(Action(Op.WAIT))
        statics.append(static.step(Action(Op.WAIT)).metrics["metric"])
        assert result.metrics["static_metric"] == statics[-1]
        task.append(result.reward.task)
    final_gain = result.metrics["metric"] - result.metrics["static_metric"]
    assert sum(task) == pytest.approx(config.economy.task_scale * final_gain)  # steps 1-2 paid nothing: no twin yet


def test_no_twin_while_nothing_reaches_the_forward_path():
    env = MorphEnv(RunConfig(**SMALL, economy={"reward_signal": "gain_over_static"}))
    env.reset()
    for action in (Action(Op.GERMINATE, HEAVY_SLOT, Blueprint.CONV_HEAVY), Action(Op.ADVANCE, HEAVY_SLOT), Action(Op.WAIT)):
        result = env.step(action)
        assert env.twin is None and result.reward.task == 0.0  # a TRAINING seed leaves the host the static one


@pytest.mark.parametrize(("cores", "envs", "workers"), [("1", 8, 0), ("2", 8, 2), ("2", 1, 0), ("4", 3, 3)])
def test_by_default_every_core_the_study_may_use_steps_envs(monkeypatch, cores, envs, workers):
    monkeypatch.setenv(CORES_ENV_VAR, cores)
    assert Settings.build({"envs": envs}).workers == workers
    assert Settings.build({"envs": envs, "workers": 0}).workers == 0  # asked for: in this process


def test_a_bad_core_count_is_named(monkeypatch):
    monkeypatch.setenv(CORES_ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="ESPER_LAB_CORES"):
        Settings.build({})
