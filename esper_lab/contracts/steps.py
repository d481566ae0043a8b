"""What one env step produces: the plane report's columns, the step's metrics, the masks, the
reward with its parts, so the telemetry layer can record a step without knowing the env.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from esper_lab.contracts.actions import Event

if TYPE_CHECKING:
    import torch

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


REWARD_PARTS = tuple(f.name for f in fields(RewardParts))


def roi(contribution, params):
    """Return on investment: contribution per `ROI_PARAMS` active params (floats, tensors or polars
    expressions alike; `Store.contributions` spells the same formula in SQL for DuckDB)."""
    return contribution * ROI_PARAMS / params


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
