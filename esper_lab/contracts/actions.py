"""What a policy decides (`Action`, its heads) and what happens to a slot (`Event`, event names)."""

from __future__ import annotations

import enum
import numbers
from dataclasses import dataclass, fields
from typing import get_type_hints

from esper_lab.contracts.names import AlphaCurve, AlphaTarget, BlendAlgorithm, Blueprint, Decay, Op, Tempo


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
    """Something that happened to a slot (or the run, with slot = `NO_SLOT`)."""

    kind: EventKind
    slot: int
    surface_uid: int
    name: str  # e.g. "GERMINATED->TRAINING", "governor_veto_internal_grow"
    value: float = 0.0  # e.g. the new level, the new alpha target


# --- the policy's factored heads (seed 001 §4) ---------------------------------------------------
# The heads are Action's fields, in sampling order; Emrakul's are the last two.
HEADS = tuple(f.name for f in fields(Action))
EMRAKUL_HEADS = ("decay", "phage")
TAMIYO_HEADS = tuple(h for h in HEADS if h not in EMRAKUL_HEADS)
GERMINATION_HEADS = tuple(h for h in TAMIYO_HEADS if h not in ("op", "slot"))  # the config a germination resolves to


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
