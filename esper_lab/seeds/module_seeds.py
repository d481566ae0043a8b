"""Module seeds: fixed-capacity blueprints that are germinated whole.

CNN seeds read and return `[B, C, H, W]`; Transformer seeds read and return `[B, T, D]`. Every
seed ends in a zero-initialised layer (`zero_parameter`), so its contribution is exactly zero at
germination and the host is never shocked; that last layer gets gradient at once, the layers
before it from the second step on.

`flops(sample_shape)` counts 2 per multiply-add in convolutions, matmuls and attention, plus the
per-element work of normalisation and softmax; activations and bias adds are left out (a few
percent at most for these shapes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esper_lab.contracts import Blueprint
from esper_lab.seeds.base import Seed, uniform_parameter, zero_parameter

KERNEL = 3  # 3x3: the smallest kernel with a spatial neighbourhood, as in the host's ResNet blocks
CONV_LIGHT_REDUCTION = 2  # conv_light's bottleneck C -> C/2: about a quarter of conv_heavy's cost
ATTENTION_REDUCTION = 2  # q, k, v width C/2 (CNN) so spatial attention stays a mid-weight seed
TRANSFORMER_ATTENTION_HEADS = 2  # brief: 2 heads when the width divides, else 1
MLP_EXPANSION = 2  # d -> 2d -> d: half the usual 4x, so the seed stays lighter than a host MLP
LORA_RANK = 4  # smallest LoRA: several directions for a few hundred parameters at d = 32
LORA_LARGE_RANK = 16  # 4x LORA_RANK: a clearly larger step on the same ladder of costs
LORA_ALPHA = 8.0  # Hu et al. 2021 §4.1: scale the update by alpha / rank; 8 = the rank ladder's max rank
NORM_EPS = 1e-5  # torch's LayerNorm / GroupNorm default
NORM_FLOPS_PER_ELEMENT = 7  # mean 1, centre 1, square and sum 2, divide by std 1, affine 2
SOFTMAX_FLOPS_PER_SCORE = 3  # subtract max, exp, divide by the sum


def _conv_flops(in_ch: int, out_ch: int, kernel: int, positions: int) -> float:
    return 2.0 * in_ch * kernel * kernel * out_ch * positions


def _half(width: int, reduction: int) -> int:
    return max(1, width // reduction)


class NoopSeed(Seed):
    """Occupies a slot and contributes nothing: a free placeholder the policy can buy and prune."""

    blueprint = Blueprint.NOOP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def flops(self, sample_shape: tuple[int, ...]) -> float:
        return 0.0


class _AffineNormSeed(Seed):
    """A parameter-free normalisation followed by a zero-initialised affine: subclasses say how
    they normalise (per channel map on images, per token on sequences)."""

    blueprint = Blueprint.NORM

    def __init__(self, width: int, generator: torch.Generator):
        super().__init__()
        self.gamma = zero_parameter((width,))
        self.beta = zero_parameter((width,))

    def flops(self, sample_shape: tuple[int, ...]) -> float:
        return float(NORM_FLOPS_PER_ELEMENT * torch.Size(sample_shape).numel())


class ChannelNormSeed(_AffineNormSeed):
    """s = gamma * GroupNorm_1(x) + beta with per-channel gamma, beta zero-initialised.

    The normalisation is parameter-free (one group per sample over C, H, W); only the affine
    part learns, so the seed is the cheapest way to re-scale and re-centre a CNN surface.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.group_norm(x, 1, eps=NORM_EPS)
        return self.gamma.view(1, -1, 1, 1) * normed + self.beta.view(1, -1, 1, 1)


class TokenNormSeed(_AffineNormSeed):
    """s = gamma * LayerNorm(x) + beta over the feature axis, affine zero-initialised."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * F.layer_norm(x, x.shape[-1:], eps=NORM_EPS) + self.beta


class DepthwiseSeed(Seed):
    """Depthwise 3x3 conv, then a zero-initialised per-channel scale: spatial filtering per channel."""

    blueprint = Blueprint.DEPTHWISE

    def __init__(self, width: int, generator: torch.Generator):
        super().__init__()
        fan_in = KERNEL * KERNEL
        self.weight = uniform_parameter((width, 1, KERNEL, KERNEL), fan_in, generator)
        self.bias = uniform_parameter((width,), fan_in, generator)
        self.scale = zero_parameter((width,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(x, self.weight, self.bias, padding=KERNEL // 2, groups=x.shape[1])
        return h * self.scale.view(1, -1, 1, 1)

    def flops(self, sample_shape: tuple[int, ...]) -> float:
        channels, height, width = sample_shape
        return _conv_flops(1, channels, KERNEL, height * width)


class ConvLightSeed(Seed):
    """3x3 conv C -> C/2, ReLU, 1x1 conv C/2 -> C (zero-init): a bottlenecked residual branch."""

    blueprint = Blueprint.CONV_LIGHT

    def __init__(self, width: int, generator: torch.Generator):
        super().__init__()
        hidden = _half(width, CONV_LIGHT_REDUCTION)
        fan_in = width * KERNEL * KERNEL
        self.down = uniform_parameter((hidden, width, KERNEL, KERNEL), fan_in, generator)
        self.down_bias = uniform_parameter((hidden,), fan_in, generator)
        self.up = zero_parameter((width, hidden, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.relu(F.conv2d(x, self.down, self.down_bias, padding=KERNEL // 2)), self.up)

    def flops(self, sample_shape: tuple[int, ...]) -> float:
        channels, height, width = sample_shape
        hidden = self.up.shape[1]
        return _conv_flops(channels, hidden, KERNEL, height * width) + _conv_flops(hidden, channels, 1, height * width)


class ConvHeavySeed(Seed):
    """3x3 conv C -> C, ReLU, 3x3 conv C -> C (zero-init): a full ResNet branch, the heaviest seed."""

    blueprint = Blueprint.CONV_HEAVY

    def __init__(self, width: int, generator: torch.Generator):
        super().__init__()
        fan_in = width * KERNEL * KERNEL
        self.conv1 = uniform_parameter((width, width, KERNEL, KERNEL), fan_in, generator)
        self.conv1_bias = uniform_parameter((width,), fan_in, generator)
        self.conv2 = zero_parameter((width, width, KERNEL, KERNEL))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.conv2d(x, self.conv1, self.conv1_bias, padding=KERNEL // 2))
        return F.conv2d(h, self.conv2, padding=KERNEL // 2)

    def flops(self, sample_shape: tuple[int, ...]) -> float:
        channels, height, width = sample_shape
        return 2 * _conv_flops(channels, channels, KERNEL, height * width)


class SpatialAttentionSeed(Seed):
    """Single-head self-attention over the H*W positions: 1x1 q, k, v to C/2, 1x1 out (zero-init).

    Gives a CNN surface global context that no stack of small convs has at this depth.
    """

    blueprint = Blueprint.ATTENTION

    def __init__(self, width: int, generator: torch.Generator):
        super().__init__()
        hidden = _half(width, ATTENTION_REDUCTION)
        self.qkv = uniform_parameter((3 * hidden, width), width, generator)
        self.out = zero_parameter((width, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, H*W, C]
        q, k, v = F.linear(tokens, self.qkv).chunk(3, dim=-1)
        mixed = F.linear(F.scaled_dot_product_attention(q, k, v), self.out)
        return mixed.transpose(1, 2).reshape(batch, channels, height, width)

    def flops(self, sample_shape: tuple[int, ...]) -> float:
        channels, height, width = sample_shape
        positions, hidden = height * width, self.out.shape[1]
        projections = 2.0 * positions * channels * hidden * 4  # q, k, v and out
        scores_and_mix = 2.0 * positions * positions * hidden * 2
        return projections + scores_and_mix + SOFTMAX_FLOPS_PER_SCORE * positions * positions


class CausalAttentionSeed(Seed):
    """Causal multi-head self-attention over tokens with a zero-initialised out projection."""

    blueprint = Blueprint.ATTENTION

    def __init__(self, width: int, generator: torch.Generator):
        super().__init__()
        self.heads = TRANSFORMER_ATTENTION_HEADS if width % TRANSFORMER_ATTENTION_HEADS == 0 else 1
        self.qkv = uniform_parameter((3 * width, width), width, generator)
        self.out = zero_parameter((width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (t.reshape(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in F.linear(x, self.qkv).chunk(3, dim=-1))
        mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.linear(mixed.transpose(1, 2).reshape(batch, length, width), self.out)

    def flops(self, sample_shape: tuple[int, ...]) -> float:
        length, width = sample_shape
        projections = 2.0 * length * width * width * 4  # q, k, v and out
        scores_and_mix = 2.0 * length * length * width * 2  # summed over heads; the causal mask is not skipped
        return projections + scores_and_mix + SOFTMAX_FLOPS_PER_SCORE * self.heads * length * length


class LoraSeed(Seed):
    """s = (alpha / r) * B A x with A: d -> r random and B: r -> d zero (Hu et al. 2021)."""

    blueprint = Blueprint.LORA
    rank = LORA_RANK

    def __init__(self, width: int, generator: torch.Generator):
        super().__init__()
        self.down = uniform_parameter((self.rank, width), width, generator)
        self.up = zero_parameter((width, self.rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.down), self.up) * (LORA_ALPHA / self.rank)

    def flops(self, sample_shape: tuple[int, ...]) -> float:
        length, width = sample_shape
        return 2.0 * length * self.rank * (width + self.up.shape[0])


class LoraLargeSeed(LoraSeed):
    """The same low-rank update at rank 16."""

    blueprint = Blueprint.LORA_LARGE
    rank = LORA_LARGE_RANK


class MlpSeed(Seed):
    """d -> 2d, GELU, 2d -> d (zero-init out): a small extra feed-forward block per token."""

    blueprint = Blueprint.MLP

    def __init__(self, width: int, generator: torch.Generator):
        super().__init__()
        hidden = MLP_EXPANSION * width
        self.up = uniform_parameter((hidden, width), width, generator)
        self.up_bias = uniform_parameter((hidden,), width, generator)
        self.down = zero_parameter((width, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.gelu(F.linear(x, self.up, self.up_bias)), self.down)

    def flops(self, sample_shape: tuple[int, ...]) -> float:
        length, width = sample_shape
        return 2.0 * length * width * self.up.shape[0] * 2
