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
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import math

import torch
from torch import nn

from esper_lab.contracts import (
    LIVE_STAGES,
    MODULE_STAGES,
    SEED_STAGES,
    SLOT_COLUMNS,
    Action,
    ActionMasks,
    AlphaCurve,
    AlphaTarget,
    BlendAlgorithm,
    Blueprint,
    Event,
    EventKind,
    InjectionSpec,
    Op,
    PlaneReport,
    Stage,
    Tempo,
)
from esper_lab.seeds import fits, make_seed
from esper_lab.seeds.base import LadderSeed

EMBARGO_STEPS = 3  # cooldown after a prune before the surface may germinate again (anti-thrash)
SENSOR_EPS = 1e-12  # guards the ratio sensors against an all-zero stream
SENSE_EVERY = 4  # sensors sample a step's first training batch and one in four after it: a step
# still averages several, at a quarter of the cost (norms and gradient hooks on every batch cost ~17% of an A2 train step)
SIGMOID_SHARPNESS = 12.0  # the sigmoid alpha curve goes from ~0.0025 to ~0.9975 over the ramp

# (stage, op) -> next stage. Internal ops keep the stage; their extra guards live in `_guard`.
TRANSITIONS: dict[tuple[Stage, Op], Stage] = {
    (Stage.DORMANT, Op.GERMINATE): Stage.GERMINATED,
    (Stage.GERMINATED, Op.ADVANCE): Stage.TRAINING,
    (Stage.TRAINING, Op.ADVANCE): Stage.BLENDING,
    (Stage.BLENDING, Op.ADVANCE): Stage.HOLDING,
    (Stage.HOLDING, Op.FOSSILIZE): Stage.FOSSILIZED,
    (Stage.BLENDING, Op.SET_ALPHA_TARGET): Stage.BLENDING,
    **{(s, Op.PRUNE): Stage.PRUNED for s in (Stage.GERMINATED, *LIVE_STAGES)},
    **{
        (s, op): s
        for s in LIVE_STAGES
        for op in (Op.GROW_INTERNAL, Op.SHRINK_INTERNAL, Op.FOCUS_NEXT, Op.FOCUS_PREV)
    },
}
# Transitions the plane makes by itself at a step boundary (`tick`).
AUTOMATIC: dict[Stage, Stage] = {
    Stage.PRUNED: Stage.EMBARGOED,
    Stage.EMBARGOED: Stage.RESETTING,  # once the embargo has run out
    Stage.RESETTING: Stage.DORMANT,
}

# Per-slot sensor accumulators, summed over the batches of one step and read once by `report`.
# _ACC_ORIGIN counts training batches whose seed output was non-finite on a finite input: the
# governor's culprit evidence, read only on a rollback (`fault_origins`).
_ACC_DELTA, _ACC_OUTPUT, _ACC_SEED_GRAD, _ACC_HOST_GRAD, _ACC_FORWARDS, _ACC_BACKWARDS, _ACC_ORIGIN = range(7)
# A slot's lifecycle state: what a snapshot restores and what ranks must agree on (with the seed's tensors).
LIFECYCLE_FIELDS = ("stage", "blueprint", "blend_algorithm", "curve", "tempo", "alpha", "alpha_target",
                    "ramp_start", "ramp_step", "embargo_remaining", "germinations")  # fmt: skip

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


def blend(algorithm: BlendAlgorithm, h: torch.Tensor, s: torch.Tensor, alpha: float) -> torch.Tensor:
    """Mix a seed contribution into the host stream. Each form is the identity when s = 0."""
    if algorithm is BlendAlgorithm.ADD:
        return h + alpha * s
    if algorithm is BlendAlgorithm.MULTIPLY:
        return h * (1 + alpha * torch.tanh(s))
    gate = torch.sigmoid(s.flatten(1).mean(1)).view(-1, *([1] * (s.dim() - 1)))
    return h + alpha * gate * s


def germination_seed(run_seed: int, surface_uid: int, germinations: int) -> int:
    """Deterministic 63-bit seed for a germination (splitmix64 mixing; never `hash()`)."""
    z = (run_seed * 0x9E3779B97F4A7C15 + surface_uid * 0xBF58476D1CE4E5B9 + germinations) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


class SeedSlot(nn.Module):
    """One surface's slot: lifecycle state, the seed (when there is one) and its sensors."""

    def __init__(self, index: int, spec: InjectionSpec, in_shape: tuple[int, ...]):
        super().__init__()
        self.index = index
        self.spec = spec
        self.in_shape = in_shape
        self.seed: nn.Module | None = None
        self.stage = Stage.DORMANT
        self.blueprint: Blueprint | None = None
        self.blend_algorithm = BlendAlgorithm.ADD
        self.curve = AlphaCurve.LINEAR
        self.tempo = Tempo.STANDARD
        self.alpha = 0.0
        self.alpha_target = AlphaTarget.FULL.alpha
        self.ramp_start = 0.0
        self.ramp_step = 0
        self.embargo_remaining = 0
        self.germinations = 0
        self.sensors_enabled = True
        self.training_forwards = 0  # which training batches the sensors sample
        self.ablated = False  # the contribution probe: the seed is left out of forward for a moment
        self.contribution = math.nan  # last measured counterfactual contribution of this seed
        self.contribution_measured = False  # measured since the last report
        self.register_buffer("acc", torch.zeros(7))

    # --- forward ------------------------------------------------------------------------------
    def forward(self, h: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Called by the plane only when the slot's seed is in the forward pass."""
        seed_input = h if x is None else x
        if self.stage is Stage.TRAINING:
            s = self.seed(seed_input.detach())
            y = h + (s - s.detach())  # forward is exactly h; the seed still gets dL/dy
        else:
            s = self.seed(seed_input)
            y = blend(self.blend_algorithm, h, s, self.alpha)
        if torch.is_grad_enabled():
            self._watch(seed_input, s)
            if self.sensors_enabled:
                if self.training_forwards % SENSE_EVERY == 0:
                    self._sense(h, s, y)
                self.training_forwards += 1
        return y

    def _watch(self, seed_input: torch.Tensor, s: torch.Tensor) -> None:
        """Count a batch where this seed turned a finite input non-finite: the origin of a NaN,
        seen before the optimizer step spreads it to every parameter. Every training batch (a
        fault may start on any), on-device, never read here; on even when sensors are off,
        because the governor's blame depends on it. A sum is non-finite when any element is
        (or, finite, when it overflows: values near 1e38 / numel are a divergence anyway), and
        costs a tenth of `isfinite(t).all()` on CPU."""
        with torch.no_grad():
            self.acc[_ACC_ORIGIN] += torch.isfinite(seed_input.sum()) > torch.isfinite(s.sum())  # finite in, non-finite out

    def _sense(self, h: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> None:
        """Accumulate sensors on-device; nothing here leaves the device or syncs with the host."""
        acc = self.acc
        root_batch = math.sqrt(h.shape[0])
        with torch.no_grad():
            # what the seed changes: while TRAINING (hidden), what it would add at alpha = 1
            shown = s if self.stage is Stage.TRAINING else y - h
            h_norm = h.norm()
            acc[_ACC_DELTA] += shown.norm() / (h_norm + SENSOR_EPS)
            acc[_ACC_OUTPUT] += y.norm() / root_batch
            acc[_ACC_FORWARDS] += 1
        if s.requires_grad:
            s.register_hook(lambda g: self._add_grad(_ACC_SEED_GRAD, g, root_batch))
        if h.requires_grad:
            h.register_hook(lambda g: self._add_grad(_ACC_HOST_GRAD, g, root_batch))

    def _add_grad(self, column: int, grad: torch.Tensor, root_batch: float) -> None:
        with torch.no_grad():
            self.acc[column] += grad.norm() / root_batch
            if column == _ACC_SEED_GRAD:
                self.acc[_ACC_BACKWARDS] += 1

    # --- state the report reads ---------------------------------------------------------------
    @property
    def ladder(self) -> LadderSeed | None:
        return self.seed if isinstance(self.seed, LadderSeed) else None

    def param_count_active(self) -> int:
        return self.seed.param_count_active() if self.stage in SEED_STAGES else 0

    def flops_active(self) -> float:
        return self.seed.flops(self.in_shape) if self.stage in SEED_STAGES else 0.0

    @property
    def in_forward(self) -> bool:
        """The seed's output reaches the host's forward: fossilised, or blended in with alpha > 0.
        A TRAINING seed runs but its output cancels (straight-through), so it is incubating."""
        return self.stage is Stage.FOSSILIZED or (self.stage in (Stage.BLENDING, Stage.HOLDING) and self.alpha > 0)

    def row(self, sensors: torch.Tensor) -> list[float]:
        """This slot's report row in `SLOT_COLUMNS` order (sensors already averaged over the step)."""
        ladder = self.ladder
        if ladder is not None:
            levels = ladder.levels.float() / ladder.max_level
            level, max_level = ladder.level(), ladder.max_level
            focus, focus_subtarget = int(ladder.focus), int(ladder.subtargets[int(ladder.focus)])
            level_mean, level_max = float(levels.mean()), float(levels.max())
        else:
            level, max_level, focus, focus_subtarget, level_mean, level_max = 0, 0, 0, 0, 0.0, 0.0
        spec = self.spec
        level_norm = level / max_level if max_level else 0.0
        delta, output, seed_grad, grad_ratio = sensors.tolist()
        row = {
            "surface_uid": spec.surface_uid, "depth_norm": spec.depth_norm, "site": int(spec.site),
            "role": int(spec.role), "stage": int(self.stage), "blueprint": -1 if self.blueprint is None else int(self.blueprint),
            "alpha": self.alpha, "alpha_target": self.alpha_target, "blend": int(self.blend_algorithm),
            "internal_level": level, "internal_level_norm": level_norm, "max_level": max_level,
            "focus_idx": focus, "focus_subtarget": focus_subtarget, "focus_internal_level_norm": level_norm,
            "internal_level_mean_norm": level_mean, "internal_level_max_norm": level_max,
            "seed_param_count_active": self.param_count_active(), "seed_flops_active_est": self.flops_active(),
            "in_forward": int(self.in_forward), "contribution": self.contribution,
            "contribution_measured": int(self.contribution_measured),
            "delta_l2_norm": delta, "output_l2_norm": output, "seed_grad_norm": seed_grad, "grad_ratio": grad_ratio,
            "embargo_remaining": self.embargo_remaining, "germinations": self.germinations,
        }  # fmt: skip
        return [row[name] for name in SLOT_COLUMNS]


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
        self.slots = nn.ModuleList(
            SeedSlot(i, spec, shape) for i, (spec, shape) in enumerate(zip(specs, host.surface_in_shapes()))
        )
        self.run_seed = run_seed
        self.host_param_count = host.param_count()
        self.host_flops = host.flops()
        allowed = tuple(Blueprint) if allowed_blueprints is None else tuple(allowed_blueprints)
        fit = torch.tensor([[b in allowed and fits(b, spec) for b in Blueprint] for spec in specs], dtype=torch.bool)
        self.register_buffer("_blueprint_fit", fit, persistent=False)

    def forward(self, i: int, h: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        slot = self.slots[i]
        if slot.stage not in MODULE_STAGES or slot.ablated:  # dormant, seedless or probed: no module call
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
        if op in (Op.GROW_INTERNAL, Op.SHRINK_INTERNAL, Op.FOCUS_NEXT, Op.FOCUS_PREV) and ladder is None:
            return f"op {op.name} needs a ladder seed, slot has {slot.blueprint.name}"
        if op is Op.GROW_INTERNAL and ladder.level() >= ladder.max_level:
            return f"GROW_INTERNAL at the top level {ladder.max_level}"
        if op is Op.SHRINK_INTERNAL and ladder.level() <= 0:
            return "SHRINK_INTERNAL at level 0"
        if op in (Op.FOCUS_NEXT, Op.FOCUS_PREV) and ladder.n_subtargets < 2:
            return f"op {op.name} needs a multi-ladder, {slot.blueprint.name} has one subtarget"
        if op is Op.ADVANCE and slot.stage is Stage.BLENDING and slot.alpha != slot.alpha_target:
            return "ADVANCE from BLENDING waits for alpha to reach its target"
        if op is Op.GERMINATE and not bool(self._blueprint_fit[slot.index].any()):
            return "no allowed blueprint fits this surface"
        if op is Op.GERMINATE and self.max_seeds is not None and self.occupied_count() >= self.max_seeds:
            return f"GERMINATE with max_seeds={self.max_seeds} slots already occupied"
        return None

    def action_masks(self) -> ActionMasks:
        """Legal ops per slot and legal blueprints per slot: the one source of truth."""
        op = torch.zeros(len(self.slots), len(Op), dtype=torch.bool)
        for slot in self.slots:
            for o in Op:
                op[slot.index, o] = o is Op.WAIT or self._guard(slot, o) is None
        return ActionMasks(op=op, blueprint=self._blueprint_fit.clone())

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
            self._germinate(slot, action)
        elif op is Op.ADVANCE and slot.stage is Stage.TRAINING:
            slot.ramp_start, slot.ramp_step = slot.alpha, 0
        elif op is Op.SET_ALPHA_TARGET:
            slot.alpha_target, slot.ramp_start, slot.ramp_step = action.target.alpha, slot.alpha, 0
            events.append(self._event(slot, EventKind.ALPHA_TARGET_SET, "alpha_target", slot.alpha_target))
        elif op is Op.FOSSILIZE:
            slot.seed.requires_grad_(False)
        elif op is Op.PRUNE:
            _drop_seed(slot)
        elif op in (Op.GROW_INTERNAL, Op.SHRINK_INTERNAL):
            ladder = slot.ladder
            ladder.set_level(ladder.level() + (1 if op is Op.GROW_INTERNAL else -1))
            events.append(self._event(slot, EventKind.LEVEL_CHANGED, op.name, ladder.level()))
        elif op in (Op.FOCUS_NEXT, Op.FOCUS_PREV):
            slot.ladder.shift_focus(1 if op is Op.FOCUS_NEXT else -1)
            events.append(self._event(slot, EventKind.FOCUS_CHANGED, op.name, int(slot.ladder.focus)))
        return self._move(slot, TRANSITIONS[(slot.stage, op)]) + events

    def _germinate(self, slot: SeedSlot, action: Action) -> None:
        generator = torch.Generator().manual_seed(germination_seed(self.run_seed, slot.spec.surface_uid, slot.germinations))
        slot.seed = make_seed(action.blueprint, slot.spec, generator).to(slot.acc.device)
        slot.blueprint = action.blueprint
        slot.blend_algorithm, slot.curve, slot.tempo = action.blend, action.curve, action.tempo
        slot.alpha, slot.alpha_target = 0.0, action.target.alpha
        slot.contribution = math.nan
        slot.germinations += 1

    def tick(self) -> list[Event]:
        """Step boundary: advance alpha ramps and embargo clocks, make automatic transitions."""
        events: list[Event] = []
        for slot in self.slots:
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

    def remove_culprit(self, index: int) -> list[Event]:
        """The governor's removal of a seed that poisoned the forward, FOSSILIZED included: it
        goes to PRUNED (then embargo, back to DORMANT) like a prune. Not an op: the policy's
        lifecycle has no way out of FOSSILIZED, but a fossil that turns finite inputs into NaN
        would make every later step roll back, and nothing else could remove it."""
        slot = self.slots[index]
        if slot.stage not in SEED_STAGES:
            raise IllegalAction(f"slot {index} ({slot.stage.name}): no seed to remove")
        _drop_seed(slot)
        return self._move(slot, Stage.PRUNED)

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
        acc = torch.stack([slot.acc for slot in self.slots]).cpu()
        forwards = acc[:, _ACC_FORWARDS].clamp(min=1)
        backwards = acc[:, _ACC_BACKWARDS].clamp(min=1)
        host_grad = acc[:, _ACC_HOST_GRAD] / backwards
        seed_grad = acc[:, _ACC_SEED_GRAD] / backwards
        sensors = torch.stack(
            [acc[:, _ACC_DELTA] / forwards, acc[:, _ACC_OUTPUT] / forwards, seed_grad, seed_grad / (host_grad + SENSOR_EPS)],
            dim=1,
        )
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
        """Record a measured counterfactual contribution of slot `index`'s seed (shown by `report`)."""
        slot = self.slots[index]
        slot.contribution, slot.contribution_measured = float(value), True

    def fault_origins(self) -> torch.Tensor:
        """[S] training batches this step in which each slot's seed turned a finite input
        non-finite (one read, by the governor on a rollback)."""
        return torch.stack([slot.acc[_ACC_ORIGIN] for slot in self.slots]).cpu()

    def set_sensors(self, enabled: bool) -> None:
        for slot in self.slots:
            slot.sensors_enabled = enabled

    def fingerprint(self) -> str:
        """SHA-256 of the lifecycle state and seed parameters: equal across ranks, or a desync."""
        return hashlib.sha256(repr([slot_fields(slot) for slot in self.slots]).encode()).hexdigest()


def _drop_seed(slot: SeedSlot) -> None:
    slot.seed, slot.blueprint, slot.alpha, slot.contribution = None, None, 0.0, math.nan
    slot.embargo_remaining = EMBARGO_STEPS


def slot_fields(slot: SeedSlot) -> dict[str, str]:
    """Every field of a slot that shapes the forward pass, by name: the lifecycle state as text,
    then each seed tensor (parameters, levels, masks, focus) as a digest of its bytes."""
    fields = {name: field_text(getattr(slot, name)) for name in LIFECYCLE_FIELDS}
    if slot.seed is not None:
        fields.update({f"seed.{name}": tensor_digest(t) for name, t in slot.seed.state_dict().items()})
    return fields


def field_text(value: object) -> str:
    """An enum by name, anything else (ints, exact floats, None) by repr."""
    return value.name if isinstance(value, enum.Enum) else repr(value)


def tensor_digest(tensor: torch.Tensor) -> str:
    """A tensor's exact bytes as a short hex digest."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]

