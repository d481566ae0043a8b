"""The economy (Simic pricing): rent for active parameters, churn for structural change.

    R_total = R_task - W_rent * C_rent - W_churn * C_churn - intervention costs      (seed 003 §5.1)
    C_rent  = min(max_rent, log(1 + sum_occupied(BaseSlotRent + alpha_i * P_seed_i) / P_host))
    BaseSlotRent = 0.0039 * P_host per occupied slot

R_task is `task_scale` times the step's task signal (`EconomyConfig.reward_signal`): the change
in the task metric (accuracy up, or validation loss down), or the summed counterfactual
contribution of the seeds in the forward path. Churn counts the structural edits and internal level changes of the last
`churn_window` steps, plus alpha direction flips; the first edit in a window is free, so steady
work costs nothing and thrash costs more the denser it gets.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from esper_lab.config import EconomyConfig
from esper_lab.contracts import Op, RewardParts

BASE_SLOT_RENT = 0.0039  # x P_host per occupied slot (seed 003 §5.1: about a small residual block)
EDIT_OPS = frozenset(
    {
        Op.GERMINATE,
        Op.PRUNE,
        Op.FOSSILIZE,
        Op.SET_ALPHA_TARGET,
        Op.FOCUS_NEXT,
        Op.FOCUS_PREV,
        Op.BUD_NEXT_SURFACE,
        Op.BUD_PREV_SURFACE,
        Op.CONSOLIDATE_WITH_NEXT,
    }
)
LEVEL_STEPS = {Op.GROW_INTERNAL: 1, Op.SHRINK_INTERNAL: -1, Op.CONSOLIDATE_WITH_NEXT: 1}  # a consolidation also grows a level
LEVEL_OPS = frozenset(LEVEL_STEPS)


def rent_cost(alpha: torch.Tensor, seed_params: torch.Tensor, occupied: torch.Tensor, host_params: int, max_rent: float) -> float:
    """C_rent for one step from per-slot alpha, active seed params and occupancy ([S] tensors)."""
    return _cost(float(_paid(alpha, seed_params, occupied, host_params).sum()), host_params, max_rent)


def slot_rents(alpha: torch.Tensor, seed_params: torch.Tensor, occupied: torch.Tensor, host_params: int, max_rent: float) -> torch.Tensor:
    """[S] each slot's share of C_rent, in proportion to what it pays for (Emrakul's ledger)."""
    paid = _paid(alpha, seed_params, occupied, host_params)
    total = float(paid.sum())
    return paid * (_cost(total, host_params, max_rent) / total) if total > 0 else paid


def _cost(paid: float, host_params: int, max_rent: float) -> float:
    return min(max_rent, math.log1p(paid / host_params))


def _paid(alpha: torch.Tensor, seed_params: torch.Tensor, occupied: torch.Tensor, host_params: int) -> torch.Tensor:
    return occupied.double() * (BASE_SLOT_RENT * host_params + alpha.double() * seed_params.double())


class Ledger:
    """Per-episode bookkeeping of edits, level changes and alpha moves over a sliding window."""

    def __init__(self, config: EconomyConfig):
        self.config = config
        self.edits: deque[int] = deque(maxlen=config.churn_window)
        self.level_changes: deque[int] = deque(maxlen=config.churn_window)
        self.flips: deque[int] = deque(maxlen=config.churn_window)
        self.last_move: torch.Tensor | None = None  # per-slot sign of alpha's last non-zero move
        self.last_alpha: torch.Tensor | None = None

    def record(self, op: Op, vetoed: bool, alpha: torch.Tensor) -> None:
        """Note this step's executed op and the plane's alpha vector after it."""
        executed = not vetoed
        self.edits.append(int(executed and op in EDIT_OPS))
        self.level_changes.append(LEVEL_STEPS.get(op, 0) if executed else 0)
        zeros = torch.zeros_like(alpha)
        move = zeros if self.last_alpha is None else torch.sign(alpha - self.last_alpha)
        previous = zeros if self.last_move is None else self.last_move
        flips = int((move * previous < 0).sum())  # alpha turned around since its last move
        self.last_move = torch.where(move != 0, move, previous)
        self.last_alpha = alpha.clone()
        self.flips.append(flips)

    def churn_cost(self) -> float:
        changes = sum(self.edits) + sum(abs(c) for c in self.level_changes) + sum(self.flips)
        return max(0, changes - 1) / self.config.churn_window

    def level_change_rate(self) -> float:
        """Internal level changes per step over the window (seed 002 anti-thrash metric)."""
        return sum(abs(c) for c in self.level_changes) / max(len(self.level_changes), 1)

    def net_level_change(self) -> int:
        """Signed sum of level changes over the window: near zero with a high rate = oscillation."""
        return sum(self.level_changes)


def reward(config: EconomyConfig, signal: float, rent: float, churn: float, op: Op, vetoed: bool) -> RewardParts:
    """Combine the parts with the weights; the task `signal` is already signed so up is good."""
    task = config.task_scale * signal
    intervention = config.internal_op_cost if (op in LEVEL_OPS and not vetoed) else 0.0
    total = task - config.rent_weight * rent - config.churn_weight * churn - intervention
    return RewardParts(task=task, rent=rent, churn=churn, intervention=intervention, total=total)
