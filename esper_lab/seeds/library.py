"""The seed library: which blueprint fits which surface, declared once, and how to build it.

The plane's blueprint masks come from `fits`; `make_seed` refuses a blueprint that does not fit,
so an illegal germination fails here with a clear error rather than deep inside a forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from esper_lab.contracts import Blueprint, HostKind, InjectionSpec, Role, Site
from esper_lab.seeds import ladders, module_seeds
from esper_lab.seeds.base import Seed

Build = Callable[[InjectionSpec, torch.Generator], Seed]

# Surfaces the hosts expose (seed 000 Phases 0, 1 and 4). Residual-stream surfaces carry
# Role.NONE; projection surfaces carry the projection's role.
CNN_SITES = frozenset({Site.BLOCK_END, Site.POST_CONV1, Site.POST_CONV2, Site.POST_RESID})
TRANSFORMER_RESIDUAL_SITES = frozenset({Site.BLOCK_END, Site.POST_ATTN, Site.POST_MLP})
PROJECTION_SITES = frozenset({Site.PROJECTION})
RESIDUAL_ROLES = frozenset({Role.NONE})
PROJECTION_ROLES = frozenset(Role) - RESIDUAL_ROLES

CNN = frozenset({HostKind.CNN})
TRANSFORMER = frozenset({HostKind.TRANSFORMER})
BOTH = CNN | TRANSFORMER


@dataclass(frozen=True)
class BlueprintSpec:
    """Where a blueprint may be germinated and how to build it.

    A surface fits when its host kind, site and role are all in the declared sets; the site
    sets of the two host kinds only share BLOCK_END, where both hosts put a residual surface.
    """

    blueprint: Blueprint
    host_kinds: frozenset[HostKind]
    sites: frozenset[Site]
    roles: frozenset[Role]
    is_ladder: bool
    build: Build


def _residual(cls: type) -> Build:
    return lambda spec, generator: cls(spec.width, generator)


def _by_host(cnn_cls: type, transformer_cls: type) -> Build:
    """One blueprint id, one implementation per host kind (the same idea on images and tokens)."""
    classes = {HostKind.CNN: cnn_cls, HostKind.TRANSFORMER: transformer_cls}
    return lambda spec, generator: classes[spec.host_kind](spec.width, generator)


def _lora_ladder(cls: type, ranks_per_level: Mapping[Role, int]) -> Build:
    return lambda spec, generator: cls(spec.in_width, spec.width, ranks_per_level[spec.role], generator)


def _spec(blueprint, host_kinds, sites, build, roles=RESIDUAL_ROLES, is_ladder=False) -> BlueprintSpec:
    return BlueprintSpec(blueprint, host_kinds, sites, roles, is_ladder, build)


_ANY_RESIDUAL = CNN_SITES | TRANSFORMER_RESIDUAL_SITES

BLUEPRINTS: dict[Blueprint, BlueprintSpec] = {
    spec.blueprint: spec
    for spec in (
        _spec(Blueprint.NOOP, BOTH, _ANY_RESIDUAL, lambda spec, generator: module_seeds.NoopSeed()),
        _spec(Blueprint.NORM, BOTH, _ANY_RESIDUAL, _by_host(module_seeds.ChannelNormSeed, module_seeds.TokenNormSeed)),
        _spec(Blueprint.DEPTHWISE, CNN, CNN_SITES, _residual(module_seeds.DepthwiseSeed)),
        _spec(Blueprint.CONV_LIGHT, CNN, CNN_SITES, _residual(module_seeds.ConvLightSeed)),
        _spec(Blueprint.CONV_HEAVY, CNN, CNN_SITES, _residual(module_seeds.ConvHeavySeed)),
        _spec(
            Blueprint.ATTENTION,
            BOTH,
            _ANY_RESIDUAL,
            _by_host(module_seeds.SpatialAttentionSeed, module_seeds.CausalAttentionSeed),
        ),
        _spec(Blueprint.LORA, TRANSFORMER, TRANSFORMER_RESIDUAL_SITES, _residual(module_seeds.LoraSeed)),
        _spec(Blueprint.LORA_LARGE, TRANSFORMER, TRANSFORMER_RESIDUAL_SITES, _residual(module_seeds.LoraLargeSeed)),
        _spec(Blueprint.MLP, TRANSFORMER, TRANSFORMER_RESIDUAL_SITES, _residual(module_seeds.MlpSeed)),
        _spec(Blueprint.CONV_CHANNEL_LADDER, CNN, CNN_SITES, _residual(ladders.ConvChannelLadderSeed), is_ladder=True),
        _spec(
            Blueprint.LORA_RANK_LADDER,
            TRANSFORMER,
            TRANSFORMER_RESIDUAL_SITES,
            _lora_ladder(ladders.LoraRankLadderSeed, ladders.RANKS_PER_LEVEL),
            is_ladder=True,
        ),
        _spec(
            Blueprint.LORA_PROJ_LADDER,
            TRANSFORMER,
            PROJECTION_SITES,
            _lora_ladder(ladders.LoraProjLadderSeed, ladders.RANKS_PER_LEVEL),
            roles=PROJECTION_ROLES,
            is_ladder=True,
        ),
        _spec(Blueprint.CONV_MULTI_LADDER, CNN, CNN_SITES, _residual(ladders.ConvMultiLadderSeed), is_ladder=True),
        _spec(
            Blueprint.LORA_MULTI_LADDER,
            TRANSFORMER,
            TRANSFORMER_RESIDUAL_SITES,
            _lora_ladder(ladders.LoraMultiLadderSeed, {Role.NONE: ladders.MULTI_RANKS_PER_LEVEL}),
            is_ladder=True,
        ),
    )
}


def fits(blueprint: Blueprint, spec: InjectionSpec) -> bool:
    """Whether `blueprint` may be germinated on the surface `spec`."""
    entry = BLUEPRINTS[blueprint]
    return spec.host_kind in entry.host_kinds and spec.site in entry.sites and spec.role in entry.roles


def blueprints_for(spec: InjectionSpec) -> tuple[Blueprint, ...]:
    """Every blueprint that fits the surface, in enum order."""
    return tuple(b for b in Blueprint if fits(b, spec))


def make_seed(blueprint: Blueprint, spec: InjectionSpec, generator: torch.Generator) -> Seed:
    """Germinate `blueprint` on `spec`; every parameter is drawn from `generator` alone."""
    if not fits(blueprint, spec):
        raise ValueError(
            f"blueprint {blueprint.name} does not fit surface {spec.host_kind.name}/{spec.site.name}/"
            f"{spec.role.name}; fitting blueprints: {[b.name for b in blueprints_for(spec)]}"
        )
    return BLUEPRINTS[blueprint].build(spec, generator)
