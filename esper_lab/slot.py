"""One seed slot (part of Kasmina): a surface's lifecycle state, its seed, its sensors and its
report row. The lifecycle's rules, and every change of stage, live in `esper_lab.plane`.

A slot mixes its seed into the host stream with one of the blend forms (each the identity when
the seed's output or alpha is 0), senses on-device while the host trains, and reports one row in
`SLOT_COLUMNS` order per step. Its lifecycle state is the field list `LIFECYCLE_FIELDS`: what a
governor snapshot restores and what data-parallel ranks must agree on.
"""

from __future__ import annotations

import enum
import hashlib
import math

import torch
from torch import nn

from esper_lab.contracts import (
    BLENDED_STAGES,
    NO_BLUEPRINT,
    SEED_STAGES,
    SLOT_COLUMNS,
    AlphaCurve,
    AlphaTarget,
    BlendAlgorithm,
    Blueprint,
    InjectionSpec,
    SlotKind,
    Stage,
    Tempo,
    roi,
)
from esper_lab.seeds.base import LadderSeed

SENSOR_EPS = 1e-12  # guards the ratio sensors against an all-zero stream
SENSE_EVERY = 4  # sensors sample a step's first training batch and one in four after it: a step
# still averages several, at a quarter of the cost (norms and gradient hooks on every batch cost ~17% of an A2 train step)

ECONOMY_EMA = 0.8  # weight of the past in the ROI and churn EMAs: about the last five values count

# Per-slot sensor accumulators, summed over the batches of one step and read once by `report`.
# _ACC_ORIGIN counts training batches whose seed output was non-finite on a finite input: the
# governor's culprit evidence, read only on a rollback (`fault_origins`).
_ACC_DELTA, _ACC_OUTPUT, _ACC_SEED_GRAD, _ACC_HOST_GRAD, _ACC_FORWARDS, _ACC_BACKWARDS, _ACC_ORIGIN = range(7)
# A slot's lifecycle state: what a snapshot restores and what ranks must agree on (with the seed's tensors).
LIFECYCLE_FIELDS = (
    "stage",
    "blueprint",
    "blend_algorithm",
    "curve",
    "tempo",
    "alpha",
    "alpha_target",
    "ramp_start",
    "ramp_step",
    "embargo_remaining",
    "germinations",
    "sedation",
    "sedation_target",
    "sedation_start",
    "sedation_steps",
    "sedation_step",
    "lysis_due",
    "scar_blueprint",
    "scar_age",
    "scar_contribution",
)


def blend(algorithm: BlendAlgorithm, h: torch.Tensor, s: torch.Tensor, alpha: float) -> torch.Tensor:
    """Mix a seed contribution into the host stream. Each form is the identity when s = 0."""
    if algorithm is BlendAlgorithm.ADD:
        return h + alpha * s
    if algorithm is BlendAlgorithm.MULTIPLY:
        return h * (1 + alpha * torch.tanh(s))
    gate = torch.sigmoid(s.flatten(1).mean(1)).view(-1, *([1] * (s.dim() - 1)))
    return h + alpha * gate * s


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
        self.sedation = 1.0  # a phage's sedation mask: its output enters at alpha * sedation
        # a fade: from `sedation_start` to `sedation_target` over `sedation_steps` boundaries, of
        # which `sedation_step` are done (the value is computed from these, so it lands exactly)
        self.sedation_target, self.sedation_start, self.sedation_steps, self.sedation_step = 1.0, 1.0, 0, 0
        self.lysis_due = False  # remove the phage at the first step boundary that finds it gated to 0
        self.scar_blueprint: Blueprint | None = None  # set by a lysis: this slot is a scar
        self.scar_age = 0  # steps since the lysis
        self.scar_contribution = math.nan  # the removed phage's last measured contribution
        self.debt, self.antibodies, self.lock_remaining = 0.0, 0, 0  # Emrakul's ledger, as last noted
        # the economy's view (not lifecycle state: a rollback does not undo what it counted)
        self.roi_ema = math.nan  # this seed's contribution per ROI_PARAMS active params, smoothed
        self.churn_ema = 0.0  # how often an op changed this slot, smoothed over steps
        self.changed = False  # an op changed this slot since the last step boundary
        self.vetoes, self.rollbacks = 0, 0  # governor events on this slot this episode
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
            y = blend(self.blend_algorithm, h, s, self.alpha * self.sedation)
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

    # --- state changes the plane makes ----------------------------------------------------------
    def drop_seed(self, embargo: int) -> None:
        """Empty the slot (a prune, a culprit's removal or a lysis) and start its embargo."""
        self.seed, self.blueprint, self.alpha, self.contribution, self.roi_ema = None, None, 0.0, math.nan, math.nan
        self.embargo_remaining = embargo
        self.sedation, self.sedation_target, self.sedation_start, self.sedation_steps, self.sedation_step = 1.0, 1.0, 1.0, 0, 0
        self.lysis_due = False
        self.debt, self.antibodies, self.lock_remaining = 0.0, 0, 0

    def note_contribution(self, value: float) -> None:
        """A measured contribution, and the ROI EMA it feeds (the first measurement sets it)."""
        self.contribution, self.contribution_measured = float(value), True
        measured = roi(value, max(self.param_count_active(), 1))
        self.roi_ema = measured if math.isnan(self.roi_ema) else ECONOMY_EMA * self.roi_ema + (1 - ECONOMY_EMA) * measured

    def tick_churn(self) -> None:
        """Step boundary: fold whether an op changed this slot into its churn EMA."""
        self.churn_ema = ECONOMY_EMA * self.churn_ema + (1 - ECONOMY_EMA) * float(self.changed)
        self.changed = False

    def clear_scar(self) -> None:
        self.scar_blueprint, self.scar_age, self.scar_contribution = None, 0, math.nan

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
        """The seed's output reaches the host's forward: fossilised and not gated out, or blended
        in with alpha > 0. A TRAINING seed runs but its output cancels (straight-through), so it
        is incubating."""
        if self.stage is Stage.FOSSILIZED:
            return self.sedation > 0
        return self.stage in BLENDED_STAGES and self.alpha > 0

    @property
    def kind(self) -> SlotKind:
        if self.stage is Stage.FOSSILIZED:
            return SlotKind.PHAGE
        return SlotKind.SEED if self.scar_blueprint is None else SlotKind.SCAR

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
            "surface_uid": spec.surface_uid,
            "depth_norm": spec.depth_norm,
            "site": int(spec.site),
            "role": int(spec.role),
            "stage": int(self.stage),
            "blueprint": NO_BLUEPRINT if self.blueprint is None else int(self.blueprint),
            "alpha": self.alpha,
            "alpha_target": self.alpha_target,
            "blend": int(self.blend_algorithm),
            "internal_level": level,
            "internal_level_norm": level_norm,
            "max_level": max_level,
            "focus_idx": focus,
            "focus_subtarget": focus_subtarget,
            "focus_internal_level_norm": level_norm,
            "internal_level_mean_norm": level_mean,
            "internal_level_max_norm": level_max,
            "seed_param_count_active": self.param_count_active(),
            "seed_flops_active_est": self.flops_active(),
            "in_forward": int(self.in_forward),
            "contribution": self.contribution,
            "contribution_measured": int(self.contribution_measured),
            "delta_l2_norm": delta,
            "output_l2_norm": output,
            "seed_grad_norm": seed_grad,
            "grad_ratio": grad_ratio,
            "embargo_remaining": self.embargo_remaining,
            "germinations": self.germinations,
            "slot_kind": int(self.kind),
            "sedation": self.sedation,
            "debt": self.debt,
            "antibodies": self.antibodies,
            "lock_remaining": self.lock_remaining,
            "scar_age": self.scar_age,
            "scar_blueprint": NO_BLUEPRINT if self.scar_blueprint is None else int(self.scar_blueprint),
            "scar_contribution": self.scar_contribution,
            "roi_estimate_ema": self.roi_ema,
            "churn_ema": self.churn_ema,
            "governor_vetoes": self.vetoes,
            "governor_rollbacks": self.rollbacks,
        }
        return [row[name] for name in SLOT_COLUMNS]


def step_sensors(acc: torch.Tensor) -> torch.Tensor:
    """[S, 4] sensors of a step (delta, output, seed grad, grad ratio) from the slots' stacked
    accumulators [S, 7], averaged over the batches that fed each."""
    forwards = acc[:, _ACC_FORWARDS].clamp(min=1)
    backwards = acc[:, _ACC_BACKWARDS].clamp(min=1)
    host_grad = acc[:, _ACC_HOST_GRAD] / backwards
    seed_grad = acc[:, _ACC_SEED_GRAD] / backwards
    return torch.stack([acc[:, _ACC_DELTA] / forwards, acc[:, _ACC_OUTPUT] / forwards, seed_grad, seed_grad / (host_grad + SENSOR_EPS)], dim=1)


def fault_origin(slot: SeedSlot) -> torch.Tensor:
    """Training batches this step in which the slot's seed turned a finite input non-finite."""
    return slot.acc[_ACC_ORIGIN]


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
