"""Surface identity: where on a host a slot sits, as one stable integer, and the surface's shapes."""

from __future__ import annotations

from dataclasses import dataclass

from esper_lab.contracts.names import HostKind, Role, Site

# --- surface identity -------------------------------------------------------------------------
# surface_uid = host_kind << 20 | depth_idx << 8 | site << 4 | role  (24 bits, fits int32).
# Integer order is host kind, then depth, then site, then role: the slot order seed 000 asks for.
_ROLE_BITS, _SITE_BITS, _DEPTH_BITS, _KIND_BITS = 4, 4, 12, 4
_SITE_SHIFT = _ROLE_BITS
_DEPTH_SHIFT = _SITE_SHIFT + _SITE_BITS
_KIND_SHIFT = _DEPTH_SHIFT + _DEPTH_BITS


def pack_surface_uid(host_kind: HostKind, depth_idx: int, site: Site, role: Role = Role.NONE) -> int:
    """Stable surface identity from fixed bit fields (never Python's `hash()`)."""
    for name, value, bits in (
        ("host_kind", int(host_kind), _KIND_BITS),
        ("depth_idx", depth_idx, _DEPTH_BITS),
        ("site", int(site), _SITE_BITS),
        ("role", int(role), _ROLE_BITS),
    ):
        if not 0 <= value < (1 << bits):
            raise ValueError(f"{name}={value} does not fit in {bits} bits (0..{(1 << bits) - 1})")
    return int(host_kind) << _KIND_SHIFT | depth_idx << _DEPTH_SHIFT | int(site) << _SITE_SHIFT | int(role)


def unpack_surface_uid(uid: int) -> tuple[HostKind, int, Site, Role]:
    """Inverse of `pack_surface_uid`."""
    return (
        HostKind(uid >> _KIND_SHIFT & ((1 << _KIND_BITS) - 1)),
        uid >> _DEPTH_SHIFT & ((1 << _DEPTH_BITS) - 1),
        Site(uid >> _SITE_SHIFT & ((1 << _SITE_BITS) - 1)),
        Role(uid & ((1 << _ROLE_BITS) - 1)),
    )


@dataclass(frozen=True)
class InjectionSpec:
    """One surface of a host: where it is and what shape flows through it.

    `width` is the channel count (CNN) or feature width (Transformer) of the host output at the
    surface; `in_width` is the width of the seed's input, which differs only on projection
    surfaces (a seed there reads the projection's input and adds to its output).
    """

    surface_uid: int
    host_kind: HostKind
    depth_idx: int
    depth_norm: float
    site: Site
    role: Role
    width: int
    in_width: int

    @classmethod
    def build(
        cls,
        host_kind: HostKind,
        depth_idx: int,
        n_depths: int,
        site: Site,
        width: int,
        role: Role = Role.NONE,
        in_width: int | None = None,
    ) -> InjectionSpec:
        return cls(
            surface_uid=pack_surface_uid(host_kind, depth_idx, site, role),
            host_kind=host_kind,
            depth_idx=depth_idx,
            depth_norm=depth_idx / max(n_depths - 1, 1),
            site=site,
            role=role,
            width=width,
            in_width=width if in_width is None else in_width,
        )
