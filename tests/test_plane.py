"""The seed plane on real hosts and real tensors: identity, isolation, lifecycle, ladders."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_lab.contracts import Action, Blueprint, Op, Stage, SurfaceDensity
from esper_lab.hosts import CNNConfig, CNNHost, TransformerConfig, TransformerHost
from esper_lab.plane import AUTOMATIC, EMBARGO_STEPS, TRANSITIONS, IllegalAction, SeedPlane
from esper_lab.training import loss_of

VOCAB = 17
HOSTS = [
    ("cnn", SurfaceDensity.A0),
    ("cnn", SurfaceDensity.A1),
    ("transformer", SurfaceDensity.A0),
    ("transformer", SurfaceDensity.A1),
    ("transformer", SurfaceDensity.A2),
]


def build(kind: str, density: SurfaceDensity, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "cnn":
        host = CNNHost(CNNConfig(density=density))
        x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    else:
        host = TransformerHost(TransformerConfig(vocab_size=VOCAB, context=8, density=density))
        x = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(seed))
    return host, SeedPlane(host, run_seed=seed), x


def walk(plane: SeedPlane, slot: int, blueprint: Blueprint, to: Stage) -> None:
    """Drive one slot through the lifecycle's main line up to stage `to`."""
    plane.apply(Action(Op.GERMINATE, slot, blueprint))
    path = [Stage.GERMINATED, Stage.TRAINING, Stage.BLENDING, Stage.HOLDING, Stage.FOSSILIZED]
    for stage in path[1 : path.index(to) + 1]:
        if stage is Stage.HOLDING:
            while plane.slots[slot].alpha != plane.slots[slot].alpha_target:
                plane.tick()
        plane.apply(Action(Op.FOSSILIZE if stage is Stage.FOSSILIZED else Op.ADVANCE, slot))
    assert plane.slots[slot].stage is to


@settings(max_examples=8, deadline=None)
@given(host_index=st.integers(0, len(HOSTS) - 1), seed=st.integers(0, 2**16))
def test_dormant_plane_is_exactly_the_identity(host_index, seed):
    host, plane, x = build(*HOSTS[host_index], seed=seed)
    host.eval()
    assert torch.equal(host(x), host(x, plane))


@pytest.mark.parametrize("kind,density", HOSTS)
def test_training_stage_keeps_host_output_and_gradients_bit_identical(kind, density):
    host, plane, x = build(kind, density)
    blueprint = Blueprint.CONV_HEAVY if kind == "cnn" else Blueprint.LORA
    if density is SurfaceDensity.A2:
        blueprint = Blueprint.LORA_PROJ_LADDER
    for i in range(len(plane)):
        walk(plane, i, blueprint, Stage.TRAINING)

    bare = host(x)
    bare.square().mean().backward()
    host_grads = [p.grad.clone() for p in host.parameters()]
    host.zero_grad()

    seeded = host(x, plane)
    assert torch.equal(seeded, bare)
    seeded.square().mean().backward()
    for p, g in zip(host.parameters(), host_grads):
        assert torch.equal(p.grad, g)
    seed_grads = [p.grad for p in plane.trainable_parameters()]
    assert seed_grads and all(g is not None for g in seed_grads)
    assert sum(float(g.abs().sum()) for g in seed_grads) > 0


ISOLATION_STEPS = 4  # optimizer steps: a leak through the seed's input shows from the first


@pytest.mark.parametrize("kind,density", HOSTS)
def test_a_trained_training_seed_never_touches_the_host(kind, density):
    """Seeds with random non-zero weights (as after some training: a zero-initialised output
    side would hide a missing detach, its Jacobian being zero), trained for several Adam steps
    beside the host: the host's parameters follow exactly the path of the same host trained
    alone, and the forward output is exactly the bare host's at every step."""
    host, plane, x = build(kind, density)
    bare = copy.deepcopy(host)
    blueprint = {"cnn": Blueprint.CONV_HEAVY, "transformer": Blueprint.LORA}[kind]
    if density is SurfaceDensity.A2:
        blueprint = Blueprint.LORA_PROJ_LADDER
    for i in range(len(plane)):
        walk(plane, i, blueprint, Stage.TRAINING)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in plane.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    target = torch.randint(0, 10 if kind == "cnn" else VOCAB, x.shape[:1] if kind == "cnn" else x.shape, generator=generator)
    seeded_opt = torch.optim.Adam([*host.parameters(), *plane.trainable_parameters()], lr=1e-2)
    bare_opt = torch.optim.Adam(bare.parameters(), lr=1e-2)
    seeds_before = [p.clone() for p in plane.trainable_parameters()]
    for _ in range(ISOLATION_STEPS):
        for model, p, optimizer in ((host, plane, seeded_opt), (bare, None, bare_opt)):
            optimizer.zero_grad()
            loss_of(model(x, p), target).backward()
            optimizer.step()
        assert torch.equal(host(x, plane), bare(x))
        assert all(torch.equal(a, b) for a, b in zip(host.parameters(), bare.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(seeds_before, plane.trainable_parameters()))


def test_every_illegal_transition_raises_naming_stage_and_op():
    reached = 0
    for stage in Stage:
        for op in Op:
            if op is Op.WAIT or (stage, op) in TRANSITIONS:
                continue
            _, plane, _ = build("cnn", SurfaceDensity.A0)
            reach(plane, stage)
            with pytest.raises(IllegalAction, match=stage.name) as error:
                plane.apply(Action(op, 0, Blueprint.CONV_MULTI_LADDER))
            assert op.name in str(error.value)
            reached += 1
    assert reached > 40


def reach(plane: SeedPlane, stage: Stage) -> None:
    if stage is Stage.DORMANT:
        return
    if stage in (Stage.PRUNED, Stage.EMBARGOED, Stage.RESETTING):
        walk(plane, 0, Blueprint.CONV_MULTI_LADDER, Stage.TRAINING)
        plane.apply(Action(Op.PRUNE, 0))
        ticks = {Stage.PRUNED: 0, Stage.EMBARGOED: 1, Stage.RESETTING: 1 + EMBARGO_STEPS}[stage]
        for _ in range(ticks):
            plane.tick()
    else:
        walk(plane, 0, Blueprint.CONV_MULTI_LADDER, stage)
    assert plane.slots[0].stage is stage


def test_prune_runs_through_embargo_back_to_dormant():
    _, plane, _ = build("cnn", SurfaceDensity.A0)
    walk(plane, 0, Blueprint.CONV_LIGHT, Stage.BLENDING)
    plane.apply(Action(Op.PRUNE, 0))
    seen = [plane.slots[0].stage]
    for _ in range(EMBARGO_STEPS + 2):
        plane.tick()
        seen.append(plane.slots[0].stage)
    assert seen[:2] == [Stage.PRUNED, AUTOMATIC[Stage.PRUNED]]
    assert seen[-1] is Stage.DORMANT and Stage.RESETTING in seen
    assert plane.slots[0].seed is None
    assert plane.action_masks().op[0, Op.GERMINATE]


def test_masks_match_apply_for_every_op_on_every_slot():
    _, plane, _ = build("transformer", SurfaceDensity.A1)
    walk(plane, 0, Blueprint.LORA_MULTI_LADDER, Stage.BLENDING)
    walk(plane, 1, Blueprint.MLP, Stage.TRAINING)
    masks = plane.action_masks()
    assert masks.op[:, Op.WAIT].all()
    for slot in range(len(plane)):
        for op in Op:
            if op is Op.WAIT:
                continue
            trial = build("transformer", SurfaceDensity.A1)[1]
            walk(trial, 0, Blueprint.LORA_MULTI_LADDER, Stage.BLENDING)
            walk(trial, 1, Blueprint.MLP, Stage.TRAINING)
            blueprint = next(b for b in Blueprint if masks.blueprint[slot, b])
            try:
                trial.apply(Action(op, slot, blueprint))
                legal = True
            except IllegalAction:
                legal = False
            assert legal == bool(masks.op[slot, op]), (slot, op)


@settings(max_examples=10, deadline=None)
@given(grows=st.integers(0, 3))
def test_grow_then_shrink_restores_the_mask(grows):
    _, plane, _ = build("cnn", SurfaceDensity.A0)
    walk(plane, 0, Blueprint.CONV_CHANNEL_LADDER, Stage.TRAINING)
    seed = plane.slots[0].seed
    before = {k: v.clone() for k, v in seed.state_dict().items()}
    grown = 0
    for _ in range(grows):
        if plane.action_masks().op[0, Op.GROW_INTERNAL]:
            plane.apply(Action(Op.GROW_INTERNAL, 0))
            grown += 1
    for _ in range(grown):
        plane.apply(Action(Op.SHRINK_INTERNAL, 0))
    after = seed.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_active_params_strictly_increase_with_level_and_level_zero_is_identity():
    host, plane, x = build("cnn", SurfaceDensity.A0)
    walk(plane, 0, Blueprint.CONV_CHANNEL_LADDER, Stage.HOLDING)
    slot = plane.slots[0]
    while plane.action_masks().op[0, Op.SHRINK_INTERNAL]:
        plane.apply(Action(Op.SHRINK_INTERNAL, 0))
    for p in slot.seed.parameters():  # a trained seed, not a zero-initialised one
        torch.nn.init.normal_(p)
    host.eval()
    assert torch.equal(host(x), host(x, plane))
    counts = [plane.report().column("seed_param_count_active")[0].item()]
    while plane.action_masks().op[0, Op.GROW_INTERNAL]:
        plane.apply(Action(Op.GROW_INTERNAL, 0))
        counts.append(plane.report().column("seed_param_count_active")[0].item())
    assert len(counts) == slot.seed.max_level + 1
    assert all(a < b for a, b in zip(counts, counts[1:]))
    assert not torch.equal(host(x), host(x, plane))


def test_focus_cycles_through_every_subtarget():
    _, plane, _ = build("transformer", SurfaceDensity.A1)
    walk(plane, 0, Blueprint.LORA_MULTI_LADDER, Stage.TRAINING)
    ladder = plane.slots[0].seed
    k = ladder.n_subtargets
    seen = []
    for _ in range(k):
        seen.append(int(plane.report().column("focus_subtarget")[0]))
        plane.apply(Action(Op.FOCUS_NEXT, 0))
    assert sorted(seen) == sorted(int(s) for s in ladder.subtargets)
    assert int(ladder.focus) == 0
    plane.apply(Action(Op.FOCUS_PREV, 0))
    assert int(ladder.focus) == k - 1
    plane.apply(Action(Op.GROW_INTERNAL, 0))
    assert ladder.levels.tolist() == [1] * (k - 1) + [2]


def test_fossilised_parameters_do_not_change_after_an_optimizer_step():
    host, plane, x = build("cnn", SurfaceDensity.A0)
    walk(plane, 0, Blueprint.CONV_LIGHT, Stage.FOSSILIZED)
    walk(plane, 1, Blueprint.CONV_LIGHT, Stage.BLENDING)
    plane.tick()  # alpha > 0, so the blending seed receives gradient
    optimizer = torch.optim.SGD([{"params": host.parameters()}, {"params": [], "name": "seeds"}], lr=0.5)
    plane.sync_optimizer(optimizer)
    frozen = {k: v.clone() for k, v in plane.slots[0].seed.state_dict().items()}
    live = {k: v.clone() for k, v in plane.slots[1].seed.state_dict().items()}
    for _ in range(2):
        optimizer.zero_grad()
        host(x, plane).logsumexp(1).mean().backward()
        optimizer.step()
    assert all(torch.equal(frozen[k], v) for k, v in plane.slots[0].seed.state_dict().items())
    assert any(not torch.equal(live[k], v) for k, v in plane.slots[1].seed.state_dict().items())
    masks = plane.action_masks().op[0]
    assert masks.nonzero().flatten().tolist() == [Op.WAIT]


def test_germination_is_deterministic_per_run_seed_surface_and_count():
    a, b, c = (build("cnn", SurfaceDensity.A1, seed=s)[1] for s in (5, 5, 6))
    for plane in (a, b, c):
        plane.apply(Action(Op.GERMINATE, 2, Blueprint.CONV_HEAVY))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_report_reads_sensors_once_per_step_and_resets():
    host, plane, x = build("cnn", SurfaceDensity.A0)
    walk(plane, 0, Blueprint.CONV_HEAVY, Stage.BLENDING)
    plane.tick()
    for p in plane.slots[0].seed.parameters():
        torch.nn.init.normal_(p, std=0.1)
    for _ in range(3):
        host(x, plane).sum().backward()
    report = plane.report()
    row = report.values[0]
    for name in ("delta_l2_norm", "output_l2_norm", "seed_grad_norm", "grad_ratio"):
        assert row[report.columns.index(name)] > 0, name
    assert report.column("delta_l2_norm")[1:].eq(0).all()
    assert plane.report().column("delta_l2_norm").eq(0).all()
