"""Host networks (Kasmina hosts): CNN and Transformer backbones with ordered injection surfaces.

What every host offers the seed plane (the `Host` protocol below):

- `host_kind` and `injection_specs()`: the surfaces, fixed at construction, in `surface_uid`
  order, which is also the order in which `forward` visits them;
- `forward(x, plane=None)`: at surface i it calls `h = plane(i, h)` on the residual stream, or
  `h = plane(i, h, x_in)` on a projection surface (x_in is the projection's input); with no
  plane the calls are skipped and the host is a plain network;
- `surface_shapes()` / `surface_in_shapes()`: per-sample shapes for analytic seed FLOPs;
- `flops()` and `param_count()` of the bare host.
"""

from __future__ import annotations

from typing import Protocol

import torch

from esper_lab.contracts import HostKind, InjectionSpec
from esper_lab.hosts.cnn import CNNConfig, CNNHost
from esper_lab.hosts.transformer import ProjectionSurface, TransformerConfig, TransformerHost


class Host(Protocol):
    host_kind: HostKind

    def __call__(self, x: torch.Tensor, plane=None) -> torch.Tensor: ...
    def injection_specs(self) -> list[InjectionSpec]: ...
    def surface_shapes(self) -> list[tuple[int, ...]]: ...
    def surface_in_shapes(self) -> list[tuple[int, ...]]: ...
    def flops(self) -> float: ...
    def param_count(self) -> int: ...


__all__ = [
    "CNNConfig",
    "CNNHost",
    "Host",
    "ProjectionSurface",
    "TransformerConfig",
    "TransformerHost",
]
