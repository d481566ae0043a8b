"""The governor (Tolaria): rollback on divergence and explicit budget vetoes.

Rollback: a NaN/inf training loss, or a loss above the trailing median by more than
`SPIKE_SIGMAS` robust standard deviations, restores host, plane and optimizer from the last good
in-memory snapshot and removes the seed that caused it (seed 003 §9.5). The culprit is chosen
from evidence taken before the optimizer step spreads NaN into every trained parameter: the
plane counts, per slot and batch, a seed output that is non-finite on a finite input. A
non-finite loss with no such seed is the host's own doing: nothing is removed, and the event says so.

Vetoes: a GERMINATE, GROW_INTERNAL, bud or consolidation that would push active seed parameters
past the budget is refused with an explicit event, an observation bit and a count on the slot
(seed 000 Phase 0: never a silent no-op). Buds and consolidations are mediated by ROI too (seed
000 Phase 5): a bud copies a seed, so the seed must pay (its ROI EMA > 0); a consolidation keeps
this slot and prunes its neighbour, so this slot must pay and pay at least as well per param as
the neighbour (an unmeasured neighbour has shown nothing to keep).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from esper_lab.contracts import (
    BLENDED_STAGES,
    BUD_DIRECTIONS,
    NO_SLOT,
    ROLLBACK_HOST,
    ROLLBACK_SEED,
    VETO_BUD,
    VETO_CONSOLIDATE,
    VETO_GERMINATE,
    VETO_INTERNAL_GROW,
    VETO_LOW_ROI,
    Action,
    Blueprint,
    Event,
    EventKind,
    Op,
)
from esper_lab.plane import SeedPlane
from esper_lab.seeds import make_seed
from esper_lab.slot import LIFECYCLE_FIELDS, SeedSlot

SPIKE_SIGMAS = 6.0  # a loss this many robust sigmas above the trailing median is a divergence
SPIKE_WINDOW = 8  # trailing losses the spike test looks at
SPIKE_MIN_HISTORY = 4  # no spike verdicts before this many healthy steps
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation for a normal
SPIKE_FLOOR = 0.05  # minimum sigma, so a perfectly flat loss history does not flag noise

# Seeds that can cause a finite loss spike: their output reaches the loss through alpha and they
# still learn. A TRAINING seed leaves the forward exactly the host's; a fossil never changes.
_SPIKE_SUSPECTS = BLENDED_STAGES
_MEDIATED = frozenset({Op.GERMINATE, Op.GROW_INTERNAL, *BUD_DIRECTIONS, Op.CONSOLIDATE_WITH_NEXT})  # ops a veto can refuse


@dataclass(frozen=True)
class Snapshot:
    host: dict
    slots: list[dict]
    optimizer: dict


class Governor:
    """Watches one environment's training; owns its snapshot and its loss history."""

    def __init__(self, param_budget: int, agree: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """`agree` sums a tensor over data-parallel ranks, so that every rank blames the same slot."""
        self.param_budget = param_budget
        self.agree = agree
        self.losses: deque[float] = deque(maxlen=SPIKE_WINDOW)
        self.snapshot: Snapshot | None = None
        self._germinated_params: dict[tuple[int, int], int] = {}

    # --- vetoes -------------------------------------------------------------------------------
    def veto(self, plane: SeedPlane, action: Action) -> str | None:
        """The veto's name when `action` (legal) would exceed the active-parameter budget, or is a
        bud or consolidation its slots' ROI does not justify; else None."""
        op = action.op
        if op not in _MEDIATED:
            return None
        slot = plane.slots[action.slot]
        if op is Op.GERMINATE:
            added, name = self._params_at_germination(plane, action.slot, action.blueprint), VETO_GERMINATE
        elif op is Op.GROW_INTERNAL:
            added, name = _params_added_by_growing(slot), VETO_INTERNAL_GROW
        elif op in BUD_DIRECTIONS:
            bud = plane.bud_target(action.slot, BUD_DIRECTIONS[op])
            added, name = self._params_at_germination(plane, bud, slot.blueprint), VETO_BUD
        else:
            partner = plane.slots[plane.consolidation_partner(action.slot)]
            added, name = _params_added_by_growing(slot) - partner.param_count_active(), VETO_CONSOLIDATE
        if plane.active_param_count() + added > self.param_budget:
            return name
        if op in BUD_DIRECTIONS and not slot.roi_ema > 0:  # NaN (never measured) fails too
            return VETO_LOW_ROI
        if op is Op.CONSOLIDATE_WITH_NEXT and (not slot.roi_ema > 0 or partner.roi_ema > slot.roi_ema):
            return VETO_LOW_ROI
        return None

    def _params_at_germination(self, plane: SeedPlane, index: int, blueprint: Blueprint) -> int:
        key = (index, int(blueprint))
        if key not in self._germinated_params:  # a throwaway build: counts only, no RNG shared
            seed = make_seed(blueprint, plane.specs[index], torch.Generator().manual_seed(0))
            self._germinated_params[key] = seed.param_count_active()
        return self._germinated_params[key]

    # --- divergence and rollback --------------------------------------------------------------
    def diverged(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        if len(self.losses) < SPIKE_MIN_HISTORY:
            return False
        median = statistics.median(self.losses)
        sigma = max(MAD_TO_SIGMA * statistics.median(abs(x - median) for x in self.losses), SPIKE_FLOOR * abs(median))
        return loss > median + SPIKE_SIGMAS * sigma

    def healthy(self, loss: float, host: nn.Module, plane: SeedPlane, optimizer: torch.optim.Optimizer) -> None:
        """Record a good step and take the snapshot a later rollback returns to."""
        self.losses.append(loss)
        self.remember(host, plane, optimizer)

    def remember(self, host: nn.Module, plane: SeedPlane, optimizer: torch.optim.Optimizer) -> None:
        """Taken after every healthy step, so it clones tensors only: no module is deep-copied."""
        self.snapshot = Snapshot(
            host=_clone(host.state_dict()),
            slots=[_slot_state(slot) for slot in plane.slots],
            optimizer=_clone(optimizer.state_dict()),
        )

    def rollback(self, host: nn.Module, plane: SeedPlane, optimizer: torch.optim.Optimizer, loss: float) -> list[Event]:
        """Restore the last snapshot and remove the culprit. Returns the ROLLBACK event (the
        culprit's slot, or -1 and `ROLLBACK_HOST`) followed by the removal's transition (e.g.
        `BLENDING->PRUNED`, or `FOSSILIZED->PRUNED`: a fossil is removed too, see
        `SeedPlane.remove_culprit`)."""
        culprit = self._culprit(plane, loss)  # before the restore: the evidence is this step's
        host.load_state_dict(self.snapshot.host)
        for slot, state in zip(plane.slots, self.snapshot.slots):
            _restore_slot(slot, state)
        plane.sync_optimizer(optimizer)
        optimizer.load_state_dict(_clone(self.snapshot.optimizer))
        for slot in plane.slots:
            slot.acc.zero_()
        if culprit is None:  # the snapshot already is this state
            # with nothing to remove, a finite spike is a level shift the snapshot cannot undo (a
            # phage lysed or sedated, say): judged against the old history, every later step would
            # be rolled back too (a Stage 2 run with a learned Emrakul did so 22 steps in a row)
            self.losses.clear()
            return [Event(EventKind.ROLLBACK, NO_SLOT, NO_SLOT, ROLLBACK_HOST, loss)]
        events = [Event(EventKind.ROLLBACK, culprit, plane.specs[culprit].surface_uid, ROLLBACK_SEED, loss)]
        events += plane.remove_culprit(culprit)
        plane.sync_optimizer(optimizer)
        self.remember(host, plane, optimizer)  # or a second rollback would restore the culprit
        return events

    def _culprit(self, plane: SeedPlane, loss: float) -> int | None:
        """A non-finite loss: the slot whose seed most often turned a finite input non-finite,
        else None (the host). A finite spike: the blending or holding seed with the largest
        delta, else None."""
        evidence = torch.stack([plane.fault_origins(), plane.report(reset=False).column("delta_l2_norm")])
        if self.agree is not None:
            evidence = self.agree(evidence)
        origins, delta = evidence
        if not math.isfinite(loss):
            return int(origins.argmax()) if bool(origins.any()) else None  # argmax: first of ties
        suspects = [slot.index for slot in plane.slots if slot.stage in _SPIKE_SUSPECTS]
        return max(suspects, key=lambda i: float(delta[i])) if suspects else None


def _clone(tree):
    """A copy of nested dicts and lists with every tensor cloned (immutable leaves shared)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {key: _clone(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_clone(value) for value in tree]
    return tree


def _slot_state(slot: SeedSlot) -> dict:
    """The slot's lifecycle fields and its seed: the module itself (a later prune or germination
    only drops the slot's reference to it) with a copy of everything in it that can change:
    parameters and buffers (levels, masks, focus) and whether it is frozen (fossilised)."""
    state = {name: getattr(slot, name) for name in LIFECYCLE_FIELDS}
    seed = slot.seed
    state["seed"] = seed
    if seed is not None:
        state["seed_tensors"] = _clone(seed.state_dict())
        state["seed_trainable"] = [p.requires_grad for p in seed.parameters()]
    return state


def _restore_slot(slot: SeedSlot, state: dict) -> None:
    for name in LIFECYCLE_FIELDS:
        setattr(slot, name, state[name])
    seed = slot.seed = state["seed"]
    if seed is not None:
        seed.load_state_dict(state["seed_tensors"])
        for p, trainable in zip(seed.parameters(), state["seed_trainable"]):
            p.requires_grad_(trainable)


def _params_added_by_growing(slot: SeedSlot) -> int:
    """Active parameters one more level would add (measured by growing and shrinking back)."""
    ladder = slot.ladder
    level, before = ladder.level(), ladder.param_count_active()
    ladder.set_level(level + 1)
    added = ladder.param_count_active() - before
    ladder.set_level(level)
    return added
