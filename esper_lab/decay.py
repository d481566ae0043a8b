"""Emrakul, the immune system (seed 003 §9, seed 004 Stage 2): decay for what does not pay.

Tamiyo grows seeds; when she fossilises one, custody passes here. The fossil is a phage, out of
Tamiyo's reach, and Emrakul may take it out again through the plane's lysis interface only
(`SeedPlane.sedate`, `SeedPlane.schedule_prune`). This is the rule-based Emrakul:

- an **immune ledger** per phage: its debt (the rent it paid minus the contribution it made, in
  reward units, summed over the steps in custody), its antibodies (probes that hurt) and a
  **criticality lock** (steps left before it may be probed again);
- a **sedation probe** when a phage's debt passes `debt_threshold` and nothing else is probed:
  the phage fades to 0 over `probe_steps` while the host keeps training (it can route around
  it), stays gated `settle_steps`, and the mean metric of those steps is compared with the mean
  of the `baseline_steps` before the probe;
- a probe that **hurt** (a drop above `harm_tolerance`) lifts the sedation at the next step
  boundary, adds an antibody and a lock of `lock_steps`, and clears the debt; one that did **no
  harm** is a **functional lysis**: the phage stays gated and the plane removes it at the next
  step boundary (**physical lysis**), leaving a scar Tamiyo may regrow.

One probe at a time, so a metric change has one suspect; a probe starts only when the episode has
the steps to finish it and `watch_steps` more to see the metric recover, so no phage ends an
episode half sedated and every probe's aftermath is on record. Every decision is a function of
the plane and the metric, which data-parallel ranks share, so ranks decide alike.

**Learned Emrakul** (`DecayConfig.learned`, seed 003 §9.4's action space): the debt rule no
longer starts probes; the policy's Emrakul heads do, with `Decay.SEDATE` and the phage to sedate,
among the phages `phage_mask` allows (the ones the rule could probe, whatever their debt). The
judgement stays a measurement: a probe that hurt is restored, one that did no harm lyses, and
Emrakul never deletes anything directly. The ledger goes on counting: it is what she observes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch

from esper_lab.config import DecayConfig
from esper_lab.contracts import (
    LYSIS_FUNCTIONAL,
    PROBE_CLEARED,
    PROBE_RESTORED,
    PROBE_STARTED,
    Event,
    EventKind,
    Stage,
)
from esper_lab.plane import SeedPlane


@dataclass
class ImmuneLedger:
    """What Emrakul knows of one phage."""

    debt: float = 0.0
    antibodies: int = 0
    lock_remaining: int = 0


@dataclass
class Probe:
    """A sedation probe in flight: which phage, the baseline it is judged against, and the
    metrics read while the phage was gated to 0."""

    slot: int
    baseline: float
    gated: list[float] = field(default_factory=list)


class Emrakul:
    def __init__(self, config: DecayConfig, task_scale: float):
        self.config = config
        self.task_scale = task_scale  # reward units per unit of metric, as the economy pays them
        self.ledgers: dict[int, ImmuneLedger] = {}
        self.recent: deque[float] = deque(maxlen=config.baseline_steps)  # metrics while nothing was probed
        self.probe: Probe | None = None

    def step(self, plane: SeedPlane, metric: float, rents: list[float], steps_left: int, order: int | None = None) -> list[Event]:
        """One step's decisions, after the step's training and evaluation. `metric` is signed so
        that up is good; `rents[i]` is slot i's rent this step in reward units; `steps_left` is
        the steps the episode has after this one; `order` is the phage a learned Emrakul ordered
        sedated (from this step's `phage_mask`). Decisions act at the next step boundary."""
        self._custody(plane)
        locked = {index: ledger.lock_remaining for index, ledger in self.ledgers.items()}
        for index, ledger in self.ledgers.items():
            slot = plane.slots[index]
            if self.probe is None or self.probe.slot != index:  # a gated phage is judged by its probe
                contribution = 0.0 if math.isnan(slot.contribution) else slot.contribution
                ledger.debt += rents[index] - self.task_scale * contribution
        events = self._judge(plane, metric) if self.probe is not None else self._maybe_probe(plane, metric, steps_left, order)
        for index, ledger in self.ledgers.items():
            if locked.get(index):  # a lock set this step starts counting at the next: it blocks `lock_steps` steps
                ledger.lock_remaining -= 1
            plane.note_ledger(index, ledger.debt, ledger.antibodies, ledger.lock_remaining)
        return events

    def _custody(self, plane: SeedPlane) -> None:
        """Open a ledger for each new phage; close those of slots that are phages no more."""
        phages = {slot.index for slot in plane.slots if slot.stage is Stage.FOSSILIZED and not slot.lysis_due}
        for index in phages - set(self.ledgers):
            self.ledgers[index] = ImmuneLedger()
        for index in set(self.ledgers) - phages:
            del self.ledgers[index]
            if self.probe is not None and self.probe.slot == index:
                self.probe = None  # removed under the probe (a governor rollback's culprit, say)

    def phage_mask(self, n_slots: int, steps_left: int) -> torch.Tensor:
        """[n_slots] the phages a learned Emrakul may order sedated at the next step (none for the
        rule-based one): those the next step could probe, read now, before it runs."""
        mask = torch.zeros(n_slots, dtype=torch.bool)
        if self.config.learned and self.probe is None and self._room(len(self.recent) + 1, steps_left - 1):
            mask[self._probeable()] = True
        return mask

    def _room(self, baseline: int, steps_left: int) -> bool:
        """A full baseline, and the steps to fade, settle and judge a probe and then watch the
        metric come back, before the episode ends."""
        config = self.config
        return baseline >= config.baseline_steps and steps_left >= config.probe_steps + config.settle_steps + config.watch_steps

    def _probeable(self) -> list[int]:
        return [index for index, ledger in self.ledgers.items() if not ledger.lock_remaining]

    def _maybe_probe(self, plane: SeedPlane, metric: float, steps_left: int, order: int | None) -> list[Event]:
        self.recent.append(metric)
        if not self._room(len(self.recent), steps_left):
            return []
        if self.config.learned:  # the order stands if the phage is still probeable (a rollback may have taken it)
            chosen = [order] if order in self._probeable() else []
        else:
            chosen = [i for i in self._probeable() if self.ledgers[i].debt > self.config.debt_threshold]
        if not chosen:
            return []
        index = max(chosen, key=lambda i: (self.ledgers[i].debt, i))
        baseline = sum(self.recent) / len(self.recent)
        self.probe = Probe(index, baseline)
        plane.sedate(index, 0.0, self.config.probe_steps)
        return [_event(plane, index, EventKind.PROBE, PROBE_STARTED, baseline)]

    def _judge(self, plane: SeedPlane, metric: float) -> list[Event]:
        probe, config = self.probe, self.config
        if plane.slots[probe.slot].sedation == 0.0:  # this step trained and read with the phage gated
            probe.gated.append(metric)
        if len(probe.gated) < config.settle_steps:
            return []
        drop = probe.baseline - sum(probe.gated) / len(probe.gated)
        self.probe = None
        self.recent.clear()  # the next baseline starts after this probe
        if drop > config.harm_tolerance:
            ledger = self.ledgers[probe.slot]
            ledger.antibodies += 1
            ledger.lock_remaining = config.lock_steps
            ledger.debt = 0.0
            plane.sedate(probe.slot, 1.0, 0)
            return [_event(plane, probe.slot, EventKind.PROBE, PROBE_RESTORED, drop)]
        plane.schedule_prune(probe.slot)
        del self.ledgers[probe.slot]
        return [_event(plane, probe.slot, EventKind.PROBE, PROBE_CLEARED, drop), _event(plane, probe.slot, EventKind.LYSIS, LYSIS_FUNCTIONAL, drop)]


def _event(plane: SeedPlane, index: int, kind: EventKind, name: str, value: float) -> Event:
    return Event(kind, index, plane.specs[index].surface_uid, name, float(value))
