"""Config validation: every bad value fails before any compute, with a message naming the field."""

from __future__ import annotations

import math

import pytest

from esper_lab.config import TASKS, EconomyConfig, RunConfig
from esper_lab.contracts import Blueprint, SurfaceDensity

BAD_RUN_CONFIGS = [
    # (overrides, words the message must contain)
    ({"task": "mnist"}, ["task", "mnist", *TASKS]),
    ({"blueprints": ("conv_huge",)}, ["blueprints", "conv_huge"]),
    ({"blueprints": ("conv_heavy", "lora")}, ["blueprints", "lora", "digits_cnn"]),
    ({"blueprints": ()}, ["blueprints"]),
    ({"density": "a9"}, ["density", "a9"]),
    ({"density": "a2"}, ["density", "a2"]),
    ({"density": SurfaceDensity.A2, "task": "digits_cnn_deep"}, ["density", "a2"]),
    ({"host": {"depth": 3}}, ["host", "depth", "widths"]),
    ({"host": {"n_layer": 2}}, ["host", "n_layer"]),  # a Transformer key on a CNN task
    ({"episode_length": 0}, ["episode_length"]),
    ({"episode_length": -5}, ["episode_length"]),
    ({"episode_length": 2.5}, ["episode_length"]),
    ({"batch_size": 0}, ["batch_size"]),
    ({"batch_size": -64}, ["batch_size"]),
    ({"max_seeds": 0}, ["max_seeds"]),
    ({"max_seeds": -1}, ["max_seeds"]),
    ({"batches_per_step": 0}, ["batches_per_step"]),
    ({"batches_per_step": -3}, ["batches_per_step"]),
    ({"lr": 0}, ["lr"]),
    ({"lr": -1e-3}, ["lr"]),
    ({"lr": math.nan}, ["lr"]),
    ({"param_budget": 0}, ["param_budget"]),
    ({"param_budget": -0.5}, ["param_budget"]),
    ({"data_fraction": 0}, ["data_fraction"]),
    ({"data_fraction": 1.5}, ["data_fraction"]),
    ({"data_fraction": -0.1}, ["data_fraction"]),
    ({"data_fraction": math.nan}, ["data_fraction"]),
    ({"seed": -1}, ["seed"]),
    ({"seed": 1.5}, ["seed"]),
    ({"economy": {"churn_window": 0}}, ["churn_window"]),
    ({"economy": {"rent_weight": -0.1}}, ["rent_weight"]),
]


@pytest.mark.parametrize(("overrides", "words"), BAD_RUN_CONFIGS, ids=lambda v: repr(v)[:40])
def test_bad_run_config_names_the_field(overrides, words):
    with pytest.raises(ValueError) as info:
        RunConfig(**overrides)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_unknown_task_lists_every_allowed_task():
    with pytest.raises(ValueError, match="task='mnist'") as info:
        RunConfig(task="mnist")
    assert all(name in str(info.value) for name in ("digits_cnn", "digits_cnn_deep", "pydoc_lm", "cifar10_cnn"))


def test_blueprint_error_lists_what_the_task_allows():
    with pytest.raises(ValueError) as info:
        RunConfig(blueprints=("lora",))
    message = str(info.value)
    for blueprint in TASKS["digits_cnn"].blueprints:
        assert blueprint.name.lower() in message.split("allowed:")[1]


def test_a2_is_fine_on_a_transformer_task():
    assert RunConfig(task="pydoc_lm", density="a2").density is SurfaceDensity.A2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("task_scale", -1.0),
        ("rent_weight", -0.05),
        ("churn_weight", -0.5),
        ("internal_op_cost", -0.02),
        ("rent_weight", math.nan),
        ("churn_window", 0),
        ("churn_window", -3),
        ("churn_window", 2.5),
    ],
)
def test_bad_economy_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"economy.{field}="):
        EconomyConfig(**{field: value})


def test_zero_economy_weights_are_allowed():
    config = EconomyConfig(task_scale=0, rent_weight=0, churn_weight=0, internal_op_cost=0, churn_window=1)
    assert config.churn_window == 1


def test_cifar_with_a_missing_folder_names_the_folder(tmp_path):
    missing = tmp_path / "no-cifar-here"
    with pytest.raises(FileNotFoundError) as info:
        RunConfig(task="cifar10_cnn", cifar_folder=str(missing))
    assert str(missing) in str(info.value)
    assert "data_batch_1" in str(info.value)


def test_cifar_with_an_incomplete_folder_names_the_missing_files(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as info:
        RunConfig(task="cifar10_cnn", cifar_folder=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and "test_batch" in message


def test_enum_fields_accept_names_as_strings():
    config = RunConfig(density="A1", blueprints=("conv_heavy", "CONV_CHANNEL_LADDER", Blueprint.NORM))
    assert config.density is SurfaceDensity.A1
    assert config.blueprints == (Blueprint.CONV_HEAVY, Blueprint.CONV_CHANNEL_LADDER, Blueprint.NORM)
    assert all(type(b) is Blueprint for b in config.blueprints)
    assert RunConfig(density="a0") == RunConfig(density=SurfaceDensity.A0)


def test_default_blueprints_are_the_tasks():
    for name, task in TASKS.items():
        if task.data != "cifar10":
            assert RunConfig(task=name).blueprints == task.blueprints


def test_economy_from_a_dict():
    config = RunConfig(economy={"rent_weight": 0.2, "churn_window": 5})
    assert config.economy == EconomyConfig(rent_weight=0.2, churn_window=5)


@pytest.mark.parametrize(
    "config",
    [
        RunConfig(),
        RunConfig(
            task="digits_cnn_deep",
            density="a1",
            blueprints=("conv_light", "conv_multi_ladder"),
            seed=7,
            episode_length=3,
            batches_per_step=5,
            batch_size=32,
            lr=1e-3,
            param_budget=0.25,
            max_seeds=2,
            data_fraction=0.3,
            economy=EconomyConfig(rent_weight=0.1, churn_window=4),
        ),
        RunConfig(host={"widths": (4, 8)}),  # a tuple comes back from JSON as a list
        RunConfig(task="pydoc_lm", density="a2", host={"d_model": 16, "n_layer": 1}, blueprints=("lora_rank_ladder",)),
    ],
    ids=["defaults", "everything", "host-widths", "transformer"],
)
def test_json_round_trip(config):
    text = config.to_json()
    back = RunConfig.from_json(text)
    assert back == config
    assert back.to_json() == text
    assert back.host_config() == config.host_config()


def test_replace_revalidates():
    with pytest.raises(ValueError, match="episode_length"):
        RunConfig().replace(episode_length=0)
    assert RunConfig().replace(seed=3).seed == 3
