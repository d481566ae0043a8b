"""The enums every part agrees on: lifecycle stages, ops, blueprints, sites, blends, and the groups
they fall into. Values are written to Parquet and compared across ranks, so they are explicit and
never renumbered: a new member takes a new number at the end.
"""

from __future__ import annotations

import enum


class Stage(enum.IntEnum):
    """Seed lifecycle stage (seed 003 §2.4)."""

    DORMANT = 0
    GERMINATED = 1
    TRAINING = 2
    BLENDING = 3
    HOLDING = 4
    FOSSILIZED = 5
    PRUNED = 6
    EMBARGOED = 7
    RESETTING = 8


class SlotKind(enum.IntEnum):
    """What tissue a slot holds (seed 004, Emrakul v0 `slot_kind`)."""

    SEED = 0  # dormant, or a seed in development: Tamiyo's
    PHAGE = 1  # a fossilised seed: committed, in Emrakul's custody (seed 003 §9.2)
    SCAR = 2  # left by a lysis: an identity regrowth surface, quarantined, then open to Tamiyo until it expires


# Stage groups (seed 003 §2.4), named once.
SEED_STAGES = frozenset({Stage.GERMINATED, Stage.TRAINING, Stage.BLENDING, Stage.HOLDING, Stage.FOSSILIZED})  # a seed occupies the slot
MODULE_STAGES = frozenset({Stage.TRAINING, Stage.BLENDING, Stage.HOLDING, Stage.FOSSILIZED})  # the seed module runs in forward
LIVE_STAGES = frozenset({Stage.TRAINING, Stage.BLENDING, Stage.HOLDING})  # still learning; internal ops allowed (seed 002)
INCUBATING_STAGES = frozenset({Stage.GERMINATED, Stage.TRAINING})  # allocated, its output not yet in the host's forward
BLENDED_STAGES = frozenset({Stage.BLENDING, Stage.HOLDING})  # live, its output in the forward once alpha > 0


class Op(enum.IntEnum):
    """Lifecycle operation chosen by the policy's op head (seed 003 §6, seed 000 Phases 0 and 2)."""

    WAIT = 0
    GERMINATE = 1
    SET_ALPHA_TARGET = 2
    ADVANCE = 3
    PRUNE = 4
    FOSSILIZE = 5
    GROW_INTERNAL = 6
    SHRINK_INTERNAL = 7
    FOCUS_NEXT = 8
    FOCUS_PREV = 9
    # seed 000 Phase 5's adjacency ops, relative to the slot named (bounded, no other index)
    BUD_NEXT_SURFACE = 10  # germinate the slot's blueprint in the next empty slot it fits, in surface order
    BUD_PREV_SURFACE = 11  # ... in the previous one
    CONSOLIDATE_WITH_NEXT = 12  # prune the next seed Tamiyo holds and grow this ladder one level


# Op groups, named once.
BUD_DIRECTIONS = {Op.BUD_NEXT_SURFACE: 1, Op.BUD_PREV_SURFACE: -1}  # a bud's step in surface order
ADJACENCY_OPS = frozenset({*BUD_DIRECTIONS, Op.CONSOLIDATE_WITH_NEXT})  # seed 000 Phase 5: relative to the slot named
LADDER_OPS = frozenset({Op.GROW_INTERNAL, Op.SHRINK_INTERNAL, Op.FOCUS_NEXT, Op.FOCUS_PREV, Op.CONSOLIDATE_WITH_NEXT})  # need a ladder seed
STRUCTURAL_OPS = frozenset({Op.GERMINATE, Op.PRUNE, Op.FOSSILIZE, *ADJACENCY_OPS})  # change what the optimizer holds


class Decay(enum.IntEnum):
    """Emrakul's order, chosen by the decay head when Emrakul is learned (seed 003 §9.4: she
    sedates, the system judges and deletes; `esper_lab.decay`)."""

    HOLD = 0
    SEDATE = 1  # begin a sedation probe of the phage the `phage` head names


class HostKind(enum.IntEnum):
    CNN = 1
    TRANSFORMER = 2


class Site(enum.IntEnum):
    """Where on the host a surface sits (seed 000 Phases 0, 1 and 4)."""

    BLOCK_END = 0
    POST_CONV1 = 1
    POST_CONV2 = 2
    POST_RESID = 3
    POST_ATTN = 4
    POST_MLP = 5
    PROJECTION = 6  # A2 surfaces: the role says which projection


class Role(enum.IntEnum):
    """Submodule role of a projection surface (seed 000 Phase 4); NONE on residual-stream surfaces."""

    NONE = 0
    ATTN_QKV = 1
    ATTN_O = 2
    MLP_UP = 3
    MLP_DOWN = 4


class Blueprint(enum.IntEnum):
    """What a seed can become. One id per family; the library says which host kinds it fits."""

    NOOP = 0
    NORM = 1
    DEPTHWISE = 2
    CONV_LIGHT = 3
    CONV_HEAVY = 4
    ATTENTION = 5
    LORA = 6
    LORA_LARGE = 7
    MLP = 8
    CONV_CHANNEL_LADDER = 9
    LORA_RANK_LADDER = 10
    LORA_PROJ_LADDER = 11
    CONV_MULTI_LADDER = 12
    LORA_MULTI_LADDER = 13

    @property
    def is_ladder(self) -> bool:
        """A seed with a cheap internal capacity dial (seed 002): GROW/SHRINK change its level."""
        return self in _LADDERS

    @property
    def is_multi_ladder(self) -> bool:
        """A ladder with several subtargets, each with its own level (seed 000 Phase 2: focus)."""
        return self in _MULTI_LADDERS


_MULTI_LADDERS = frozenset({Blueprint.CONV_MULTI_LADDER, Blueprint.LORA_MULTI_LADDER})
_LADDERS = frozenset({Blueprint.CONV_CHANNEL_LADDER, Blueprint.LORA_RANK_LADDER, Blueprint.LORA_PROJ_LADDER, *_MULTI_LADDERS})
NO_BLUEPRINT = -1  # the plane report's blueprint (and a scar's) where no seed is
NO_SLOT = -1  # an event's slot and surface_uid when it concerns the run, not a slot


class Subtarget(enum.IntEnum):
    """Named sub-parts of a multi-ladder seed, each with its own level (seed 000 Phase 2)."""

    WHOLE = 0  # a single-ladder seed has one subtarget, the whole seed
    CONV1_GROUPS = 1
    CONV2_GROUPS = 2
    ATTN_QKV = 3
    ATTN_O = 4
    MLP_UP = 5
    MLP_DOWN = 6


class BlendAlgorithm(enum.IntEnum):
    ADD = 0  # y = h + a*s
    MULTIPLY = 1  # y = h * (1 + a*tanh(s))
    GATE = 2  # y = h + a*sigmoid(mean(s))*s, a per-sample gate with no extra parameters


class AlphaCurve(enum.IntEnum):
    LINEAR = 0
    COSINE = 1
    SIGMOID = 2


class Tempo(enum.IntEnum):
    """Blending tempo; `steps` is how many env steps the alpha ramp takes (seed 003 §6)."""

    FAST = 0
    STANDARD = 1
    SLOW = 2

    @property
    def steps(self) -> int:
        return _TEMPO_STEPS[self]


_TEMPO_STEPS = {Tempo.FAST: 3, Tempo.STANDARD: 5, Tempo.SLOW: 8}


class AlphaTarget(enum.IntEnum):
    """Target alpha amplitude (seed 003 §6)."""

    HALF = 0
    MOST = 1
    FULL = 2

    @property
    def alpha(self) -> float:
        return _ALPHA_TARGETS[self]


_ALPHA_TARGETS = {AlphaTarget.HALF: 0.5, AlphaTarget.MOST: 0.7, AlphaTarget.FULL: 1.0}


class SurfaceDensity(enum.StrEnum):
    """How many surfaces a host exposes (seed 000 tracks A0, A1, A2)."""

    A0 = "a0"  # one per block / layer
    A1 = "a1"  # sites inside each block / layer
    A2 = "a2"  # Transformer projection surfaces
