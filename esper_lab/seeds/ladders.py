"""Ladder seeds: capacity allocated at maximum once, a prefix mask selects the active part.

Every subtarget k owns `units_per_level * max_level` hidden units (channels or ranks); row k of
the `mask` buffer has its first `levels[k] * units_per_level` entries set to 1. The mask sits
between the random first layer and the zero-initialised last layer, so

- level 0 is an exactly zero contribution whatever the parameters hold (seed 002);
- a level change never changes a parameter shape and never touches a parameter value;
- `param_count_active()` and `flops()` count only active units, so both strictly increase with
  the level of any subtarget. They are what a compute-scaling implementation would spend: the
  masked forward still computes the full capacity (seed 002 defers compute scaling).

Single ladders (seed 000 C0/C1) have one subtarget, WHOLE; multi-ladders (seed 000 Phase 2)
have several parallel branches, one per subtarget, whose contributions are summed. GROW/SHRINK
act on the focused subtarget through `LadderSeed.set_level(level)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esper_lab.contracts import Blueprint, Role, Subtarget
from esper_lab.seeds.base import MAX_INTERNAL_LEVEL, LadderSeed, uniform_parameter, zero_parameter
from esper_lab.seeds.module_seeds import KERNEL, LORA_ALPHA

START_LEVEL = 1  # a germinated ladder starts with one active group: a signal, at the smallest rent
CHANNEL_GROUP_DIVISOR = 4  # G = C/4 channels per level: at L = 4 the hidden width equals C
MULTI_CHANNEL_GROUP_DIVISOR = 8  # two branches of C/8 per level: the same full capacity as one ladder
MULTI_DILATIONS = (1, 2)  # CONV1_GROUPS sees 3x3, CONV2_GROUPS a dilated 5x5 field at the same cost
# Ranks per level, keyed by the surface role (seed 000 Phase 4: schedules live in config, smaller
# for attention projections, larger for MLP ones). Role.NONE is the residual-stream rank ladder:
# seed 000 Phase 0 suggests 4 levels x 2 ranks.
RANKS_PER_LEVEL: dict[Role, int] = {
    Role.NONE: 2,
    Role.ATTN_QKV: 1,
    Role.ATTN_O: 1,
    Role.MLP_UP: 2,
    Role.MLP_DOWN: 2,
}
MULTI_RANKS_PER_LEVEL = 2  # each multi-ladder branch grows like the single rank ladder
PREFIX_MEAN_FLOPS_PER_ELEMENT = 2  # running sum and divide by the position count


class PrefixLadder(LadderSeed):
    """Shared mask machinery: `mask[k]` is the prefix of subtarget k's active units."""

    def __init__(self, units_per_level: int, max_level: int, start_level: int):
        super().__init__(max_level, len(self.subtargets), start_level)
        self.units_per_level = units_per_level
        self.register_buffer("mask", torch.zeros(len(self.subtargets), units_per_level * max_level))
        self._apply_levels()

    @property
    def capacity(self) -> int:
        """Hidden units per subtarget at the maximum level."""
        return self.mask.shape[1]

    def active_units(self) -> list[int]:
        return [int(level) * self.units_per_level for level in self.levels]

    def _apply_levels(self) -> None:
        units = torch.arange(self.capacity, device=self.mask.device)
        self.mask.copy_(units < self.levels[:, None] * self.units_per_level)


class ConvChannelLadderSeed(PrefixLadder):
    """s = up(relu(down(x)) * mask): 3x3 conv C -> G*L hidden channels, 1x1 conv back to C (zero-init).

    Each level activates G = C/4 more hidden channels (seed 000 Phase 1 `conv_channel_ladder`).
    """

    blueprint = Blueprint.CONV_CHANNEL_LADDER
    subtargets = (Subtarget.WHOLE,)
    dilations = (1,)
    group_divisor = CHANNEL_GROUP_DIVISOR

    def __init__(
        self,
        width: int,
        generator: torch.Generator,
        max_level: int = MAX_INTERNAL_LEVEL,
        start_level: int = START_LEVEL,
    ):
        super().__init__(max(1, width // self.group_divisor), max_level, start_level)
        branches, hidden, fan_in = len(self.subtargets), self.capacity, width * KERNEL * KERNEL
        self.down = uniform_parameter((branches, hidden, width, KERNEL, KERNEL), fan_in, generator)
        self.down_bias = uniform_parameter((branches, hidden), fan_in, generator)
        self.up = zero_parameter((branches, width, hidden, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for k, dilation in enumerate(self.dilations):
            h = F.conv2d(x, self.down[k], self.down_bias[k], padding=dilation * (KERNEL // 2), dilation=dilation)
            out = out + F.conv2d(F.relu(h) * self.mask[k].view(1, -1, 1, 1), self.up[k])
        return out

    def param_count_active(self) -> int:
        width = self.up.shape[1]
        per_unit = width * KERNEL * KERNEL + 1 + width  # down filter, its bias, up column
        return sum(self.active_units()) * per_unit

    def flops(self, sample_shape: tuple[int, ...]) -> float:
        channels, height, width = sample_shape
        per_unit = 2.0 * (channels * KERNEL * KERNEL + channels) * height * width
        return sum(self.active_units()) * per_unit


class ConvMultiLadderSeed(ConvChannelLadderSeed):
    """Two parallel channel ladders with different receptive fields, contributions summed.

    CONV1_GROUPS is a plain 3x3 branch (local texture), CONV2_GROUPS a dilation-2 3x3 branch
    (wider context at the same cost); each grows by C/8 channels per level.
    """

    blueprint = Blueprint.CONV_MULTI_LADDER
    subtargets = (Subtarget.CONV1_GROUPS, Subtarget.CONV2_GROUPS)
    dilations = MULTI_DILATIONS
    group_divisor = MULTI_CHANNEL_GROUP_DIVISOR


class LoraRankLadderSeed(PrefixLadder):
    """s = B((A x) * mask) * scale with A: in -> R random, B: R -> out zero, R = ranks * max_level.

    `scale = LORA_ALPHA / R` uses the MAXIMUM rank, a constant: a level change never rescales
    the already-active ranks, it only adds (or removes) rank groups. Ranks per level come from
    `RANKS_PER_LEVEL[role]`; the same class serves residual surfaces (in = out) and, as
    `LoraProjLadderSeed`, projection surfaces (in != out).
    """

    blueprint = Blueprint.LORA_RANK_LADDER
    subtargets = (Subtarget.WHOLE,)

    def __init__(
        self,
        in_width: int,
        out_width: int,
        ranks_per_level: int,
        generator: torch.Generator,
        max_level: int = MAX_INTERNAL_LEVEL,
        start_level: int = START_LEVEL,
    ):
        super().__init__(ranks_per_level, max_level, start_level)
        branches, rank = len(self.subtargets), self.capacity
        self.down = uniform_parameter((branches, rank, in_width), in_width, generator)
        self.up = zero_parameter((branches, out_width, rank))
        self.scale = LORA_ALPHA / rank

    def _branch(self, k: int, x: torch.Tensor, nonlinear: bool = False) -> torch.Tensor:
        h = F.linear(x, self.down[k])
        h = F.gelu(h) if nonlinear else h
        return F.linear(h * self.mask[k], self.up[k]) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._branch(0, x)

    def param_count_active(self) -> int:
        _, out_width, _ = self.up.shape
        return sum(self.active_units()) * (self.down.shape[2] + out_width)

    def flops(self, sample_shape: tuple[int, ...]) -> float:
        length, in_width = sample_shape
        return 2.0 * length * sum(self.active_units()) * (in_width + self.up.shape[1])


class LoraProjLadderSeed(LoraRankLadderSeed):
    """The rank ladder on a projection surface: reads the projection's input (in_width) and adds
    to its output (width), with the role's ranks per level."""

    blueprint = Blueprint.LORA_PROJ_LADDER

    def weight_delta(self) -> torch.Tensor:
        """The [out, in] matrix this seed's contribution is (s(x) = x @ delta.T): export merges it
        into the projection's weight, since the seed is a linear map of the projection's input."""
        return self.up[0] @ (self.mask[0, :, None] * self.down[0]) * self.scale


class LoraMultiLadderSeed(LoraRankLadderSeed):
    """Four parallel low-rank branches on a residual surface, each with its own rank ladder.

    Honest about what they are: the subtargets borrow the projection roles' names, not their
    maths. ATTN_QKV and ATTN_O are linear low-rank maps of the causal prefix mean of x over time
    (context mixing, the part of attention a cheap seed can have); MLP_UP and MLP_DOWN are
    per-token low-rank maps with a GELU between A and B. The two branches of a pair have the same
    form and differ only in parameters: separate capacity pools the policy can grow one at a time.
    """

    blueprint = Blueprint.LORA_MULTI_LADDER
    subtargets = (Subtarget.ATTN_QKV, Subtarget.ATTN_O, Subtarget.MLP_UP, Subtarget.MLP_DOWN)
    context_subtargets = frozenset({Subtarget.ATTN_QKV, Subtarget.ATTN_O})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
        context = x.cumsum(dim=1) / positions
        out = torch.zeros_like(x)
        for k, subtarget in enumerate(self.subtargets):
            reads_context = subtarget in self.context_subtargets
            out = out + self._branch(k, context if reads_context else x, nonlinear=not reads_context)
        return out

    def flops(self, sample_shape: tuple[int, ...]) -> float:
        length, width = sample_shape
        units = zip(self.active_units(), self.subtargets, strict=True)
        context = any(active and subtarget in self.context_subtargets for active, subtarget in units)
        return super().flops(sample_shape) + (PREFIX_MEAN_FLOPS_PER_ELEMENT * length * width if context else 0.0)
