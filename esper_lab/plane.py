"""The seed plane (Kasmina): one `SeedSlot` per host surface and the lifecycle they follow.

The host calls `plane(i, h)` (or `plane(i, h, x)` on projection surfaces) at surface i. A slot
returns `h` unchanged unless its seed is live, so a dormant plane is exactly the identity.

Lifecycle (seed 003 §2.4), with one table of legal op transitions (`TRANSITIONS`) and one of
automatic step-boundary transitions (`AUTOMATIC`):

    DORMANT -> GERMINATED -> TRAINING -> BLENDING -> HOLDING -> FOSSILIZED
                   \\____________\\___________\\__________-> PRUNED -> EMBARGOED -> RESETTING -> DORMANT

TRAINING keeps the host's forward exactly and lets the seed learn through the straight-through
form `h + (s - s.detach())` with the seed's input detached (seed 003 §3.2). BLENDING ramps alpha
along the chosen curve over the chosen tempo to the chosen target. FOSSILIZED keeps the seed
(no merge): parameters frozen and out of the optimizer, levels and alpha immutable.

Adjacency ops (seed 000 Phase 5) act relative to the slot they name, in surface order, so they
need no other index: `BUD_NEXT_SURFACE` / `BUD_PREV_SURFACE` germinate the slot's blueprint, blend
and ramp in the nearest empty slot it fits after / before it (every surface exists up front: a bud
only fills a predeclared slot; its initial level and weights come from the germination seed, like
any germination's, so ranks agree); `CONSOLIDATE_WITH_NEXT` prunes the nearest seed after the
slot that Tamiyo still holds and grows this slot's ladder one level. Whether they pay is the
governor's call (`governor.Governor.veto`), not a rule here.

A fossil is a phage (seed 003 §9.2): committed, out of the policy's reach, and in Emrakul's
custody through the lysis interface only: `sedate` fades its sedation mask (a reversible probe),
`schedule_prune` fades it out and has it removed at the first step boundary that finds it gated
to 0 (physical lysis, never mid-batch). A lysis leaves a scar: an identity slot that remembers
what was removed, quarantined for `QUARANTINE_STEPS`, then open to regrowth until it expires.
"""

from __future__ import annotations

import contextlib
import hashlib
import math

import torch
from torch import nn

from esper_lab.contracts import (
    BUD_DIRECTIONS,
    LADDER_OPS,
    LIVE_STAGES,
    LYSIS_PHYSICAL,
    MODULE_STAGES,
    SCAR_EXPIRED,
    SCAR_REGROWN,
    SEED_STAGES,
    SLOT_COLUMNS,
    Action,
    ActionMasks,
    AlphaCurve,
    BlendAlgorithm,
    Blueprint,
    Event,
    EventKind,
    InjectionSpec,
    Op,
    PlaneReport,
    Stage,
    Tempo,
    germination_seed,
)
from esper_lab.seeds import fits, make_seed
from esper_lab.slot import SeedSlot, fault_origin, slot_fields, step_sensors

EMBARGO_STEPS = 3  # cooldown after a prune before the surface may germinate again (anti-thrash)
SIGMOID_SHARPNESS = 12.0  # the sigmoid alpha curve goes from ~0.0025 to ~0.9975 over the ramp
QUARANTINE_STEPS = 6  # a scar's embargo: twice a prune's, so a lysed site settles before regrowth (seed 004 quarantine)
SCAR_EXPIRY_STEPS = 20  # steps after its lysis a scar nobody regrew stays one; then a plain dormant slot (seed 004: scars must not proliferate)

# seeds a consolidation may prune: Tamiyo's (a fossil is a phage, in Emrakul's custody)
_CONSOLIDABLE = frozenset({Stage.GERMINATED, *LIVE_STAGES})

# (stage, op) -> next stage. Internal and adjacency ops keep the named slot's stage; their extra
# guards live in `_guard`.
TRANSITIONS: dict[tuple[Stage, Op], Stage] = {
    (Stage.DORMANT, Op.GERMINATE): Stage.GERMINATED,
    (Stage.GERMINATED, Op.ADVANCE): Stage.TRAINING,
    (Stage.TRAINING, Op.ADVANCE): Stage.BLENDING,
    (Stage.BLENDING, Op.ADVANCE): Stage.HOLDING,
    (Stage.HOLDING, Op.FOSSILIZE): Stage.FOSSILIZED,
    (Stage.BLENDING, Op.SET_ALPHA_TARGET): Stage.BLENDING,
    **{(s, Op.PRUNE): Stage.PRUNED for s in (Stage.GERMINATED, *LIVE_STAGES)},
    **{(s, op): s for s in LIVE_STAGES for op in (*LADDER_OPS, *BUD_DIRECTIONS)},
}
# Transitions the plane makes by itself at a step boundary (`tick`).
AUTOMATIC: dict[Stage, Stage] = {
    Stage.PRUNED: Stage.EMBARGOED,
    Stage.EMBARGOED: Stage.RESETTING,  # once the embargo has run out
    Stage.RESETTING: Stage.DORMANT,
}


class IllegalAction(ValueError):
    """An op that the plane's masks would not allow: a caller bug, never silently ignored."""


def alpha_curve(curve: AlphaCurve, t: float) -> float:
    """Fraction of the way from start to target alpha at ramp progress t in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    if curve is AlphaCurve.LINEAR:
        return t
    if curve is AlphaCurve.COSINE:
        return 0.5 - 0.5 * math.cos(math.pi * t)
    lo, hi = (1 / (1 + math.exp(SIGMOID_SHARPNESS * 0.5)), 1 / (1 + math.exp(-SIGMOID_SHARPNESS * 0.5)))
    return (1 / (1 + math.exp(-SIGMOID_SHARPNESS * (t - 0.5))) - lo) / (hi - lo)


class SeedPlane(nn.Module):
    """Owns every slot of one host; the only place lifecycle rules and legality live."""

    def __init__(
        self,
        host: nn.Module,
        run_seed: int,
        allowed_blueprints: tuple[Blueprint, ...] | None = None,
        max_seeds: int | None = None,
    ):
        super().__init__()
        self.max_seeds = max_seeds  # occupied slots at once; None = one per surface
        specs = host.injection_specs()
        self.specs: tuple[InjectionSpec, ...] = tuple(specs)
        self.slots = nn.ModuleList(SeedSlot(i, spec, shape) for i, (spec, shape) in enumerate(zip(specs, host.surface_in_shapes())))
        self.run_seed = run_seed
        self.host_param_count = host.param_count()
        self.host_flops = host.flops()
        allowed = tuple(Blueprint) if allowed_blueprints is None else tuple(allowed_blueprints)
        fit = torch.tensor([[b in allowed and fits(b, spec) for b in Blueprint] for spec in specs], dtype=torch.bool)
        self.register_buffer("_blueprint_fit", fit, persistent=False)

    def forward(self, i: int, h: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        slot = self.slots[i]
        if slot.stage not in MODULE_STAGES or slot.ablated or slot.sedation == 0.0:  # dormant, seedless, probed or gated: no module call
            return h
        return slot(h, x)

    def __len__(self) -> int:
        return len(self.slots)

    # --- legality -----------------------------------------------------------------------------
    def _guard(self, slot: SeedSlot, op: Op) -> str | None:
        """Why `op` cannot apply to `slot` right now, or None when it can."""
        if (slot.stage, op) not in TRANSITIONS:
            return f"op {op.name} is not legal in stage {slot.stage.name}"
        ladder = slot.ladder
        if op in LADDER_OPS and ladder is None:
            return f"op {op.name} needs a ladder seed, slot has {slot.blueprint.name}"
        if op in (Op.GROW_INTERNAL, Op.CONSOLIDATE_WITH_NEXT) and ladder.level() >= ladder.max_level:
            return f"{op.name} at the top level {ladder.max_level}"
        if op is Op.CONSOLIDATE_WITH_NEXT and self.consolidation_partner(slot.index) is None:
            return "CONSOLIDATE_WITH_NEXT needs a seed of Tamiyo's after this slot"
        if op in BUD_DIRECTIONS and self.bud_target(slot.index, BUD_DIRECTIONS[op]) is None:
            return f"{op.name}: no empty slot {'after' if BUD_DIRECTIONS[op] > 0 else 'before'} this one fits {slot.blueprint.name}"
        if op is Op.SHRINK_INTERNAL and ladder.level() <= 0:
            return "SHRINK_INTERNAL at level 0"
        if op in (Op.FOCUS_NEXT, Op.FOCUS_PREV) and ladder.n_subtargets < 2:
            return f"op {op.name} needs a multi-ladder, {slot.blueprint.name} has one subtarget"
        if op is Op.ADVANCE and slot.stage is Stage.BLENDING and slot.alpha != slot.alpha_target:
            return "ADVANCE from BLENDING waits for alpha to reach its target"
        if op is Op.GERMINATE and not bool(self._blueprint_fit[slot.index].any()):
            return "no allowed blueprint fits this surface"
        if (op is Op.GERMINATE or op in BUD_DIRECTIONS) and self.max_seeds is not None and self.occupied_count() >= self.max_seeds:
            return f"{op.name} with max_seeds={self.max_seeds} slots already occupied"
        return None

    def bud_target(self, index: int, direction: int) -> int | None:
        """The nearest empty (DORMANT) slot after (`direction` 1) or before (-1) slot `index` that
        the slot's blueprint fits and is allowed at, or None."""
        blueprint = self.slots[index].blueprint
        j = index + direction
        while 0 <= j < len(self.slots):
            if self.slots[j].stage is Stage.DORMANT and bool(self._blueprint_fit[j, blueprint]):
                return j
            j += direction
        return None

    def consolidation_partner(self, index: int) -> int | None:
        """The nearest slot after `index` whose seed Tamiyo still holds (germinated or live), or None."""
        return next((slot.index for slot in self.slots[index + 1 :] if slot.stage in _CONSOLIDABLE), None)

    def action_masks(self) -> ActionMasks:
        """Legal ops per slot and legal blueprints per slot: the one source of truth. Which phages
        may be sedated is Emrakul's to say (`decay.Emrakul.phage_mask`): none, here."""
        op = torch.zeros(len(self.slots), len(Op), dtype=torch.bool)
        for slot in self.slots:
            for o in Op:
                op[slot.index, o] = o is Op.WAIT or self._guard(slot, o) is None
        return ActionMasks(op=op, blueprint=self._blueprint_fit.clone(), phage=torch.zeros(len(self.slots), dtype=torch.bool))

    # --- applying decisions -------------------------------------------------------------------
    def check(self, action: Action) -> None:
        """Raise `IllegalAction` naming the slot, stage and op when `action` is illegal."""
        if action.op is Op.WAIT:
            return
        if not 0 <= action.slot < len(self.slots):
            raise IllegalAction(f"slot {action.slot} outside 0..{len(self.slots) - 1}")
        slot = self.slots[action.slot]
        reason = self._guard(slot, action.op)
        if reason is None and action.op is Op.GERMINATE and not bool(self._blueprint_fit[slot.index, action.blueprint]):
            reason = f"blueprint {action.blueprint.name} does not fit or is not allowed at slot {slot.index}"
        if reason is not None:
            raise IllegalAction(f"slot {slot.index} ({slot.stage.name}): {reason}")

    def apply(self, action: Action) -> list[Event]:
        """Apply one decision (after `check`); return the events it caused."""
        self.check(action)
        if action.op is Op.WAIT:
            return []
        slot = self.slots[action.slot]
        op, events = action.op, []
        if op is Op.GERMINATE:
            events += self._germinate(slot, action.blueprint, action.blend, action.curve, action.tempo, action.target.alpha)
        elif op in BUD_DIRECTIONS:
            bud = self.slots[self.bud_target(slot.index, BUD_DIRECTIONS[op])]
            events.append(self._event(slot, EventKind.ADJACENCY, op.name, bud.index))
            events += self._germinate(bud, slot.blueprint, slot.blend_algorithm, slot.curve, slot.tempo, slot.alpha_target)
            events += self._move(bud, Stage.GERMINATED)
        elif op is Op.CONSOLIDATE_WITH_NEXT:
            partner = self.slots[self.consolidation_partner(slot.index)]
            events.append(self._event(slot, EventKind.ADJACENCY, op.name, partner.index))
            partner.drop_seed(EMBARGO_STEPS)
            events += self._move(partner, Stage.PRUNED)
            slot.ladder.set_level(slot.ladder.level() + 1)
            events.append(self._event(slot, EventKind.LEVEL_CHANGED, op.name, slot.ladder.level()))
        elif op is Op.ADVANCE and slot.stage is Stage.TRAINING:
            slot.ramp_start, slot.ramp_step = slot.alpha, 0
        elif op is Op.SET_ALPHA_TARGET:
            slot.alpha_target, slot.ramp_start, slot.ramp_step = action.target.alpha, slot.alpha, 0
            events.append(self._event(slot, EventKind.ALPHA_TARGET_SET, "alpha_target", slot.alpha_target))
        elif op is Op.FOSSILIZE:
            slot.seed.requires_grad_(False)
        elif op is Op.PRUNE:
            slot.drop_seed(EMBARGO_STEPS)
        elif op in (Op.GROW_INTERNAL, Op.SHRINK_INTERNAL):
            ladder = slot.ladder
            ladder.set_level(ladder.level() + (1 if op is Op.GROW_INTERNAL else -1))
            events.append(self._event(slot, EventKind.LEVEL_CHANGED, op.name, ladder.level()))
        elif op in (Op.FOCUS_NEXT, Op.FOCUS_PREV):
            slot.ladder.shift_focus(1 if op is Op.FOCUS_NEXT else -1)
            events.append(self._event(slot, EventKind.FOCUS_CHANGED, op.name, int(slot.ladder.focus)))
        events = self._move(slot, TRANSITIONS[(slot.stage, op)]) + events
        for index in {action.slot, *(e.slot for e in events)}:
            self.slots[index].changed = True
        return events

    def _germinate(
        self, slot: SeedSlot, blueprint: Blueprint, blend: BlendAlgorithm, curve: AlphaCurve, tempo: Tempo, alpha_target: float
    ) -> list[Event]:
        """A new seed in `slot` (weights from its germination seed); regrowing a scar clears it.
        The caller makes the DORMANT -> GERMINATED move."""
        events = []
        if slot.scar_blueprint is not None:
            events.append(self._event(slot, EventKind.LYSIS, SCAR_REGROWN, float(blueprint)))
            slot.clear_scar()
        generator = torch.Generator().manual_seed(germination_seed(self.run_seed, slot.spec.surface_uid, slot.germinations))
        slot.seed = make_seed(blueprint, slot.spec, generator).to(slot.acc.device)
        slot.blueprint, slot.blend_algorithm, slot.curve, slot.tempo = blueprint, blend, curve, tempo
        slot.alpha, slot.alpha_target = 0.0, alpha_target
        slot.contribution, slot.roi_ema = math.nan, math.nan
        slot.germinations += 1
        return events

    def tick(self) -> list[Event]:
        """Step boundary: fold the step's changes into each slot's churn EMA, fade sedation masks
        and lyse the phages due (the one safe boundary), advance alpha ramps and embargo clocks,
        make automatic transitions, age scars."""
        events: list[Event] = []
        for slot in self.slots:
            slot.tick_churn()
            if slot.stage is Stage.FOSSILIZED:
                events += self._tick_phage(slot)
            elif slot.scar_blueprint is not None:
                slot.scar_age += 1
                if slot.stage is Stage.DORMANT and slot.scar_age >= SCAR_EXPIRY_STEPS:
                    events.append(self._event(slot, EventKind.LYSIS, SCAR_EXPIRED, float(slot.scar_blueprint)))
                    slot.clear_scar()
            if slot.stage is Stage.BLENDING and slot.alpha != slot.alpha_target:
                slot.ramp_step += 1
                progress = alpha_curve(slot.curve, slot.ramp_step / slot.tempo.steps)
                slot.alpha = slot.alpha_target if progress >= 1.0 else slot.ramp_start + progress * (slot.alpha_target - slot.ramp_start)
            elif slot.stage is Stage.EMBARGOED:
                slot.embargo_remaining -= 1
                if slot.embargo_remaining <= 0:
                    events += self._move(slot, AUTOMATIC[Stage.EMBARGOED])
            elif slot.stage in (Stage.PRUNED, Stage.RESETTING):
                events += self._move(slot, AUTOMATIC[slot.stage])
        return events

    def _tick_phage(self, slot: SeedSlot) -> list[Event]:
        slot.sedation_step = min(slot.sedation_step + 1, slot.sedation_steps)
        progress = slot.sedation_step / slot.sedation_steps if slot.sedation_steps else 1.0
        # from start, target and n (never a sum of steps): the fade lands exactly on its target
        slot.sedation = slot.sedation_target if progress >= 1.0 else slot.sedation_start + progress * (slot.sedation_target - slot.sedation_start)
        if not (slot.lysis_due and slot.sedation == 0.0):
            return []
        blueprint, contribution = slot.blueprint, slot.contribution
        slot.drop_seed(QUARANTINE_STEPS)
        slot.scar_blueprint, slot.scar_age, slot.scar_contribution = blueprint, 0, contribution
        return [self._event(slot, EventKind.LYSIS, LYSIS_PHYSICAL, float(blueprint)), *self._move(slot, Stage.PRUNED)]

    # --- a phage's lysis interface (seed 003 §9.2): Emrakul's only levers ------------------------
    def _phage(self, index: int) -> SeedSlot:
        slot = self.slots[index]
        if slot.stage is not Stage.FOSSILIZED:
            raise IllegalAction(f"slot {index} ({slot.stage.name}): not a phage; only fossils are in Emrakul's custody")
        return slot

    def sedate(self, index: int, target: float, steps: int) -> None:
        """Fade phage `index`'s sedation mask linearly to `target` in [0, 1] over `steps` step
        boundaries (0: at the next one) while training goes on: a probe fades it to 0, a
        restore back to 1. Every blend is the identity at 0, so a gated phage is not called."""
        slot = self._phage(index)
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"sedation target {target!r} outside [0, 1]")
        if not (isinstance(steps, int) and steps >= 0):
            raise ValueError(f"steps={steps!r} must be an integer >= 0")
        slot.sedation_target, slot.sedation_start = float(target), slot.sedation
        slot.sedation_steps, slot.sedation_step = max(steps, 1), 0

    def schedule_prune(self, index: int, steps: int = 0) -> None:
        """Functional lysis: fade phage `index` out over `steps`, then remove it (physical lysis)
        at the first step boundary that finds it gated to 0, leaving a scar."""
        self.sedate(index, 0.0, steps)
        self.slots[index].lysis_due = True

    def note_ledger(self, index: int, debt: float, antibodies: int, lock_remaining: int) -> None:
        """Record Emrakul's ledger for phage `index` (shown by `report`, read by Tamiyo)."""
        slot = self.slots[index]
        slot.debt, slot.antibodies, slot.lock_remaining = float(debt), int(antibodies), int(lock_remaining)

    def remove_culprit(self, index: int) -> list[Event]:
        """The governor's removal of a seed that poisoned the forward, FOSSILIZED included: it
        goes to PRUNED (then embargo, back to DORMANT) like a prune. Not an op: the policy's
        lifecycle has no way out of FOSSILIZED, but a fossil that turns finite inputs into NaN
        would make every later step roll back, and nothing else could remove it."""
        slot = self.slots[index]
        if slot.stage not in SEED_STAGES:
            raise IllegalAction(f"slot {index} ({slot.stage.name}): no seed to remove")
        slot.drop_seed(EMBARGO_STEPS)
        slot.rollbacks += 1
        return self._move(slot, Stage.PRUNED)

    def note_veto(self, index: int) -> None:
        """Count a governor veto of an op on slot `index` (the slot's `governor_vetoes`)."""
        self.slots[index].vetoes += 1

    def _move(self, slot: SeedSlot, stage: Stage) -> list[Event]:
        if stage is slot.stage:
            return []
        event = self._event(slot, EventKind.TRANSITION, f"{slot.stage.name}->{stage.name}", float(stage))
        slot.stage = stage
        return [event]

    @staticmethod
    def _event(slot: SeedSlot, kind: EventKind, name: str, value: float) -> Event:
        return Event(kind=kind, slot=slot.index, surface_uid=slot.spec.surface_uid, name=name, value=float(value))

    # --- optimizer, accounting, report, identity ----------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of seeds that still learn (fossilised seeds are frozen and left out)."""
        return [p for slot in self.slots if slot.stage in SEED_STAGES for p in slot.seed.parameters() if p.requires_grad]

    def sync_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Point the optimizer's `seeds` param group at the live seeds and drop stale state."""
        group = next(g for g in optimizer.param_groups if g.get("name") == "seeds")
        params = self.trainable_parameters()
        keep = {id(p) for p in params}
        for p in group["params"]:
            if id(p) not in keep:
                optimizer.state.pop(p, None)
        group["params"] = params

    def occupied_count(self) -> int:
        return sum(slot.stage in SEED_STAGES for slot in self.slots)

    def active_param_count(self) -> int:
        return sum(slot.param_count_active() for slot in self.slots)

    def report(self, reset: bool = True) -> PlaneReport:
        """All slots as one `[S, F]` tensor; sensors averaged over the step, then cleared."""
        sensors = step_sensors(torch.stack([slot.acc for slot in self.slots]).cpu())
        values = torch.tensor([slot.row(sensors[slot.index]) for slot in self.slots], dtype=torch.float64)
        if reset:
            for slot in self.slots:
                slot.acc.zero_()
                slot.training_forwards = 0  # every step senses its first batch, then one in SENSE_EVERY
                slot.contribution_measured = False
        return PlaneReport(SLOT_COLUMNS, values.float(), torch.ones(len(self.slots), dtype=torch.bool))

    def forward_slots(self) -> list[int]:
        """Slots whose seed output reaches the host's forward (see `SeedSlot.in_forward`)."""
        return [slot.index for slot in self.slots if slot.in_forward]

    @contextlib.contextmanager
    def ablation(self, index: int):
        """Leave slot `index`'s seed out of the forward pass while inside: exactly the host with
        that seed's alpha forced to 0 (every blend is the identity at alpha 0), nothing else moved."""
        slot = self.slots[index]
        slot.ablated = True
        try:
            yield
        finally:
            slot.ablated = False

    def note_contribution(self, index: int, value: float) -> None:
        """Record a measured counterfactual contribution of slot `index`'s seed and fold it into
        its ROI (both shown by `report`)."""
        self.slots[index].note_contribution(value)

    def fault_origins(self) -> torch.Tensor:
        """[S] training batches this step in which each slot's seed turned a finite input
        non-finite (one read, by the governor on a rollback)."""
        return torch.stack([fault_origin(slot) for slot in self.slots]).cpu()

    def set_sensors(self, enabled: bool) -> None:
        for slot in self.slots:
            slot.sensors_enabled = enabled

    def fingerprint(self) -> str:
        """SHA-256 of the lifecycle state and seed parameters: equal across ranks, or a desync."""
        return hashlib.sha256(repr([slot_fields(slot) for slot in self.slots]).encode()).hexdigest()
