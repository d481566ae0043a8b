"""Observation features (Tamiyo's eyes): what the policy sees of a batch of `StepResult`s.

One `Observation` holds, for B environments and S slots,

- `globals [B, G]`: run-level numbers (progress, losses, the task metric and their deltas,
  budget utilisations, slot count, veto and rollback bits);
- `slots [B, S, F]`: per-slot numbers (alpha, levels and focus fields, sensors, shares, legal ops);
- `ids [B, S, K]`: per-slot categorical ids (stage, blueprint, blend, site, role) for embeddings;
- `slot_mask [B, S]` and the legal choices `op_mask [B, S, n_ops]`, `blueprint_mask [B, S,
  n_blueprints]` and `phage_mask [B, S]` (what a learned Emrakul may sedate), which travel with
  what the policy saw so that the PPO update re-applies exactly the masks that sampling used.

Every dimension comes from the field lists below (never typed by hand) and is checked when a
batch is built. Column indices into the plane report are computed once, at import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from esper_lab.contracts import SLOT_COLUMNS, BlendAlgorithm, Blueprint, Op, Role, Site, SlotKind, Stage
from esper_lab.plane import EMBARGO_STEPS

# Global fields read straight from `StepResult.metrics`, then the ones derived here.
METRIC_FIELDS: tuple[str, ...] = (
    "progress",
    "train_loss",
    "val_loss",
    "metric",
    "metric_gain",
    "metric_since_start",
    "active_param_budget_util",
    "active_flops_budget_util",
    "veto",
    "rollback",
    "level_change_rate",
    "net_level_change",
)
# over_static: the metric minus the static twin's (0 without a twin): what the seeds have done so far
DERIVED_GLOBALS: tuple[str, ...] = ("val_loss_delta", "occupied_share", "log_slot_count", "over_static")
GLOBAL_FIELDS = METRIC_FIELDS + DERIVED_GLOBALS
_METRICS_READ = METRIC_FIELDS + ("occupied_slots", "n_slots", "host_params", "static_metric")

# Per-slot fields: report columns as they are, heavy-tailed ones through log1p, derived ones,
# then one legal bit per op (WAIT is always legal, so it carries no information).
RAW_COLUMNS: tuple[str, ...] = (
    "depth_norm",
    "alpha",
    "alpha_target",
    "internal_level_norm",
    "focus_internal_level_norm",
    "internal_level_mean_norm",
    "internal_level_max_norm",
    "in_forward",
    "contribution",  # the last measured counterfactual contribution (0 until measured)
    "sedation",
    "scar_contribution",  # a phage's sedation mask; what a scar's removed phage last contributed
    "debt",
    "lock_remaining",  # Emrakul's ledger of a phage: what it owes, the steps its criticality lock has left
    "roi_estimate_ema",
    "churn_ema",  # the economy's view of a slot: what its seed earns per param, how often it changes
)
LOG_COLUMNS: tuple[str, ...] = (
    "delta_l2_norm",
    "output_l2_norm",
    "seed_grad_norm",
    "grad_ratio",
    "germinations",
    "scar_age",
    "antibodies",
    "governor_vetoes",
    "governor_rollbacks",
)
DERIVED_SLOT_FIELDS: tuple[str, ...] = ("is_ladder", "param_share", "flop_share", "embargo_left")
LEGAL_FIELDS = (*(f"legal_{op.name.lower()}" for op in Op if op is not Op.WAIT), "legal_sedate")
SLOT_FIELDS = RAW_COLUMNS + LOG_COLUMNS + DERIVED_SLOT_FIELDS + LEGAL_FIELDS

# Categorical per-slot ids and their vocabulary sizes. Blueprint -1 (no seed) is shifted to 0.
ID_VOCAB: dict[str, int] = {
    "stage": len(Stage),
    "blueprint": len(Blueprint) + 1,
    "blend": len(BlendAlgorithm),
    "site": len(Site),
    "role": len(Role),
    "slot_kind": len(SlotKind),
}
SLOT_ID_FIELDS = tuple(ID_VOCAB)

NORM_CLIP = 5.0  # normalised features are clipped to +-5 std: one outlier cannot swamp a layer
NORM_VAR_FLOOR = 1e-4  # std >= 0.01: a feature that never moved in training stays bounded
SHARE_EPS = 1e-12  # flop_share of a plane with no active seed is 0, not 0/0


def _index(names: tuple[str, ...]) -> torch.Tensor:
    missing = [n for n in names if n not in SLOT_COLUMNS]
    if missing:
        raise ValueError(f"plane report lacks columns {missing}; it has {SLOT_COLUMNS}")
    return torch.tensor([SLOT_COLUMNS.index(n) for n in names])


_RAW_INDEX, _LOG_INDEX, _ID_INDEX = _index(RAW_COLUMNS), _index(LOG_COLUMNS), _index(SLOT_ID_FIELDS)
_LADDER, _PARAMS, _FLOPS, _EMBARGO = _index(("max_level", "seed_param_count_active", "seed_flops_active_est", "embargo_remaining")).tolist()
_BLUEPRINT_ID = SLOT_ID_FIELDS.index("blueprint")


@dataclass(frozen=True)
class Observation:
    """A batch of observations and legal choices; every tensor has the batch as its first dim."""

    globals: torch.Tensor
    slots: torch.Tensor
    ids: torch.Tensor
    slot_mask: torch.Tensor
    op_mask: torch.Tensor
    blueprint_mask: torch.Tensor
    phage_mask: torch.Tensor

    def map(self, fn) -> Observation:
        return Observation(*(fn(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def __getitem__(self, index) -> Observation:
        return self.map(lambda t: t[index])

    @staticmethod
    def stack(items: list[Observation]) -> Observation:
        """Stack per-step batches [B, ...] into [T, B, ...]."""
        return Observation(*(torch.stack([getattr(o, f.name) for o in items]) for f in dataclasses.fields(Observation)))

    @property
    def n_slots(self) -> int:
        return self.slots.shape[-2]


class Observer:
    """Builds `Observation`s from `StepResult`s. Keeps one number per env: the last validation
    loss, for its delta (reset at each episode's step 0).

    `max_slots` pads every batch to that many slots (the flat encoder needs a fixed S)."""

    def __init__(self, max_slots: int | None = None):
        self.max_slots = max_slots
        self.last_val_loss: torch.Tensor | None = None

    def __call__(self, results) -> Observation:
        for r in results:
            if r.report.columns != SLOT_COLUMNS:
                raise ValueError(f"plane report columns {r.report.columns} differ from SLOT_COLUMNS {SLOT_COLUMNS}")
            missing = [k for k in _METRICS_READ if k not in r.metrics]
            if missing:
                raise ValueError(f"step metrics lack {missing} (the policy's global features read them)")
        sizes = [r.report.values.shape[0] for r in results]
        n_slots = max(sizes) if self.max_slots is None else self.max_slots
        if max(sizes) > n_slots:
            raise ValueError(f"a plane has {max(sizes)} slots, more than max_slots={n_slots} of this policy")
        values = _pad([r.report.values for r in results], n_slots)
        slot_mask = _pad([r.report.slot_mask for r in results], n_slots)
        op_mask = _pad([r.masks.op for r in results], n_slots) & slot_mask[..., None]
        blueprint_mask = _pad([r.masks.blueprint for r in results], n_slots) & slot_mask[..., None]
        phage_mask = _pad([r.masks.phage for r in results], n_slots) & slot_mask
        metrics = torch.tensor([[float(r.metrics[k]) for k in _METRICS_READ] for r in results], dtype=torch.float64)
        steps = torch.tensor([r.step for r in results])
        obs = Observation(
            globals=self._globals(metrics, steps),
            slots=_slot_features(values, op_mask, phage_mask, metrics[:, _METRICS_READ.index("host_params")], slot_mask),
            ids=_slot_ids(values),
            slot_mask=slot_mask,
            op_mask=op_mask,
            blueprint_mask=blueprint_mask,
            phage_mask=phage_mask,
        )
        if obs.globals.shape[-1] != len(GLOBAL_FIELDS) or obs.slots.shape[-1] != len(SLOT_FIELDS):
            raise AssertionError(
                f"feature widths {obs.globals.shape[-1]}/{obs.slots.shape[-1]} != field lists {len(GLOBAL_FIELDS)}/{len(SLOT_FIELDS)}"
            )
        return obs

    def _globals(self, metrics: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        column = lambda name: metrics[:, _METRICS_READ.index(name)]
        val_loss = column("val_loss")
        if self.last_val_loss is None or len(self.last_val_loss) != len(val_loss):
            self.last_val_loss = val_loss.clone()
        previous = torch.where(steps == 0, val_loss, self.last_val_loss)
        self.last_val_loss = val_loss.clone()
        n_slots = column("n_slots")
        over_static = column("metric") - column("static_metric")  # NaN (no twin) becomes 0 below
        derived = torch.stack([val_loss - previous, column("occupied_slots") / n_slots, torch.log(n_slots), over_static], dim=1)
        out = torch.cat([metrics[:, : len(METRIC_FIELDS)], derived], dim=1)
        return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).float()  # train_loss is NaN at step 0


def _pad(tensors: list[torch.Tensor], n_slots: int) -> torch.Tensor:
    """Stack [S_i, ...] tensors into [B, n_slots, ...], zero (False) past each S_i."""
    if all(t.shape[0] == n_slots for t in tensors):
        return torch.stack(tensors)
    out = torch.zeros(len(tensors), n_slots, *tensors[0].shape[1:], dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


def _slot_features(
    values: torch.Tensor, op_mask: torch.Tensor, phage_mask: torch.Tensor, host_params: torch.Tensor, slot_mask: torch.Tensor
) -> torch.Tensor:
    flops = values[..., _FLOPS] * slot_mask
    derived = torch.stack(
        [
            (values[..., _LADDER] > 0).float(),
            values[..., _PARAMS] / host_params[:, None].float(),
            flops / flops.sum(-1, keepdim=True).clamp(min=SHARE_EPS),
            values[..., _EMBARGO] / EMBARGO_STEPS,
        ],
        dim=-1,
    )
    parts = [
        values[..., _RAW_INDEX],
        torch.log1p(values[..., _LOG_INDEX].clamp(min=0)),
        derived,
        op_mask[..., 1:].float(),
        phage_mask[..., None].float(),
    ]
    return torch.nan_to_num(torch.cat(parts, dim=-1) * slot_mask[..., None], nan=0.0, posinf=0.0, neginf=0.0)


def _slot_ids(values: torch.Tensor) -> torch.Tensor:
    ids = values[..., _ID_INDEX].long()
    ids[..., _BLUEPRINT_ID] += 1
    for k, (name, size) in enumerate(ID_VOCAB.items()):
        if ids[..., k].min() < 0 or ids[..., k].max() >= size:
            raise ValueError(f"slot id {name} outside 0..{size - 1}: {ids[..., k].unique().tolist()}")
    return ids


class RunningNorm(nn.Module):
    """Running mean and variance of features (Chan et al. parallel update), saved as buffers so
    the normalisation travels with the policy's `state_dict`."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(width, dtype=torch.float64))
        self.register_buffer("var", torch.ones(width, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold in the rows of x [N, width]."""
        if x.shape[0] == 0:
            return
        x = x.double()
        n, batch_mean, batch_var = x.shape[0], x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        self.mean += delta * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = (x.double() - self.mean) / torch.sqrt(self.var.clamp(min=NORM_VAR_FLOOR))
        return scaled.clamp(-NORM_CLIP, NORM_CLIP).float()
