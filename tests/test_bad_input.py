"""Bad input, as a user types it: one `esper-lab: error:` line naming the key, exit 2, no
traceback, nothing written. The corpus is one table; a case is (argv, the key the line names).

Pack files go through `pack run <file>`; `{tmp}` in an argv is the test's folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_lab import checks
from esper_lab.cli import main
from esper_lab.experiments.evaluation import eval_run_id
from esper_lab.experiments.member import clear_attempt, member_run_id

RUN = ["run", "--episode-length", "2", "--set", "batches_per_step=1"]
SETS = [
    ("data_fraction=abc", "data_fraction"),
    ("data_fraction=1e-9", "data_fraction"),  # 0 of 1,077 rows: fewer than one batch
    ("data_fraction=0", "data_fraction"),
    ("data_fraction=1.5", "data_fraction"),
    ("data_fraction=" + "9" * 400, "data_fraction"),  # an int too large for a float is still compared, never converted
    ("ppo.gamma=abc", "ppo.gamma"),
    ("ppo.gamma=1.5", "ppo.gamma"),
    ("host=5", "host"),
    ("host={widths=[0]}", "host.widths"),
    ('host={widths="x"}', "host.widths"),
    ("host={bogus=1}", "host"),
    ("host={channels_last=1}", "host.channels_last"),
    ("economy=5", "economy"),
    ("economy=0", "economy"),
    ("policy=false", "policy"),
    ("economy={bogus=1}", "economy.bogus"),
    ("decay=[1]", "decay"),
    ("ppo.entropy_coef=5", "ppo.entropy_coef"),
    ("ppo.entropy_coef={op=-1}", "ppo.entropy_coef.op"),
    ('ppo.entropy_coef={op="x"}', "ppo.entropy_coef.op"),
    ("ppo.entropy_coef={bogus=1}", "ppo.entropy_coef"),
    ("ppo.entropy_target={op=inf}", "ppo.entropy_target.op"),
    ("seed=99999999999999999999", "seed"),
    ("seed=1099511627776", "seed"),  # 2**40: sklearn's split takes seeds below 2**32
    ("seed=-1", "seed"),
    ("seed=1.5", "seed"),
    ("lr=inf", "lr"),
    ("lr=nan", "lr"),
    ("lr=true", "lr"),
    ("lr=0", "lr"),
    ("lr=abc", "lr"),
    ("ppo.lr=inf", "ppo.lr"),
    ("ppo.clip=-1", "ppo.clip"),
    ("ppo.value_coef=-inf", "ppo.value_coef"),
    ("ppo.epochs=0", "ppo.epochs"),
    ("ppo.epochs=2.0", "ppo.epochs"),
    ("ppo.curriculum=5", "ppo.curriculum"),
    ('ppo.curriculum=[{rounds=1, ops="germinate"}]', "ppo.curriculum.ops"),
    ("ppo.curriculum=[{rounds=0, ops=[]}]", "ppo.curriculum.rounds"),
    ("economy.rent_weight=inf", "economy.rent_weight"),
    ("economy.rent_weight=-1", "economy.rent_weight"),
    ("economy.churn_weight=true", "economy.churn_weight"),
    ("economy.churn_window=1.5", "economy.churn_window"),
    ("economy.reward_signal=bogus", "economy.reward_signal"),
    ("economy.reward_signal=1", "economy.reward_signal"),
    ("decay.enabled=1", "decay.enabled"),
    ('decay.enabled="true"', "decay.enabled"),
    ("decay.probe_steps=0", "decay.probe_steps"),
    ("decay.harm_tolerance=nan", "decay.harm_tolerance"),
    ("ppo.normalise_advantages=no", "ppo.normalise_advantages"),
    ("ppo.scale_rewards=1", "ppo.scale_rewards"),
    ("policy.recurrent=maybe", "policy.recurrent"),
    ("policy.hidden=0", "policy.hidden"),
    ("policy.hidden=true", "policy.hidden"),
    ("policy.encoder=bogus", "policy.encoder"),
    ('policy.ops=["bogus"]', "policy.ops"),
    ("policy.ops=germinate", "policy.ops"),
    ("batch_size=0", "batch_size"),
    ("batch_size=1.5", "batch_size"),
    ("episode_length=true", "episode_length"),
    ("test_every=-1", "test_every"),
    ("contribution_every=abc", "contribution_every"),
    ("max_seeds=abc", "max_seeds"),
    ("param_budget=-1", "param_budget"),
    ("val_samples=0", "val_samples"),
    ("blueprints=conv_heavy", "blueprints"),
    ('blueprints=["bogus"]', "blueprints"),
    ('blueprints=["lora"]', "blueprints"),  # a Transformer seed on a CNN task
    ("blueprints=[]", "blueprints"),
    ("density=a9", "density"),
    ("density=a2", "density"),  # a CNN has no a2
    ("task=bogus", "task"),
    ("task=5", "task"),
    ("device=tpu", "device"),
    ("device=cuda:99", "device"),
    ("cifar_folder=5", "cifar_folder"),
    ("rounds=-1", "rounds"),
    ("envs=0", "envs"),
    ("workers=abc", "workers"),
    ("workers=5", "workers"),  # more workers than envs
    ("eval_episodes=-1", "eval_episodes"),
    ('arms=["bogus"]', "arms"),
    ("arms=5", "arms"),
    ("arms=[]", "arms"),
    ("oracle=5", "oracle"),
    ("oracle=bogus", "oracle"),
    ("bogus=1", "bogus"),
    ("nosuch.x=1", "nosuch.x"),
    ("ppo.bogus=1", "ppo.bogus"),
    ("noequals", "noequals"),
]
CASES = [pytest.param([*RUN, "--set", item], key, None, id=item) for item, key in SETS] + [
    pytest.param(["run", "--task", "cifar10_cnn", "--cifar-folder", "{tmp}/missing"], "cifar", None, id="cifar-folder-missing"),
    pytest.param(["run", "--device", "cuda:7"], "device", None, id="run-device"),
    pytest.param(["run", "--density", "a7"], "density", None, id="run-density"),
    pytest.param(["train", "--resume"], "--resume", None, id="resume-without-checkpoint"),
    pytest.param(["train", "--set", 'arms=["bogus"]', "--set", "rounds=3"], "'bogus' is not one of", None, id="train-unknown-arm"),
    pytest.param(["train", "--envs", "2", "--episode-length", "2", "--set", "data_fraction=0.01"], "data_fraction", None, id="train-workers-data"),
    pytest.param(["evaluate", "{tmp}/missing/policy.pt"], "policy.pt", None, id="evaluate-missing-policy"),
    pytest.param(["notebooks", "{tmp}/afile"], "afile", None, id="notebooks-dest-is-a-file"),
    pytest.param(["pack", "run", "nosuchpack"], "nosuchpack", None, id="pack-unknown"),
    pytest.param(["pack", "run", "stage1_growth", "--preset", "huge"], "preset", None, id="pack-unknown-preset"),
    pytest.param(["pack", "run", "stage1_growth", "--param", "overrides={}"], "overrides", None, id="pack-param-overrides"),
    pytest.param(["pack", "run", "stage1_growth", "--param", "noequals"], "noequals", None, id="pack-param-malformed"),
    pytest.param(["pack", "run", "stage1_growth", "--set", "lr=inf"], "lr", None, id="pack-set"),
    pytest.param(["pack", "run", "stage1_growth", "--scheduler", "tls://127.0.0.1:8786"], "--scheduler", None, id="pack-scheduler-tls"),
]

PACK = """
name = "tiny"
title = "Tiny"
notebook = "05_pack_cohorts.ipynb"
seeds = [0, 1]
control = "baseline"

[presets.smoke]
rounds = 1
envs = 1

[cohorts.baseline]
task = "digits_cnn"
"""
PACKS = [
    ("seeds = [0, 1]", "seeds = 5", "seeds"),
    ("seeds = [0, 1]", "seeds = [-1]", "seeds[0]"),
    ("seeds = [0, 1]", "seeds = [true]", "seeds[0]"),
    ("seeds = [0, 1]", "seeds = []", "seeds"),
    ('control = "baseline"', 'control = ["baseline"]', "control"),
    ('control = "baseline"', 'control = "other"', "control"),
    ('name = "tiny"', 'name = "../../x"', "name"),
    ('name = "tiny"', "name = 5", "name"),
    ('title = "Tiny"', "title = 5", "title"),
    ("[cohorts.baseline]", '[cohorts."b*"]\ntask = "digits_cnn"\n[cohorts.baseline]', "cohort"),
    ("[cohorts.baseline]", '[cohorts."../x"]\ntask = "digits_cnn"\n[cohorts.baseline]', "cohort"),
    ("[presets.smoke]", '[presets."a/b"]\nrounds = 1\n[presets.smoke]', "preset"),
    ("envs = 1", 'envs = 1\narms = ["bogus"]', "arms"),
    ("envs = 1", "envs = 1\nlr = inf", "lr"),
    ("envs = 1", "envs = 1\nbogus = 1", "bogus"),
    ('task = "digits_cnn"', 'task = "digits_cnn"\neconomy = 5', "economy"),
    ('task = "digits_cnn"', 'task = "digits_cnn"\nppo = {gamma = "abc"}', "ppo.gamma"),
    ("rounds = 1", "rounds = 1\n[presets.full]\nseeds = [0, 1]", "full"),
    ('title = "Tiny"', 'title = "Tiny', "TOML"),  # a syntax error names the file
    ('control = "baseline"', 'control = "baseline"\nstudy = "x"', "study"),
    ('control = "baseline"', 'control = "baseline"\ngates = "seed002"', "gates"),  # an unknown key (a pack's study is `study`)
    ('title = "Tiny"', 'title = "Tiny"\ndescription = 5', "description"),
]
CASES += [pytest.param(["pack", "run", "{tmp}/tiny.toml"], key, (old, new), id=f"pack-file-{i}") for i, (old, new, key) in enumerate(PACKS)]


@pytest.mark.parametrize(("argv", "key", "pack_edit"), CASES)
def test_bad_input_is_one_line_naming_the_key_exit_2_and_nothing_written(argv, key, pack_edit, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a pack run writes under ./telemetry and ./reports by default
    (tmp_path / "afile").write_text("not a folder")
    if pack_edit is not None:  # the tiny pack file with one line made bad
        (tmp_path / "tiny.toml").write_text(PACK.replace(*pack_edit, 1))
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("esper-lab: error: ") and "Traceback" not in err + out, err
    assert key in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no telemetry, reports, data or cache


def test_the_corpus_is_large():
    assert len(CASES) >= 95


ALLOWED = st.text(st.sampled_from("abcXYZ019_-."), min_size=1, max_size=20).filter(lambda s: s[0].isalnum())


@given(ALLOWED)
def test_a_name_the_rule_allows_is_one_plain_folder_name(name):
    assert checks.name("cohort", name) == name and "/" not in name and not any(c in name for c in "*?[]")


@given(st.text(min_size=1, max_size=12).filter(lambda s: any(c in s for c in "*?[]/\\ \0:") or not s[0].isalnum()))
def test_a_name_with_a_pattern_or_a_path_in_it_is_refused(name):
    with pytest.raises(checks.ConfigError, match="is not a name"):
        checks.name("cohort", name)


@pytest.mark.parametrize("value", [1, 1.0, float("inf"), float("nan"), "1", None])
def test_flags_are_only_bools(value):
    with pytest.raises(checks.ConfigError, match="must be true or false"):
        checks.flag("x", value)


@pytest.mark.parametrize("value", [True, False, float("inf"), -float("inf"), float("nan"), "1", None, [1]])
def test_numbers_are_finite_and_never_bools(value):
    with pytest.raises(checks.ConfigError, match="must be a finite number"):
        checks.number("x", value)


NAMES = st.text(st.sampled_from("abg*?[]-_.0"), min_size=1, max_size=8)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(cohort=ALLOWED, others=st.lists(st.tuples(NAMES, NAMES), max_size=6))
def test_a_retried_member_deletes_exactly_its_own_runs(cohort, others):
    """Whatever the other cohorts and runs are called (globs, prefixes of this run's id included),
    clearing a member's earlier attempt removes its training and eval runs and nothing else."""
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        own = member_run_id(cohort, 0, "smoke", "flat")
        mine = [own, eval_run_id(own, "eval", "static"), eval_run_id(own, "eval", "ppo_greedy")]
        theirs = [(cohort, own + "0"), (cohort, eval_run_id(own, "reeval", "static")), (cohort + "x", own)]
        theirs += [(c, r) for c, r in others if (c, r) != (cohort, own)]
        for c, r in [(cohort, r) for r in mine] + theirs:
            folder = root / f"cohort={c}" / f"run={r}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "part").write_text("rows")
        mine_paths = {root / f"cohort={cohort}" / f"run={r}" for r in mine}
        kept = {root / f"cohort={c}" / f"run={r}" for c, r in theirs} - mine_paths
        clear_attempt(root, cohort, own)
        assert not any(p.exists() for p in mine_paths)
        assert all((p / "part").read_text() == "rows" for p in kept)
