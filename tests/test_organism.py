"""The organism helpers behind the tour notebook, on real hosts, planes and tensors."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from esper_lab.contracts import Action, Blueprint, Op, Stage, SurfaceDensity
from esper_lab.data import classification_batches, load_digits
from esper_lab.organism import (
    HOST_DENSITIES,
    build_host,
    epoch_runner,
    focus_cycle,
    ladder_profile,
    set_level,
    surface_table,
    walk_lifecycle,
)
from esper_lab.plane import IllegalAction, SeedPlane
from esper_lab.seeds import blueprints_for

VOCAB = 17
HOSTS = [(kind, density) for kind, densities in HOST_DENSITIES.items() for density in densities]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convs: two OpenMP threads on a busy 2-core machine ran an epoch ~40x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def cnn_plane(density=SurfaceDensity.A0, seed=0):
    host = build_host("cnn", density, seed=seed)
    return host, SeedPlane(host, run_seed=seed)


def test_build_host_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b = build_host("cnn", "a1", seed=4), build_host("cnn", "a1", seed=4)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = build_host("cnn", "a1", seed=5)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_build_host_rejects_unknown_kind_and_density_by_name():
    with pytest.raises(ValueError, match="kind='mlp'.*cnn"):
        build_host("mlp", "a0")
    with pytest.raises(ValueError, match="density"):
        build_host("cnn", "a2")


def test_transformer_vocab_defaults_to_the_pydoc_corpus():
    from esper_lab.data import load_pydoc_corpus

    host = build_host("transformer", "a0", n_layer=1)
    assert host.config.vocab_size == load_pydoc_corpus().vocab_size
    assert build_host("transformer", "a0", vocab_size=VOCAB).config.vocab_size == VOCAB


@pytest.mark.parametrize("kind,density", HOSTS)
def test_surface_table_has_one_sorted_row_per_slot_with_the_fitting_blueprints(kind, density):
    host = build_host(kind, density, vocab_size=VOCAB) if kind == "transformer" else build_host(kind, density)
    plane = SeedPlane(host, run_seed=0)
    table = surface_table(plane)
    assert len(table) == len(plane)
    assert table["surface_uid"].is_monotonic_increasing and table["surface_uid"].is_unique
    assert table["slot"].tolist() == list(range(len(plane)))
    for row, spec in zip(table.itertuples(), plane.specs):
        assert row.blueprints.split(", ") == [b.name.lower() for b in blueprints_for(spec)]


def test_surface_table_follows_the_plane_allowed_blueprints():
    host = build_host("cnn", "a0")
    plane = SeedPlane(host, run_seed=0, allowed_blueprints=(Blueprint.CONV_LIGHT, Blueprint.CONV_HEAVY))
    assert set(surface_table(plane)["blueprints"]) == {"conv_light, conv_heavy"}


def test_walk_lifecycle_records_every_op_and_tick_to_fossilized():
    _, plane = cnn_plane()
    walk = walk_lifecycle(plane, 0, Blueprint.CONV_LIGHT)
    assert walk["stage"].iloc[0] == "DORMANT" and walk["stage"].iloc[-1] == "FOSSILIZED"
    assert plane.slots[0].stage is Stage.FOSSILIZED
    ticks = walk[walk["op"] == "tick"]
    assert len(ticks) == 5  # Tempo.STANDARD ramps over 5 steps
    assert ticks["alpha"].is_monotonic_increasing and ticks["alpha"].iloc[-1] == 1.0
    assert (walk["active_params"].iloc[1:] == plane.active_param_count()).all()
    assert walk["train_loss"].isna().all()


def test_walk_lifecycle_with_training_fills_sensors_and_loss(digits):
    host, plane = cnn_plane()
    generator = torch.Generator().manual_seed(0)
    train = epoch_runner(host, plane, lambda: classification_batches(digits.train_x, digits.train_y, 64, generator, 2))
    walk = walk_lifecycle(plane, 1, Blueprint.CONV_HEAVY, to=Stage.HOLDING, train=train)
    assert walk["train_loss"].notna().all()
    assert walk.loc[walk["stage"] == "HOLDING", "delta_l2_norm"].item() > 0
    assert plane.slots[1].stage is Stage.HOLDING


def test_walk_lifecycle_rejects_a_stage_off_the_main_line():
    _, plane = cnn_plane()
    with pytest.raises(ValueError, match="PRUNED"):
        walk_lifecycle(plane, 0, Blueprint.CONV_LIGHT, to=Stage.PRUNED)


def test_ladder_profile_rows_per_level_with_rising_cost_and_zero_delta_at_level_zero(digits):
    host, plane = cnn_plane()
    walk_lifecycle(plane, 0, Blueprint.CONV_CHANNEL_LADDER, to=Stage.HOLDING)
    ladder = plane.slots[0].ladder
    for p in ladder.parameters():  # a trained seed, not a zero-initialised one
        torch.nn.init.normal_(p, std=0.1)
    bn_before = [b.clone() for b in host.buffers()]
    profile = ladder_profile(host, plane, 0, digits.val_x[:32], digits.val_y[:32])
    assert profile["level"].tolist() == list(range(ladder.max_level + 1))
    assert profile["active_params"].is_monotonic_increasing and profile["active_params"].is_unique
    assert profile["active_flops"].diff().iloc[1:].gt(0).all()
    assert profile["delta_l2_norm"].iloc[0] == 0
    assert profile["delta_l2_norm"].iloc[1:].gt(0).all()
    assert profile["output_l2_norm"].gt(0).all()
    assert profile["probe_loss"].gt(0).all() and profile["probe_loss"].nunique() > 1
    # a probe: level, host statistics, training mode and gradients are as they were
    assert ladder.level() == 1 and host.training
    assert all(torch.equal(a, b) for a, b in zip(bn_before, host.buffers()))
    assert all(p.grad is None for p in [*host.parameters(), *ladder.parameters()])


def test_ladder_profile_needs_a_ladder():
    host, plane = cnn_plane()
    walk_lifecycle(plane, 0, Blueprint.CONV_HEAVY, to=Stage.BLENDING)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="not a ladder"):
        ladder_profile(host, plane, 0, x, y)


def test_set_level_goes_through_actions_and_respects_fossilisation():
    _, plane = cnn_plane()
    walk_lifecycle(plane, 0, Blueprint.CONV_CHANNEL_LADDER, to=Stage.HOLDING)
    set_level(plane, 0, 3)
    assert plane.report().column("internal_level")[0] == 3
    with pytest.raises(ValueError, match="no ladder level 5"):
        set_level(plane, 0, 5)
    assert plane.slots[0].ladder.level() == 3  # refused before any move
    plane.apply(Action(Op.FOSSILIZE, 0))
    with pytest.raises(IllegalAction, match="FOSSILIZED"):
        set_level(plane, 0, 0)
    walk_lifecycle(plane, 1, Blueprint.CONV_LIGHT, to=Stage.TRAINING)
    with pytest.raises(ValueError, match="slot 1 has no ladder"):
        set_level(plane, 1, 1)


def test_focus_cycle_grows_each_subtarget_once_and_returns_focus():
    host = build_host("transformer", "a1", vocab_size=VOCAB)
    plane = SeedPlane(host, run_seed=0)
    walk_lifecycle(plane, 2, Blueprint.LORA_MULTI_LADDER, to=Stage.TRAINING)
    ladder = plane.slots[2].ladder
    cycle = focus_cycle(plane, 2)
    assert isinstance(cycle, pd.DataFrame) and len(cycle) == 1 + 2 * ladder.n_subtargets
    grows = cycle[cycle["op"] == "GROW_INTERNAL"]
    assert grows["focus"].tolist() == [s.name for s in ladder.subtargets]
    assert grows["active_params"].diff().iloc[1:].gt(0).all()
    assert ladder.levels.tolist() == [2] * ladder.n_subtargets and int(ladder.focus) == 0
    with pytest.raises(ValueError, match="multi-ladder"):
        walk_lifecycle(plane, 0, Blueprint.LORA_RANK_LADDER, to=Stage.TRAINING)
        focus_cycle(plane, 0)
