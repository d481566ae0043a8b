"""CNN host: a small residual network whose surfaces sit at fixed places in each block.

Surfaces are explicit calls in `forward` (no hooks): at surface i the block does
`h = plane(i, h)`, and skips the call when there is no plane, so a bare host is a plain ResNet.
Density a0 puts one surface at each block end; a1 splits each block into the three sites of
seed 000 Phase 1 (after conv1, after conv2, after the residual add).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from esper_lab.contracts import HostKind, InjectionSpec, Site, SurfaceDensity

# Smallest feature map a block may downsample to: a 3x3 conv on a 1x1 map sees only padding.
MIN_SPATIAL = 2

# Sites per block, in forward order (= Site enum order, so specs come out in surface_uid order).
_SITES = {
    SurfaceDensity.A0: (Site.BLOCK_END,),
    SurfaceDensity.A1: (Site.POST_CONV1, Site.POST_CONV2, Site.POST_RESID),
}


def _require_positive_int(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}={value!r} must be a positive int")


@dataclass(frozen=True)
class CNNConfig:
    """One residual block per entry of `widths`.

    A block downsamples (stride 2) when its width grows and the halved map is still at least
    MIN_SPATIAL wide, so (8, 16) on 8x8 digits runs blocks at 8x8 then 4x4. The defaults are
    deliberately tiny: the bare host must leave accuracy headroom for seeds to win back.
    """

    in_channels: int = 1
    image_size: int = 8
    num_classes: int = 10
    widths: tuple[int, ...] = (8, 16)
    density: SurfaceDensity = SurfaceDensity.A0
    # NHWC memory layout for weights and activations: on CPU it trains the small CIFAR host about
    # 2x faster (3x32x32 stem: 15 against 51 ms a batch), on 8x8 digits it is a wash (benchmarks/)
    channels_last: bool = False

    def __post_init__(self) -> None:
        _require_positive_int("in_channels", self.in_channels)
        _require_positive_int("image_size", self.image_size)
        _require_positive_int("num_classes", self.num_classes)
        widths = tuple(self.widths) if isinstance(self.widths, (tuple, list)) else ()
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths={self.widths!r} must be a non-empty tuple of positive ints")
        object.__setattr__(self, "widths", widths)  # lists arrive from JSON configs
        allowed = [d.value for d in _SITES]
        if self.density not in allowed:
            raise ValueError(f"density={self.density!r} is not valid for the CNN host; allowed: {allowed}")
        object.__setattr__(self, "density", SurfaceDensity(self.density))
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last={self.channels_last!r} must be true or false")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def _conv(in_width: int, out_width: int, kernel: int, stride: int) -> nn.Conv2d:
    """No normalisation layers, on purpose: BatchNorm's running statistics lag behind a blending
    seed that shifts the stream every epoch (it cost a seeded host up to 30 accuracy points at
    eval), and GroupNorm made the tiny host train far slower. Without them train and eval
    forwards agree and a rollback snapshot is just the parameters."""
    return nn.Conv2d(in_width, out_width, kernel, stride=stride, padding=kernel // 2)


def _conv_flops(conv: nn.Conv2d, out_size: int) -> float:
    kh, kw = conv.kernel_size
    macs = conv.in_channels // conv.groups * conv.out_channels * kh * kw * out_size * out_size
    return 2.0 * macs


class ResidualBlock(nn.Module):
    """conv-ReLU, conv, add shortcut, ReLU, with a surface call at each of its sites.

    `surfaces` maps this block's sites to their surface index; sites absent from it are skipped.
    """

    def __init__(self, in_width: int, out_width: int, stride: int, out_size: int, surfaces: dict[Site, int]):
        super().__init__()
        self.conv1 = _conv(in_width, out_width, 3, stride)
        self.conv2 = _conv(out_width, out_width, 3, 1)
        self.shortcut = nn.Identity()
        if in_width != out_width or stride != 1:
            self.shortcut = _conv(in_width, out_width, 1, stride)
        self.out_size = out_size
        self.conv1_surface = surfaces.get(Site.POST_CONV1)
        self.conv2_surface = surfaces.get(Site.POST_CONV2)
        # POST_RESID (a1) and BLOCK_END (a0) are the same place under different names.
        self.end_surface = surfaces.get(Site.POST_RESID, surfaces.get(Site.BLOCK_END))

    def forward(self, x: torch.Tensor, plane=None) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        if plane is not None and self.conv1_surface is not None:
            h = plane(self.conv1_surface, h)
        h = self.conv2(h)
        if plane is not None and self.conv2_surface is not None:
            h = plane(self.conv2_surface, h)
        h = F.relu(h + self.shortcut(x))
        if plane is not None and self.end_surface is not None:
            h = plane(self.end_surface, h)
        return h

    def flops(self) -> float:
        total = _conv_flops(self.conv1, self.out_size) + _conv_flops(self.conv2, self.out_size)
        if isinstance(self.shortcut, nn.Conv2d):
            total += _conv_flops(self.shortcut, self.out_size)
        return total


class CNNHost(nn.Module):
    """Stem conv, residual blocks, global average pool, linear classifier.

    forward(x [B, C, H, W], plane=None) -> logits [B, num_classes].
    """

    host_kind = HostKind.CNN

    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        self.stem = nn.Sequential(_conv(config.in_channels, config.widths[0], 3, 1), nn.ReLU())
        sites = _SITES[config.density]
        n_blocks = len(config.widths)
        specs: list[InjectionSpec] = []
        shapes: list[tuple[int, ...]] = []
        blocks = []
        in_width, size = config.widths[0], config.image_size
        for depth, width in enumerate(config.widths):
            stride = 2 if width > in_width and (size + 1) // 2 >= MIN_SPATIAL else 1
            size = (size + 1) // 2 if stride == 2 else size
            surfaces = {site: len(specs) + k for k, site in enumerate(sites)}
            blocks.append(ResidualBlock(in_width, width, stride, size, surfaces))
            specs.extend(InjectionSpec.build(HostKind.CNN, depth, n_blocks, site, width) for site in sites)
            shapes.extend((width, size, size) for _ in sites)
            in_width = width
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(config.widths[-1], config.num_classes)
        self._specs = tuple(specs)
        self._shapes = tuple(shapes)
        if config.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, plane=None) -> torch.Tensor:
        h = self.stem(x.contiguous(memory_format=self.config.memory_format))
        for block in self.blocks:
            h = block(h, plane)
        return self.classifier(h.mean(dim=(2, 3)))

    def injection_specs(self) -> list[InjectionSpec]:
        return list(self._specs)

    def surface_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample (C, H, W) of the host output at each surface, at `config.image_size`."""
        return list(self._shapes)

    def surface_in_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample shape of a seed's input: the same as its output on every CNN surface."""
        return list(self._shapes)

    def flops(self) -> float:
        """Forward FLOPs per sample at `config.image_size` (2 per multiply-add; convs and linear)."""
        stem = _conv_flops(self.stem[0], self.config.image_size)
        head = 2.0 * self.classifier.in_features * self.classifier.out_features
        return stem + sum(block.flops() for block in self.blocks) + head

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
