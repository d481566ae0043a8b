"""Hosts: surface count and order, the forward's surface calls, shapes, FLOPs and config checks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from esper_lab.contracts import HostKind, Role, Site, SurfaceDensity, unpack_surface_uid
from esper_lab.hosts import CNNConfig, CNNHost, TransformerConfig, TransformerHost

VOCAB = 11  # any small vocabulary


class RecordingPlane:
    """Plane stub: records each surface call and returns the host tensor unchanged."""

    def __init__(self):
        self.calls: list[tuple[int, tuple[int, ...], tuple[int, ...] | None]] = []

    def __call__(self, i, h, x_in=None):
        self.calls.append((i, tuple(h.shape[1:]), None if x_in is None else tuple(x_in.shape[1:])))
        return h


def _cnn(density: str, **kwargs) -> tuple[CNNHost, torch.Tensor]:
    config = CNNConfig(density=density, **kwargs)
    x = torch.randn(3, config.in_channels, config.image_size, config.image_size)
    return CNNHost(config), x


def _transformer(density: str, **kwargs) -> tuple[TransformerHost, torch.Tensor]:
    config = TransformerConfig(vocab_size=VOCAB, density=density, **kwargs)
    return TransformerHost(config), torch.randint(0, VOCAB, (3, config.context))


HOSTS = [
    pytest.param(_cnn, "a0", 2, id="cnn-a0"),
    pytest.param(_cnn, "a1", 6, id="cnn-a1"),
    pytest.param(_transformer, "a0", 2, id="transformer-a0"),
    pytest.param(_transformer, "a1", 4, id="transformer-a1"),
    pytest.param(_transformer, "a2", 8, id="transformer-a2"),
]


@pytest.mark.parametrize(("make", "density", "n_surfaces"), HOSTS)
def test_specs_are_counted_unique_and_in_uid_order(make, density, n_surfaces):
    host, _ = make(density)
    specs = host.injection_specs()
    uids = [spec.surface_uid for spec in specs]
    assert len(specs) == n_surfaces == len(host.surface_shapes()) == len(host.surface_in_shapes())
    assert all(a < b for a, b in zip(uids, uids[1:]))
    for spec in specs:
        assert spec.host_kind == host.host_kind
        assert unpack_surface_uid(spec.surface_uid) == (spec.host_kind, spec.depth_idx, spec.site, spec.role)


@pytest.mark.parametrize(("make", "density", "n_surfaces"), HOSTS)
def test_forward_visits_surfaces_in_spec_order_with_declared_shapes(make, density, n_surfaces):
    host, x = make(density)
    plane = RecordingPlane()
    host(x, plane)
    specs = host.injection_specs()
    assert [i for i, _, _ in plane.calls] == list(range(n_surfaces))
    assert [shape for _, shape, _ in plane.calls] == host.surface_shapes()
    for (_, out_shape, in_shape), spec, declared_in in zip(plane.calls, specs, host.surface_in_shapes()):
        assert out_shape[0 if host.host_kind == HostKind.CNN else -1] == spec.width
        if spec.role == Role.NONE:
            assert in_shape is None and declared_in == out_shape
        else:
            assert in_shape == declared_in and in_shape[-1] == spec.in_width


@pytest.mark.parametrize(("make", "density", "n_surfaces"), HOSTS)
def test_identity_plane_is_bit_identical_to_bare_host(make, density, n_surfaces):
    host, x = make(density)
    host.eval()
    with torch.no_grad():
        assert torch.equal(host(x), host(x, RecordingPlane()))


def test_cnn_sites_and_depths():
    host, _ = _cnn("a1", widths=(8, 8, 16))
    pairs = [(spec.depth_idx, spec.site) for spec in host.injection_specs()]
    sites = (Site.POST_CONV1, Site.POST_CONV2, Site.POST_RESID)
    assert pairs == [(b, site) for b in range(3) for site in sites]
    a0 = CNNHost(CNNConfig(widths=(8, 8, 16))).injection_specs()
    assert [(s.depth_idx, s.site, s.depth_norm) for s in a0] == [
        (0, Site.BLOCK_END, 0.0),
        (1, Site.BLOCK_END, 0.5),
        (2, Site.BLOCK_END, 1.0),
    ]


def test_cnn_downsamples_on_width_growth_but_keeps_two_by_two():
    host, x = _cnn("a0", widths=(4, 8, 16, 32))
    assert host.surface_shapes() == [(4, 8, 8), (8, 4, 4), (16, 2, 2), (32, 2, 2)]
    assert host(x).shape == (3, 10)


def test_transformer_a2_roles_and_widths():
    host, _ = _transformer("a2", n_layer=3, d_model=16, n_head=4)
    specs = host.injection_specs()
    roles = (Role.ATTN_QKV, Role.ATTN_O, Role.MLP_UP, Role.MLP_DOWN)
    widths = {Role.ATTN_QKV: (48, 16), Role.ATTN_O: (16, 16), Role.MLP_UP: (64, 16), Role.MLP_DOWN: (16, 64)}
    assert [(s.depth_idx, s.site, s.role) for s in specs] == [(layer, Site.PROJECTION, role) for layer in range(3) for role in roles]
    assert all((s.width, s.in_width) == widths[s.role] for s in specs)


def test_transformer_sites_a0_a1():
    a0 = _transformer("a0")[0].injection_specs()
    a1 = _transformer("a1")[0].injection_specs()
    assert [(s.depth_idx, s.site) for s in a0] == [(0, Site.BLOCK_END), (1, Site.BLOCK_END)]
    assert [(s.depth_idx, s.site) for s in a1] == [(0, Site.POST_ATTN), (0, Site.POST_MLP), (1, Site.POST_ATTN), (1, Site.POST_MLP)]


def test_output_shapes_and_shorter_sequences():
    cnn, x = _cnn("a0")
    assert cnn(x).shape == (3, 10)
    lm = TransformerHost(TransformerConfig(vocab_size=VOCAB, context=16))
    assert lm(torch.randint(0, VOCAB, (2, 16))).shape == (2, 16, VOCAB)
    assert lm(torch.randint(0, VOCAB, (2, 5))).shape == (2, 5, VOCAB)
    with pytest.raises(ValueError, match="context"):
        lm(torch.randint(0, VOCAB, (2, 17)))


def test_transformer_is_causal():
    host, idx = _transformer("a1")
    host.eval()
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    with torch.no_grad():
        assert torch.equal(host(idx)[:, :-1], host(changed)[:, :-1])


def test_cifar_shaped_cnn_runs():
    host, x = _cnn("a1", in_channels=3, image_size=32, widths=(16, 32, 64))
    plane = RecordingPlane()
    assert host(x, plane).shape == (3, 10)
    assert [shape for _, shape, _ in plane.calls] == host.surface_shapes()
    assert host.surface_shapes()[-1] == (64, 8, 8)


@pytest.mark.parametrize(("make", "density", "n_surfaces"), HOSTS)
def test_flops_and_param_count(make, density, n_surfaces):
    host, x = make(density)
    assert host.param_count() == sum(p.numel() for p in host.parameters()) > 0
    with FlopCounterMode(display=False) as counter:
        host(x[:1])
    counted = counter.get_total_flops()
    if host.host_kind == HostKind.TRANSFORMER:
        # The CPU flop counter does not see SDPA: add Q K^T and A V over the full T x T scores.
        c = host.config
        counted += c.n_layer * 2 * 2 * c.context * c.context * c.d_model
    assert host.flops() == pytest.approx(counted) and host.flops() > 0


def test_param_count_does_not_depend_on_density():
    assert len({_transformer(d)[0].param_count() for d in ("a0", "a1", "a2")}) == 1
    assert len({_cnn(d)[0].param_count() for d in ("a0", "a1")}) == 1


def test_configs_accept_json_forms():
    config = CNNConfig(widths=[8, 16], density="a1")
    assert config.widths == (8, 16) and config.density is SurfaceDensity.A1
    assert TransformerConfig(vocab_size=5, density="a2").density is SurfaceDensity.A2


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("widths", {"widths": ()}),
        ("widths", {"widths": (8, 0)}),
        ("widths", {"widths": (8, -4)}),
        ("widths", {"widths": 8}),
        ("in_channels", {"in_channels": 0}),
        ("image_size", {"image_size": -1}),
        ("num_classes", {"num_classes": 1.5}),
        ("density", {"density": SurfaceDensity.A2}),
        ("density", {"density": "a3"}),
    ],
)
def test_invalid_cnn_config_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field):
        CNNConfig(**kwargs)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("vocab_size", {"vocab_size": 0}),
        ("n_layer", {"vocab_size": 5, "n_layer": 0}),
        ("d_model", {"vocab_size": 5, "d_model": 30, "n_head": 4}),
        ("n_head", {"vocab_size": 5, "n_head": 0}),
        ("context", {"vocab_size": 5, "context": True}),
        ("density", {"vocab_size": 5, "density": "b1"}),
    ],
)
def test_invalid_transformer_config_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field):
        TransformerConfig(**kwargs)
