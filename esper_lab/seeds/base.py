"""What every seed is: a module whose output is a contribution added at a surface.

A seed never sees the lifecycle: the slot decides whether and how its contribution enters the
host (straight-through, blended by alpha, or frozen). A seed only has to

- return `s(x)` with the shape of the host output at its surface, starting near zero so that
  germination never shocks the host (one side zero-initialised, LoRA-style);
- count its active parameters and estimate its active FLOPs analytically.

Ladder seeds add fixed-capacity internal levels selected by prefix mask buffers
(seed 000 C0-C2, seed 002 locked decisions): shapes never change, level 0 is the identity by
mask, and levels are buffers so they travel with `state_dict` (snapshots, rank hashes).
"""

from __future__ import annotations

import torch
from torch import nn

from esper_lab.contracts import Blueprint, Subtarget

MAX_INTERNAL_LEVEL = 4  # seed 002 locked decision: internal_level in 0..L with L <= 4


def uniform_parameter(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> nn.Parameter:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch's default Linear/Conv init, drawn from `generator`
    only: germination is deterministic and never advances the global RNG."""
    bound = fan_in**-0.5
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound, generator=generator))


def zero_parameter(shape: tuple[int, ...]) -> nn.Parameter:
    """The zero side of a LoRA-style pair: the seed's contribution starts at exactly zero, while
    its gradient (input activations times output error) is nonzero from the first step."""
    return nn.Parameter(torch.zeros(shape))


class Seed(nn.Module):
    """Base class. Subclasses set `blueprint` and implement `forward` and `flops`."""

    blueprint: Blueprint

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def param_count_active(self) -> int:
        """Parameters in use at the current levels (all of them for a module seed)."""
        return sum(p.numel() for p in self.parameters())

    def flops(self, sample_shape: tuple[int, ...]) -> float:  # pragma: no cover - abstract
        """Analytic forward FLOPs for one sample of `sample_shape` ((C, H, W) or (T, D))."""
        raise NotImplementedError


class LadderSeed(Seed):
    """A seed with K subtargets, each with a prefix ladder of levels 0..max_level.

    `levels` and `focus` are buffers. Subclasses implement `_apply_levels()` to refresh their
    mask buffers from `levels`, and the active counts from the masks.
    """

    subtargets: tuple[Subtarget, ...] = (Subtarget.WHOLE,)

    def __init__(self, max_level: int, n_subtargets: int = 1, start_level: int = 1):
        super().__init__()
        if not 1 <= max_level <= MAX_INTERNAL_LEVEL:
            raise ValueError(f"max_level={max_level} must be in 1..{MAX_INTERNAL_LEVEL}")
        self.max_level = max_level
        self.register_buffer("levels", torch.full((n_subtargets,), start_level, dtype=torch.long))
        self.register_buffer("focus", torch.zeros((), dtype=torch.long))

    @property
    def n_subtargets(self) -> int:
        return self.levels.numel()

    def level(self, k: int | None = None) -> int:
        return int(self.levels[self.focus if k is None else k])

    def set_level(self, level: int, k: int | None = None) -> None:
        """Set subtarget k's level (the focused one by default); clamped ops are the plane's job."""
        if not 0 <= level <= self.max_level:
            raise ValueError(f"level={level} outside 0..{self.max_level}")
        self.levels[self.focus if k is None else k] = level
        self._apply_levels()

    def shift_focus(self, step: int) -> None:
        self.focus.fill_((int(self.focus) + step) % self.n_subtargets)

    def _apply_levels(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
