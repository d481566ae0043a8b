"""Contracts (Leyline): the integers, identities and names every other part agrees on.

Enum values are written to Parquet and compared across ranks, so they are explicit and are
never renumbered: a new member takes a new number at the end. Every shared vocabulary lives here
once: stage groups, the policy's heads, veto names, the plane report's and the step's fields,
random-stream ids, and the records one env step produces (`StepResult` and its parts), so the
telemetry layer can record a step without knowing the env that made it.
"""

from __future__ import annotations

import enum
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_type_hints

if TYPE_CHECKING:
    import torch


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
    return int(host_kind) << _KIND_SHIFT | depth_idx << _DEPTH_SHIFT | int(site) << _SITE_SHIFT | int(role)


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
    PROBE = 7  # an Emrakul sedation probe began or was judged; `name` says which
    LYSIS = 8  # a phage lysed (functional, then physical) or a scar regrown or expired
    ADJACENCY = 9  # a bud or a consolidation; `name` is the op, `value` the other slot it touched


# Emrakul's event names (the `events` table's `name` for PROBE and LYSIS events).
PROBE_STARTED = "emrakul_probe_started"  # value: the baseline the probe is judged against
PROBE_RESTORED = "emrakul_probe_restored"  # the probe hurt: sedation lifted, an antibody, a lock; value: the metric drop
PROBE_CLEARED = "emrakul_probe_cleared"  # the probe did no harm; value: the metric drop (<= tolerance)
LYSIS_FUNCTIONAL = "emrakul_lysis_functional"  # the phage stays sedated at 0, physical lysis is scheduled
LYSIS_PHYSICAL = "emrakul_lysis_physical"  # the module is removed at a step boundary; a scar remains
SCAR_REGROWN = "scar_regrown"  # a seed germinated in a scar
SCAR_EXPIRED = "scar_expired"  # a scar nobody regrew became a plain dormant slot


# Governor event names (the `events` table's `name`; vetoes: seed 000 Phase 0 field names).
VETO_GERMINATE = "governor_veto_germinate"
VETO_INTERNAL_GROW = "governor_veto_internal_grow"
VETO_BUD = "governor_veto_bud"  # the bud would pass the active-parameter budget
VETO_CONSOLIDATE = "governor_veto_consolidate"  # the level it grows would pass the budget, net of the pruned neighbour
VETO_LOW_ROI = "governor_veto_low_roi"  # a bud or consolidation the slots' ROI does not justify; value: the op
ROLLBACK_SEED = "governor_rollback"  # the event's slot is the culprit, removed right after (its transition follows)
ROLLBACK_HOST = "governor_rollback_host"  # the host diverged by itself: slot -1, nothing removed


_ACTION_ENUMS: dict[str, type[enum.IntEnum]] = {}  # filled below, once Action's fields exist


@dataclass(frozen=True)
class Action:
    """One decision: Tamiyo's op, the slot it targets and the germination config it resolves to,
    and Emrakul's order with the phage it names (obeyed only when Emrakul is learned).

    Fields a given op (or order) does not use are carried but ignored (the policy's log-prob does
    not count them either). Built by hand or by a policy, an action is checked here, at
    construction: enum fields take their enum or a valid integer value (coerced), the slots
    non-negative integers; anything else raises naming the field, before it can reach a plane.
    """

    op: Op
    slot: int = 0
    blueprint: Blueprint = Blueprint.NOOP
    blend: BlendAlgorithm = BlendAlgorithm.ADD
    curve: AlphaCurve = AlphaCurve.LINEAR
    tempo: Tempo = Tempo.STANDARD
    target: AlphaTarget = AlphaTarget.FULL
    decay: Decay = Decay.HOLD
    phage: int = 0

    def __post_init__(self):
        for name, cls in _ACTION_ENUMS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                object.__setattr__(self, name, _enum_value(cls, value, f"Action.{name}"))
        for name in _ACTION_SLOTS:
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"Action.{name}={value!r} must be an integer >= 0")
            object.__setattr__(self, name, int(value))


def _is_int(value) -> bool:
    """A plain integer: bools, floats and tensors are not slot numbers or enum values."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _enum_value(cls: type[enum.IntEnum], value, name: str) -> enum.IntEnum:
    if _is_int(value) and int(value) in cls._value2member_map_:
        return cls(int(value))
    allowed = ", ".join(f"{m.name}={m.value}" for m in cls)
    raise ValueError(f"{name}={value!r} is not a valid {cls.__name__} (allowed: {allowed})")


_ACTION_SLOTS = ("slot", "phage")  # the Action fields that name a slot
_ACTION_ENUMS.update({name: cls for name, cls in get_type_hints(Action).items() if name not in _ACTION_SLOTS})


@dataclass(frozen=True)
class Event:
    """Something that happened to a slot (or the run, with slot = -1)."""

    kind: EventKind
    slot: int
    surface_uid: int
    name: str  # e.g. "GERMINATED->TRAINING", "governor_veto_internal_grow"
    value: float = 0.0  # e.g. the new level, the new alpha target


# --- the policy's factored heads (seed 001 §4) ---------------------------------------------------
# Two head sets (seed 003 §9.1, the Tamiyo/Emrakul split): Tamiyo's grow, Emrakul's decay. Each
# is played by a learned agent or by rules (`policy.heads.ROLES`, `DecayConfig.learned`).
TAMIYO_HEADS = ("op", "slot", "blueprint", "blend", "curve", "tempo", "target")  # sampling order
EMRAKUL_HEADS = ("decay", "phage")
HEADS = TAMIYO_HEADS + EMRAKUL_HEADS
GERMINATION_HEADS = ("blueprint", "blend", "curve", "tempo", "target")


def heads_used(op: Op) -> tuple[str, ...]:
    """Tamiyo's heads whose values `op` applies; the env ignores the others, and so do the policy's
    log-prob, its entropy and the telemetry: op always, the slot unless WAIT, the germination
    config for GERMINATE, the alpha target also for SET_ALPHA_TARGET."""
    if op is Op.WAIT:
        return ("op",)
    if op is Op.GERMINATE:
        return ("op", "slot", *GERMINATION_HEADS)
    if op is Op.SET_ALPHA_TARGET:
        return ("op", "slot", "target")
    return ("op", "slot")


# --- random streams and episode seeds (DESIGN rule 7) ---------------------------------------------
class Stream(enum.IntEnum):
    """Each random consumer draws from its own stream, derived from (seed, index, stream)."""

    HOST = 1  # host initialisation
    DATA = 2  # training subset and minibatch order
    PLANE = 3  # seed initialisation at germination
    RANDOM_POLICY = 4  # the masked random baseline
    SAMPLING = 5  # the learned policy's action sampling
    POLICY_INIT = 6  # the learned policy's initial weights
    SHUFFLE = 7  # PPO minibatch order
    EPISODE = 8  # training episode seeds
    VALIDATION = 9  # the per-step validation subsample
    EVALUATION = 10  # policies' sampling on held-out evaluation episodes
    AUDIT = 11  # an audit's replicate episodes (host init, data order, seed inits) beyond the recorded one
    SCHEDULE_SEARCH = 12  # the fixed growth schedules a schedule search draws (`experiments.search`)


def stream_seed(seed: int, index: int, stream: Stream) -> int:
    """A distinct, deterministic 62-bit seed per (seed, index, stream) (no `hash()`)."""
    return (seed * 1_000_003 + index * 7_919 + int(stream) * 104_729) % (2**62)


def mix64(*values: int) -> int:
    """splitmix64 over a few integers: well-spread 63-bit seeds from small ones (never `hash()`)."""
    z = 0
    for v in values:
        z = (z * 0x9E3779B97F4A7C15 + v * 0xBF58476D1CE4E5B9 + 0x632BE59BD9B4E019) & (2**64 - 1)
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
        z ^= z >> 31
    return z & (2**63 - 1)


# An episode's randomness (host init, data order, seed inits) derives from one episode seed.
# Training episodes draw theirs below EVAL_SEED_BASE; held-out evaluation episodes sit above it,
# so no evaluation episode is ever trained on (seed 004 Stage 1: judge on held-out seeds).
EVAL_SEED_BASE = 2**40
MAX_EVAL_EPISODES = 10_000  # per run seed: eval episode k of run seed s is BASE + s * this + k


def training_episode_seed(run_seed: int, env_index: int, episode: int) -> int:
    """The seed of training episode `episode` in env `env_index` of a run: a new one each episode."""
    return mix64(run_seed, env_index, episode) % EVAL_SEED_BASE


def eval_episode_seed(run_seed: int, k: int) -> int:
    """The seed of held-out evaluation episode k of a run seed (a fixed, documented set)."""
    if not 0 <= k < MAX_EVAL_EPISODES:
        raise ValueError(f"eval episode {k} outside 0..{MAX_EVAL_EPISODES - 1}")
    return EVAL_SEED_BASE + run_seed * MAX_EVAL_EPISODES + k


# --- what one env step produces --------------------------------------------------------------------
# The plane report's `[S, F]` columns, in order, with the Arrow type telemetry stores them as (the
# report itself is float32; ids and counts below 2**24 are exact in it). Blueprint -1 = no seed.
SLOT_COLUMN_TYPES: dict[str, str] = {
    "surface_uid": "int32",
    "depth_norm": "float32",
    "site": "int8",
    "role": "int8",
    "stage": "int8",
    "blueprint": "int8",
    "alpha": "float32",
    "alpha_target": "float32",
    "blend": "int8",
    "internal_level": "int16",
    "internal_level_norm": "float32",
    "max_level": "int16",
    "focus_idx": "int16",
    "focus_subtarget": "int8",
    "focus_internal_level_norm": "float32",
    "internal_level_mean_norm": "float32",
    "internal_level_max_norm": "float32",
    # the seed's active size; `in_forward` says whether its output reaches the host's forward
    # (alpha > 0 while blending or holding, or fossilised) or it is still incubating
    "seed_param_count_active": "int64",
    "seed_flops_active_est": "float32",
    "in_forward": "int8",
    # counterfactual contribution (seed 003 §8.2): metric as is minus metric with this seed's
    # alpha forced to 0, on the validation subsample; the last measured value (NaN: never for
    # this seed) and whether it was measured this step
    "contribution": "float32",
    "contribution_measured": "int8",
    "delta_l2_norm": "float32",
    "output_l2_norm": "float32",
    "seed_grad_norm": "float32",
    "grad_ratio": "float32",
    "embargo_remaining": "int16",
    "germinations": "int32",
    # decay (seed 003 §9, seed 004 Stage 2): the slot's kind, a phage's sedation mask (1: in full,
    # 0: gated out), Emrakul's immune ledger for it (debt in reward units, failed probes, steps of
    # criticality lock left), and a scar's age, what was removed and its last contribution
    "slot_kind": "int8",
    "sedation": "float32",
    "debt": "float32",
    "antibodies": "int16",
    "lock_remaining": "int16",
    "scar_age": "int16",
    "scar_blueprint": "int8",
    "scar_contribution": "float32",
    # the economy (seed 000 Phase 5): contribution per thousand active params, an EMA over the
    # seed's measurements (NaN before one); an EMA of the steps an op changed the slot; the
    # governor's vetoes of ops on it and the rollbacks that removed its seed, this episode
    "roi_estimate_ema": "float32",
    "churn_ema": "float32",
    "governor_vetoes": "int16",
    "governor_rollbacks": "int16",
}

# Per-step global numbers (`StepResult.metrics`, the `steps` table) with their Arrow types.
STEP_METRIC_TYPES: dict[str, str] = {
    "progress": "float64",
    "train_loss": "float64",
    "val_loss": "float64",
    "val_accuracy": "float64",
    # `metric` is read on the validation subsample every step (the reward uses it); `full_metric`
    # on the whole validation split at the episode's last step (NaN before): outcomes use that
    "metric": "float64",
    "metric_gain": "float64",
    "metric_since_start": "float64",
    "full_metric": "float64",
    # on the whole test split every `test_every` steps and at the last (NaN between): the only read
    # of the test split, for reports; no reward, observation or decision reads it
    "test_metric": "float64",
    # the static twin's metric on the same subsample (the `gain_over_static` reward; NaN without it)
    "static_metric": "float64",
    "host_params": "int64",
    "forward_params": "int64",
    "incubating_params": "int64",
    "forward_flops": "float64",
    "incubating_flops": "float64",
    # forward + backward FLOPs this step's training spent on the host and every seed module that
    # ran (TRAINING included; the static twin is an instrument, not counted): `env.train_flops`
    "train_flops": "float64",
    "active_param_budget_util": "float64",
    "active_flops_budget_util": "float64",
    "occupied_slots": "int32",
    "n_slots": "int32",
    "veto": "bool",
    "rollback": "bool",
    "level_change_rate": "float64",
    "net_level_change": "float64",
}
SLOT_COLUMNS = tuple(SLOT_COLUMN_TYPES)
ROI_PARAMS = 1000  # ROI is contribution per this many active params (per param, it would sit below any feature's noise)
STEP_METRICS = tuple(STEP_METRIC_TYPES)
REWARD_PARTS = ("task", "rent", "churn", "intervention", "total")


@dataclass(frozen=True)
class PlaneReport:
    """The plane's state for one step: `values[S, F]` with `columns`, and which slots exist."""

    columns: tuple[str, ...]
    values: torch.Tensor
    slot_mask: torch.Tensor

    def column(self, name: str) -> torch.Tensor:
        return self.values[:, self.columns.index(name)]


@dataclass(frozen=True)
class ActionMasks:
    """Legal choices: `op[S, n_ops]` per slot, `blueprint[S, n_blueprints]` per slot, and
    `phage[S]`, the phages a learned Emrakul may sedate now (none unless Emrakul is learned).

    WAIT is legal on every slot, so every row keeps at least one legal choice; HOLD is always
    legal, so a learned Emrakul never has to sedate.
    """

    op: torch.Tensor
    blueprint: torch.Tensor
    phage: torch.Tensor


@dataclass(frozen=True)
class RewardParts:
    task: float
    rent: float  # C_rent (unweighted)
    churn: float  # C_churn (unweighted)
    intervention: float  # already in reward units
    total: float


@dataclass(frozen=True)
class StepResult:
    """What one env step returns: the observation parts, the reward with its parts, and events."""

    step: int
    report: PlaneReport
    masks: ActionMasks
    metrics: dict[str, float]  # `STEP_METRICS`: global, per-step numbers
    reward: RewardParts
    events: list[Event]
    done: bool
    episode_seed: int  # the episode's randomness comes from this one number (replay reads it)
