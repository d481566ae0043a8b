"""The seed library: shapes, zero start, live gradients, determinism, fits, ladder invariants."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_lab.contracts import Blueprint, HostKind, InjectionSpec, Role, Site
from esper_lab.seeds import (
    BLUEPRINTS,
    MAX_INTERNAL_LEVEL,
    LadderSeed,
    LoraProjLadderSeed,
    LoraRankLadderSeed,
    blueprints_for,
    fits,
    make_seed,
)

BATCH, LENGTH, SIDE = 2, 5, 4
CNN_WIDTH, TOKEN_WIDTH = 8, 8


def _cnn(site: Site, width: int = CNN_WIDTH) -> InjectionSpec:
    return InjectionSpec.build(HostKind.CNN, 0, 2, site, width)


def _token(site: Site, width: int = TOKEN_WIDTH, role: Role = Role.NONE, in_width: int | None = None) -> InjectionSpec:
    return InjectionSpec.build(HostKind.TRANSFORMER, 1, 2, site, width, role, in_width)


# One surface per kind the hosts expose, with the projections' real in/out widths (d, 4d hidden).
SURFACES = [
    *(_cnn(site) for site in (Site.BLOCK_END, Site.POST_CONV1, Site.POST_CONV2, Site.POST_RESID)),
    _cnn(Site.BLOCK_END, width=3),  # odd and tiny: C/2 and C/4 clamp to at least 1
    *(_token(site) for site in (Site.BLOCK_END, Site.POST_ATTN, Site.POST_MLP)),
    _token(Site.POST_ATTN, width=5),  # odd width: attention falls back to one head
    _token(Site.PROJECTION, 3 * TOKEN_WIDTH, Role.ATTN_QKV, TOKEN_WIDTH),
    _token(Site.PROJECTION, TOKEN_WIDTH, Role.ATTN_O, TOKEN_WIDTH),
    _token(Site.PROJECTION, 4 * TOKEN_WIDTH, Role.MLP_UP, TOKEN_WIDTH),
    _token(Site.PROJECTION, TOKEN_WIDTH, Role.MLP_DOWN, 4 * TOKEN_WIDTH),
]
CASES = [(blueprint, spec) for spec in SURFACES for blueprint in blueprints_for(spec)]
IDS = [f"{b.name}-{s.host_kind.name}-{s.site.name}-{s.role.name}-{s.width}" for b, s in CASES]
# Ladder property tests: one surface per (blueprint, role, width); the site does not change a seed.
_FIRST_LADDER_CASES = {(b, s.role, s.width): (b, s) for b, s in reversed(CASES) if BLUEPRINTS[b].is_ladder}
LADDER_CASES = [case for case in CASES if case in _FIRST_LADDER_CASES.values()]
LADDER_IDS = [f"{b.name}-{s.host_kind.name}-{s.role.name}-{s.width}" for b, s in LADDER_CASES]


def _seed(blueprint: Blueprint, spec: InjectionSpec, seed: int = 0):
    return make_seed(blueprint, spec, torch.Generator().manual_seed(seed))


def _shapes(spec: InjectionSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-sample (seed input, host output) shapes at a surface."""
    if spec.host_kind is HostKind.CNN:
        return (spec.in_width, SIDE, SIDE), (spec.width, SIDE, SIDE)
    return (LENGTH, spec.in_width), (LENGTH, spec.width)


def _input(spec: InjectionSpec, seed: int = 1) -> torch.Tensor:
    return torch.randn(BATCH, *_shapes(spec)[0], generator=torch.Generator().manual_seed(seed))


def _randomise(seed_module, seed: int = 2) -> None:
    """Stand-in for training having moved every parameter away from its init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in seed_module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))


def test_every_blueprint_is_declared_and_fits_somewhere():
    assert set(BLUEPRINTS) == set(Blueprint)
    assert {b for b, _ in CASES} == set(Blueprint)
    for blueprint, entry in BLUEPRINTS.items():
        assert entry.blueprint is blueprint


@pytest.mark.parametrize(("blueprint", "spec"), CASES, ids=IDS)
def test_shape_zero_start_and_class(blueprint, spec):
    seed = _seed(blueprint, spec)
    assert seed.blueprint is blueprint
    assert isinstance(seed, LadderSeed) == BLUEPRINTS[blueprint].is_ladder
    x = _input(spec)
    out = seed(x)
    assert out.shape == (BATCH, *_shapes(spec)[1])
    assert out.abs().max() <= 1e-6 * x.abs().max()


@pytest.mark.slow
@pytest.mark.parametrize(("blueprint", "spec"), CASES, ids=IDS)
def test_every_parameter_learns(blueprint, spec):
    """The zero side gets gradient at once, every other parameter by the second SGD step."""
    seed = _seed(blueprint, spec)
    params = dict(seed.named_parameters())
    if not params:
        assert blueprint is Blueprint.NOOP
        return
    x = _input(spec)
    target = torch.randn(BATCH, *_shapes(spec)[1], generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.SGD(seed.parameters(), lr=0.1)
    reached: set[str] = set()
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(seed(x), target).backward()
        reached |= {name for name, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
        assert reached, "no parameter received gradient on the first step"
        optimizer.step()
    assert reached == set(params)


@pytest.mark.parametrize(("blueprint", "spec"), CASES, ids=IDS)
def test_deterministic_germination(blueprint, spec):
    rng_before = torch.random.get_rng_state()
    first, again, other = _seed(blueprint, spec, 0), _seed(blueprint, spec, 0), _seed(blueprint, spec, 1)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "germination touched the global RNG"
    a, b, c = first.state_dict(), again.state_dict(), other.state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    random_parts = [k for k, p in first.named_parameters() if p.abs().sum() > 0]
    assert bool(random_parts) == (blueprint not in (Blueprint.NOOP, Blueprint.NORM))
    assert all(not torch.equal(a[k], c[k]) for k in random_parts)


@pytest.mark.parametrize(("blueprint", "spec"), CASES, ids=IDS)
def test_counts_are_positive_and_consistent(blueprint, spec):
    seed = _seed(blueprint, spec)
    if blueprint is Blueprint.NOOP:
        assert seed.param_count_active() == 0 and seed.flops(_shapes(spec)[0]) == 0
        return
    assert 0 < seed.param_count_active() <= sum(p.numel() for p in seed.parameters())
    assert seed.flops(_shapes(spec)[0]) > 0


def test_fits_rejects_wrong_host_site_and_role():
    residual, cnn = _token(Site.POST_MLP), _cnn(Site.POST_CONV2)
    projection = _token(Site.PROJECTION, 3 * TOKEN_WIDTH, Role.ATTN_QKV, TOKEN_WIDTH)
    assert not fits(Blueprint.LORA_PROJ_LADDER, residual)
    assert not fits(Blueprint.LORA_PROJ_LADDER, cnn)
    assert fits(Blueprint.LORA_PROJ_LADDER, projection)
    assert not fits(Blueprint.CONV_HEAVY, residual)
    assert not fits(Blueprint.LORA, cnn)
    assert not fits(Blueprint.LORA_RANK_LADDER, projection)
    assert not fits(Blueprint.NOOP, projection)  # residual-stream seeds cannot read in != out widths
    assert blueprints_for(projection) == (Blueprint.LORA_PROJ_LADDER,)
    assert not fits(Blueprint.CONV_LIGHT, _cnn(Site.POST_ATTN))  # a site no CNN exposes
    with pytest.raises(ValueError, match="CONV_HEAVY does not fit"):
        make_seed(Blueprint.CONV_HEAVY, residual, torch.Generator().manual_seed(0))


def test_cnn_cost_order():
    spec, shape = _cnn(Site.BLOCK_END, 16), (16, 8, 8)
    heavy, light, depthwise = (_seed(b, spec) for b in (Blueprint.CONV_HEAVY, Blueprint.CONV_LIGHT, Blueprint.DEPTHWISE))
    assert heavy.param_count_active() > light.param_count_active() > depthwise.param_count_active()
    assert heavy.flops(shape) > light.flops(shape) > depthwise.flops(shape)
    ladder = _seed(Blueprint.CONV_CHANNEL_LADDER, spec)
    ladder.set_level(MAX_INTERNAL_LEVEL)
    assert ladder.param_count_active() < heavy.param_count_active()  # a full ladder is still cheaper


# --- ladders ----------------------------------------------------------------------------------

levels_strategy = st.lists(st.integers(0, MAX_INTERNAL_LEVEL), min_size=4, max_size=4)
ladder_settings = settings(max_examples=10, deadline=None)


@pytest.mark.parametrize(("blueprint", "spec"), LADDER_CASES, ids=LADDER_IDS)
@ladder_settings
@given(levels=levels_strategy)
def test_level_zero_is_exactly_zero_after_training(blueprint, spec, levels):
    seed = _seed(blueprint, spec)
    _randomise(seed)
    x = _input(spec)
    for k in range(seed.n_subtargets):
        seed.set_level(levels[k], k)
    assert seed(x).abs().sum() > 0 or not any(levels[: seed.n_subtargets])
    for k in range(seed.n_subtargets):
        seed.set_level(0, k)
    assert torch.equal(seed(x), torch.zeros(BATCH, *_shapes(spec)[1]))


@pytest.mark.parametrize(("blueprint", "spec"), LADDER_CASES, ids=LADDER_IDS)
@ladder_settings
@given(levels=levels_strategy, data=st.data())
def test_counts_strictly_increase_with_each_subtarget_level(blueprint, spec, levels, data):
    seed = _seed(blueprint, spec)
    for k in range(seed.n_subtargets):
        seed.set_level(levels[k], k)
    k = data.draw(st.integers(0, seed.n_subtargets - 1))
    params, flops = [], []
    for level in range(seed.max_level + 1):
        seed.set_level(level, k)
        params.append(seed.param_count_active())
        flops.append(seed.flops(_shapes(spec)[0]))
    assert all(a < b for a, b in pairwise(params))
    assert all(a < b for a, b in pairwise(flops))
    assert params[-1] <= sum(p.numel() for p in seed.parameters())


@pytest.mark.parametrize(("blueprint", "spec"), LADDER_CASES, ids=LADDER_IDS)
@ladder_settings
@given(a=st.integers(0, MAX_INTERNAL_LEVEL), b=st.integers(0, MAX_INTERNAL_LEVEL), data=st.data())
def test_level_changes_restore_masks_and_keep_shapes(blueprint, spec, a, b, data):
    seed = _seed(blueprint, spec)
    k = data.draw(st.integers(0, seed.n_subtargets - 1))
    shapes = {name: p.shape for name, p in seed.named_parameters()}
    values = {name: p.detach().clone() for name, p in seed.named_parameters()}
    seed.set_level(a, k)
    buffers = {name: t.clone() for name, t in seed.named_buffers()}
    seed.set_level(b, k)
    assert {name: p.shape for name, p in seed.named_parameters()} == shapes
    seed.set_level(a, k)
    assert all(torch.equal(t, buffers[name]) for name, t in seed.named_buffers())
    assert all(torch.equal(p, values[name]) for name, p in seed.named_parameters())
    assert seed.mask[k].sum() == a * seed.units_per_level


@pytest.mark.parametrize(("blueprint", "spec"), LADDER_CASES, ids=LADDER_IDS)
def test_focus_cycles_and_growth_stays_on_focus(blueprint, spec):
    seed = _seed(blueprint, spec)
    n = seed.n_subtargets
    assert n == len(seed.subtargets)
    assert (n > 1) == (blueprint in (Blueprint.CONV_MULTI_LADDER, Blueprint.LORA_MULTI_LADDER))
    start = int(seed.focus)
    seen = []
    for _ in range(n):
        seen.append(int(seed.focus))
        seed.shift_focus(+1)
    assert int(seed.focus) == start and sorted(seen) == list(range(n))
    seed.shift_focus(-1)
    assert int(seed.focus) == (start - 1) % n
    for _ in range(n):
        before = seed.levels.clone()
        seed.set_level(seed.level() + 1)
        grown = before.clone()
        grown[int(seed.focus)] += 1
        assert torch.equal(seed.levels, grown)
        seed.shift_focus(+1)


LORA_LADDERS = (Blueprint.LORA_RANK_LADDER, Blueprint.LORA_PROJ_LADDER)
LORA_LADDER_CASES = [(b, s) for b, s in LADDER_CASES if b in LORA_LADDERS]
LORA_LADDER_IDS = [f"{b.name}-{s.role.name}-{s.width}" for b, s in LORA_LADDER_CASES]


@pytest.mark.parametrize(("blueprint", "spec"), LORA_LADDER_CASES, ids=LORA_LADDER_IDS)
@ladder_settings
@given(level=st.integers(0, MAX_INTERNAL_LEVEL - 1))
def test_growing_a_rank_ladder_never_rescales_the_active_part(blueprint, spec, level):
    """Constant scale (maximum rank): level+1 with the new group's B columns zeroed equals level."""
    seed = _seed(blueprint, spec)
    assert isinstance(seed, LoraRankLadderSeed)
    assert isinstance(seed, LoraProjLadderSeed) == (blueprint is Blueprint.LORA_PROJ_LADDER)
    _randomise(seed)
    x = _input(spec)
    seed.set_level(level)
    before = seed(x)
    seed.set_level(level + 1)
    new_group = slice(level * seed.units_per_level, (level + 1) * seed.units_per_level)
    grown = seed(x)
    with torch.no_grad():
        seed.up[:, :, new_group] = 0
    torch.testing.assert_close(seed(x), before, rtol=0, atol=1e-6)
    assert not torch.allclose(grown, before)
