"""Contracts (Leyline): the integers and identities every other part agrees on.

Enum values are written to Parquet and compared across ranks, so they are explicit and are
never renumbered: a new member takes a new number at the end.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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


# --- surface identity -------------------------------------------------------------------------
# surface_uid = host_kind << 20 | depth_idx << 8 | site << 4 | role  (24 bits, fits int32).
# Integer order is host kind, then depth, then site, then role: the slot order seed 000 asks for.
_ROLE_BITS, _SITE_BITS, _DEPTH_BITS, _KIND_BITS = 4, 4, 12, 4
_SITE_SHIFT = _ROLE_BITS
_DEPTH_SHIFT = _SITE_SHIFT + _SITE_BITS
_KIND_SHIFT = _DEPTH_SHIFT + _DEPTH_BITS


def pack_surface_uid(host_kind: HostKind, depth_idx: int, site: Site, role: Role = Role.NONE) -> int:
    """Stable surface identity from fixed bit fields (never Python's `hash()`)."""
    for name, value, bits in (
        ("host_kind", int(host_kind), _KIND_BITS),
        ("depth_idx", depth_idx, _DEPTH_BITS),
        ("site", int(site), _SITE_BITS),
        ("role", int(role), _ROLE_BITS),
    ):
        if not 0 <= value < (1 << bits):
            raise ValueError(f"{name}={value} does not fit in {bits} bits (0..{(1 << bits) - 1})")
    return (
        int(host_kind) << _KIND_SHIFT
        | depth_idx << _DEPTH_SHIFT
        | int(site) << _SITE_SHIFT
        | int(role)
    )


def unpack_surface_uid(uid: int) -> tuple[HostKind, int, Site, Role]:
    """Inverse of `pack_surface_uid`."""
    return (
        HostKind(uid >> _KIND_SHIFT & ((1 << _KIND_BITS) - 1)),
        uid >> _DEPTH_SHIFT & ((1 << _DEPTH_BITS) - 1),
        Site(uid >> _SITE_SHIFT & ((1 << _SITE_BITS) - 1)),
        Role(uid & ((1 << _ROLE_BITS) - 1)),
    )


@dataclass(frozen=True)
class InjectionSpec:
    """One surface of a host: where it is and what shape flows through it.

    `width` is the channel count (CNN) or feature width (Transformer) of the host output at the
    surface; `in_width` is the width of the seed's input, which differs only on projection
    surfaces (a seed there reads the projection's input and adds to its output).
    """

    surface_uid: int
    host_kind: HostKind
    depth_idx: int
    depth_norm: float
    site: Site
    role: Role
    width: int
    in_width: int

    @classmethod
    def build(
        cls,
        host_kind: HostKind,
        depth_idx: int,
        n_depths: int,
        site: Site,
        width: int,
        role: Role = Role.NONE,
        in_width: int | None = None,
    ) -> InjectionSpec:
        return cls(
            surface_uid=pack_surface_uid(host_kind, depth_idx, site, role),
            host_kind=host_kind,
            depth_idx=depth_idx,
            depth_norm=depth_idx / max(n_depths - 1, 1),
            site=site,
            role=role,
            width=width,
            in_width=width if in_width is None else in_width,
        )


class EventKind(enum.IntEnum):
    """Kinds of rows in the `events` table."""

    TRANSITION = 0  # a lifecycle stage change
    LEVEL_CHANGED = 1  # SEED_INTERNAL_LEVEL_CHANGED (seed 002 L6)
    FOCUS_CHANGED = 2
    ALPHA_TARGET_SET = 3
    VETO = 4  # an explicit governor veto; `name` says which (never a silent no-op)
    ROLLBACK = 5
    ERROR = 6


@dataclass(frozen=True)
class Action:
    """One decision: the op, the slot it targets, and the germination config it resolves to.

    Fields a given op does not use are carried but ignored (the policy's log-prob does not count
    them either).
    """

    op: Op
    slot: int = 0
    blueprint: Blueprint = Blueprint.NOOP
    blend: BlendAlgorithm = BlendAlgorithm.ADD
    curve: AlphaCurve = AlphaCurve.LINEAR
    tempo: Tempo = Tempo.STANDARD
    target: AlphaTarget = AlphaTarget.FULL


@dataclass(frozen=True)
class Event:
    """Something that happened to a slot (or the run, with slot = -1)."""

    kind: EventKind
    slot: int
    surface_uid: int
    name: str  # e.g. "GERMINATED->TRAINING", "governor_veto_internal_grow"
    value: float = 0.0  # e.g. the new level, the new alpha target
