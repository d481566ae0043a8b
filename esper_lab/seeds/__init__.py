"""The seed library (blueprints): module seeds, ladder seeds and the registry that says where
each one fits. The seed plane needs only `fits` and `make_seed`."""

from esper_lab.seeds.base import MAX_INTERNAL_LEVEL, LadderSeed, Seed
from esper_lab.seeds.ladders import (
    RANKS_PER_LEVEL,
    ConvChannelLadderSeed,
    ConvMultiLadderSeed,
    LoraMultiLadderSeed,
    LoraProjLadderSeed,
    LoraRankLadderSeed,
)
from esper_lab.seeds.library import BLUEPRINTS, BlueprintSpec, blueprints_for, fits, make_seed
from esper_lab.seeds.module_seeds import (
    CausalAttentionSeed,
    ChannelNormSeed,
    ConvHeavySeed,
    ConvLightSeed,
    DepthwiseSeed,
    LoraLargeSeed,
    LoraSeed,
    MlpSeed,
    NoopSeed,
    SpatialAttentionSeed,
    TokenNormSeed,
)

__all__ = [
    "BLUEPRINTS",
    "MAX_INTERNAL_LEVEL",
    "RANKS_PER_LEVEL",
    "BlueprintSpec",
    "CausalAttentionSeed",
    "ChannelNormSeed",
    "ConvChannelLadderSeed",
    "ConvHeavySeed",
    "ConvLightSeed",
    "ConvMultiLadderSeed",
    "DepthwiseSeed",
    "LadderSeed",
    "LoraLargeSeed",
    "LoraMultiLadderSeed",
    "LoraProjLadderSeed",
    "LoraRankLadderSeed",
    "LoraSeed",
    "MlpSeed",
    "NoopSeed",
    "Seed",
    "SpatialAttentionSeed",
    "TokenNormSeed",
    "blueprints_for",
    "fits",
    "make_seed",
]
