"""Transformer host: a small decoder-only character LM with surfaces on the residual stream
(a0, a1) or on the four projections of each layer (a2).

Surfaces are explicit calls in `forward` (no hooks). A residual surface does `h = plane(i, h)`;
a projection surface is a `ProjectionSurface` wrapper built at init (seed 000 Phase 4: structured
wrappers, no graph surgery) that does `h = plane(i, linear(x), x)`, so a seed there can read the
projection's input and add to its output. Every density builds the same modules, so parameter
names and counts do not depend on where the surfaces are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from esper_lab.contracts import HostKind, InjectionSpec, Role, Site, SurfaceDensity

MLP_RATIO = 4  # MLP hidden width = 4 * d_model, as in GPT-2
INIT_STD = 0.02  # GPT-2 initialisation of linear and embedding weights

# Surfaces per layer as (site, role), in forward order (= surface_uid order).
_SURFACES = {
    SurfaceDensity.A0: ((Site.BLOCK_END, Role.NONE),),
    SurfaceDensity.A1: ((Site.POST_ATTN, Role.NONE), (Site.POST_MLP, Role.NONE)),
    SurfaceDensity.A2: (
        (Site.PROJECTION, Role.ATTN_QKV),
        (Site.PROJECTION, Role.ATTN_O),
        (Site.PROJECTION, Role.MLP_UP),
        (Site.PROJECTION, Role.MLP_DOWN),
    ),
}


def _require_positive_int(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}={value!r} must be a positive int")


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int
    n_layer: int = 2
    d_model: int = 32
    n_head: int = 2
    context: int = 32
    density: SurfaceDensity = SurfaceDensity.A0

    def __post_init__(self) -> None:
        for field in ("vocab_size", "n_layer", "d_model", "n_head", "context"):
            _require_positive_int(field, getattr(self, field))
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        allowed = [d.value for d in _SURFACES]
        if self.density not in allowed:
            raise ValueError(f"density={self.density!r} is not valid for the Transformer host; allowed: {allowed}")
        object.__setattr__(self, "density", SurfaceDensity(self.density))


class ProjectionSurface(nn.Module):
    """A linear layer with an optional surface on its output; `surface` is None when not exposed."""

    def __init__(self, in_width: int, out_width: int, surface: int | None):
        super().__init__()
        self.linear = nn.Linear(in_width, out_width)
        self.surface = surface

    def forward(self, x: torch.Tensor, plane=None) -> torch.Tensor:
        h = self.linear(x)
        if plane is None or self.surface is None:
            return h
        return plane(self.surface, h, x)


class TransformerLayer(nn.Module):
    """Pre-LN block: x + attn(ln(x)), then x + mlp(ln(x)), with a surface call at each site.

    `surfaces` maps this layer's (site, role) pairs to their surface index; absent ones are skipped.
    """

    def __init__(self, config: TransformerConfig, surfaces: dict[tuple[Site, Role], int]):
        super().__init__()
        d, hidden = config.d_model, MLP_RATIO * config.d_model
        self.n_head = config.n_head
        self.ln1 = nn.LayerNorm(d)
        self.qkv = ProjectionSurface(d, 3 * d, surfaces.get((Site.PROJECTION, Role.ATTN_QKV)))
        self.o = ProjectionSurface(d, d, surfaces.get((Site.PROJECTION, Role.ATTN_O)))
        self.ln2 = nn.LayerNorm(d)
        self.up = ProjectionSurface(d, hidden, surfaces.get((Site.PROJECTION, Role.MLP_UP)))
        self.down = ProjectionSurface(hidden, d, surfaces.get((Site.PROJECTION, Role.MLP_DOWN)))
        self.attn_surface = surfaces.get((Site.POST_ATTN, Role.NONE))
        # POST_MLP (a1) and BLOCK_END (a0) are the same place under different names.
        self.mlp_surface = surfaces.get((Site.POST_MLP, Role.NONE), surfaces.get((Site.BLOCK_END, Role.NONE)))

    def forward(self, x: torch.Tensor, plane=None) -> torch.Tensor:
        batch, length, d = x.shape
        qkv = self.qkv(self.ln1(x), plane)
        # [B, T, 3, H, Dh] -> three [B, H, T, Dh]
        q, k, v = qkv.view(batch, length, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(y.transpose(1, 2).reshape(batch, length, d), plane)
        if plane is not None and self.attn_surface is not None:
            x = plane(self.attn_surface, x)
        x = x + self.down(F.gelu(self.up(self.ln2(x), plane)), plane)
        if plane is not None and self.mlp_surface is not None:
            x = plane(self.mlp_surface, x)
        return x


class TransformerHost(nn.Module):
    """Token + learned position embeddings, n_layer pre-LN layers, final LayerNorm, vocab head.

    forward(idx [B, T] long, plane=None) -> logits [B, T, vocab_size], with T <= context.
    """

    host_kind = HostKind.TRANSFORMER

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        d, hidden, length = config.d_model, MLP_RATIO * config.d_model, config.context
        self.tok = nn.Embedding(config.vocab_size, d)
        self.pos = nn.Embedding(length, d)
        # (output width, input width) of the host tensors at each (site, role).
        widths = {
            (Site.BLOCK_END, Role.NONE): (d, d),
            (Site.POST_ATTN, Role.NONE): (d, d),
            (Site.POST_MLP, Role.NONE): (d, d),
            (Site.PROJECTION, Role.ATTN_QKV): (3 * d, d),
            (Site.PROJECTION, Role.ATTN_O): (d, d),
            (Site.PROJECTION, Role.MLP_UP): (hidden, d),
            (Site.PROJECTION, Role.MLP_DOWN): (d, hidden),
        }
        per_layer = _SURFACES[config.density]
        specs: list[InjectionSpec] = []
        layers = []
        for depth in range(config.n_layer):
            surfaces = {key: len(specs) + k for k, key in enumerate(per_layer)}
            layers.append(TransformerLayer(config, surfaces))
            for site, role in per_layer:
                out_width, in_width = widths[site, role]
                specs.append(InjectionSpec.build(HostKind.TRANSFORMER, depth, config.n_layer, site, out_width, role, in_width))
        self.layers = nn.ModuleList(layers)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.vocab_size, bias=False)
        self._specs = tuple(specs)
        self._shapes = tuple((length, spec.width) for spec in specs)
        self._in_shapes = tuple((length, spec.in_width) for spec in specs)
        self.apply(_init_weights)

    def forward(self, idx: torch.Tensor, plane=None) -> torch.Tensor:
        length = idx.shape[1]
        if length > self.config.context:
            raise ValueError(f"sequence length {length} exceeds context={self.config.context}")
        x = self.tok(idx) + self.pos.weight[:length]
        for layer in self.layers:
            x = layer(x, plane)
        return self.head(self.ln_f(x))

    def injection_specs(self) -> list[InjectionSpec]:
        return list(self._specs)

    def surface_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample (T, width) of the host output at each surface, with T = context."""
        return list(self._shapes)

    def surface_in_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample (T, in_width) of a seed's input: the projection's input on a2 surfaces."""
        return list(self._in_shapes)

    def flops(self) -> float:
        """Forward FLOPs per sample of `context` tokens (2 per multiply-add).

        Counts the four projections, both attention matmuls over the full T x T score matrix
        (what SDPA computes; the causal mask does not halve it) and the vocab head.
        """
        c = self.config
        d, length = c.d_model, c.context
        projections = 2.0 * length * d * d * (3 + 1 + 2 * MLP_RATIO)
        attention = 2.0 * 2 * length * length * d  # Q K^T and A V
        head = 2.0 * length * d * c.vocab_size
        return c.n_layer * (projections + attention) + head

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
