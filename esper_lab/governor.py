"""The governor (Tolaria): rollback on divergence and explicit budget vetoes.

Rollback: a NaN/inf training loss, or a loss above the trailing median by more than
`SPIKE_SIGMAS` robust standard deviations, restores host, plane and optimizer from the last good
in-memory snapshot and prunes the seed that caused it (seed 003 §9.5).

Vetoes: a GERMINATE or GROW_INTERNAL that would push active seed parameters past the budget is
refused with an explicit event and an observation bit (seed 000 Phase 0: never a silent no-op).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from esper_lab.contracts import VETO_GERMINATE, VETO_INTERNAL_GROW, Action, Event, Op, Stage
from esper_lab.plane import SeedPlane, SeedSlot
from esper_lab.seeds import make_seed

SPIKE_SIGMAS = 6.0  # a loss this many robust sigmas above the trailing median is a divergence
SPIKE_WINDOW = 8  # trailing losses the spike test looks at
SPIKE_MIN_HISTORY = 4  # no spike verdicts before this many healthy steps
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation for a normal
SPIKE_FLOOR = 0.05  # minimum sigma, so a perfectly flat loss history does not flag noise

_SLOT_STATE = ("stage", "blueprint", "blend_algorithm", "curve", "tempo", "alpha", "alpha_target",
               "ramp_start", "ramp_step", "embargo_remaining", "germinations")  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    host: dict
    slots: list[dict]
    optimizer: dict


class Governor:
    """Watches one environment's training; owns its snapshot and its loss history."""

    def __init__(self, param_budget: int):
        self.param_budget = param_budget
        self.losses: deque[float] = deque(maxlen=SPIKE_WINDOW)
        self.snapshot: Snapshot | None = None
        self._germinated_params: dict[tuple[int, int], int] = {}

    # --- vetoes -------------------------------------------------------------------------------
    def veto(self, plane: SeedPlane, action: Action) -> str | None:
        """The veto's name when `action` would exceed the active-parameter budget, else None."""
        if action.op is Op.GERMINATE:
            added = self._params_at_germination(plane, action)
            name = VETO_GERMINATE
        elif action.op is Op.GROW_INTERNAL:
            added = _params_added_by_growing(plane.slots[action.slot])
            name = VETO_INTERNAL_GROW
        else:
            return None
        return name if plane.active_param_count() + added > self.param_budget else None

    def _params_at_germination(self, plane: SeedPlane, action: Action) -> int:
        key = (action.slot, int(action.blueprint))
        if key not in self._germinated_params:  # a throwaway build: counts only, no RNG shared
            seed = make_seed(action.blueprint, plane.specs[action.slot], torch.Generator().manual_seed(0))
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

    def rollback(
        self, host: nn.Module, plane: SeedPlane, optimizer: torch.optim.Optimizer
    ) -> tuple[int | None, list[Event]]:
        """Restore the last snapshot and prune the culprit; return the culprit slot (or None) and
        the prune's transition events (so the events table sees the seed leave its stage)."""
        culprit = _culprit(plane)
        host.load_state_dict(self.snapshot.host)
        for slot, state in zip(plane.slots, self.snapshot.slots):
            _restore_slot(slot, state)
        plane.sync_optimizer(optimizer)
        optimizer.load_state_dict(_clone(self.snapshot.optimizer))
        events: list[Event] = []
        if culprit is not None and plane.action_masks().op[culprit, Op.PRUNE]:
            events = plane.apply(Action(Op.PRUNE, culprit))
            plane.sync_optimizer(optimizer)
        for slot in plane.slots:
            slot.acc.zero_()
        return culprit, events


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
    state = {name: getattr(slot, name) for name in _SLOT_STATE}
    seed = slot.seed
    state["seed"] = seed
    if seed is not None:
        state["seed_tensors"] = _clone(seed.state_dict())
        state["seed_trainable"] = [p.requires_grad for p in seed.parameters()]
    return state


def _restore_slot(slot: SeedSlot, state: dict) -> None:
    for name in _SLOT_STATE:
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


def _culprit(plane: SeedPlane) -> int | None:
    """The live seed with non-finite parameters or sensors, else the one with the largest delta."""
    live = [slot.index for slot in plane.slots if slot.stage in (Stage.TRAINING, Stage.BLENDING, Stage.HOLDING)]
    if not live:
        return None
    delta = plane.report(reset=False).column("delta_l2_norm")
    for i in live:
        if not torch.isfinite(delta[i]) or not all(torch.isfinite(p).all() for p in plane.slots[i].seed.parameters()):
            return i
    return max(live, key=lambda i: float(delta[i]))
