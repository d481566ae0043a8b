"""Export-time compaction on real hosts, planes and data: random organisms on the digits CNN and
the pydoc char-LM at every density export within 1e-5 of the live forward; merged LoRA leaves
the bare host's modules; empty, pruned, scarred and incubating slots vanish; `esper-lab export`
rebuilds a recorded run and writes a module that loads and agrees with it."""

from __future__ import annotations

import functools
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_lab.audit.demo import record_demo_run
from esper_lab.cli import main
from esper_lab.config import TASKS
from esper_lab.contracts import Action, AlphaCurve, AlphaTarget, BlendAlgorithm, Blueprint, Op, Stage, SurfaceDensity, Tempo
from esper_lab.data import load_digits, load_pydoc_corpus
from esper_lab.export import TOLERANCE, Compacted, FixedBlend, check, compact, param_count, rebuild
from esper_lab.hosts import CNNConfig, CNNHost, ProjectionSurface, TransformerConfig, TransformerHost
from esper_lab.organism import set_level
from esper_lab.plane import SeedPlane
from esper_lab.seeds import ConvHeavySeed, Seed
from esper_lab.slot import SeedSlot

HOSTS = [
    ("cnn", SurfaceDensity.A0),
    ("cnn", SurfaceDensity.A1),
    ("transformer", SurfaceDensity.A0),
    ("transformer", SurfaceDensity.A1),
    ("transformer", SurfaceDensity.A2),
]
ROWS = 64  # validation images compared per organism
WINDOWS = 8  # validation windows of the char LM's context
RANDOM_STEPS = 16  # random legal actions (each followed by a tick) before some seeds are fossilised
NOISE = 0.5  # added to every seed parameter (zero-initialised output layers would make every seed the identity): seeds move the logits by ~0.1-1


@functools.cache
def validation(kind: str) -> torch.Tensor:
    """The first rows of the task's validation split, as host inputs."""
    if kind == "cnn":
        split = load_digits()
        return split.standardise(split.val_pixels[:ROWS])
    context = TASKS["pydoc_lm"].host["context"]
    return load_pydoc_corpus().val_ids[: WINDOWS * context].view(WINDOWS, context)


def build(kind: str, density: SurfaceDensity, seed: int = 0) -> tuple[torch.nn.Module, SeedPlane]:
    """The digits CNN or the pydoc char-LM, at `density`, with an empty plane."""
    torch.manual_seed(seed)
    if kind == "cnn":
        host = CNNHost(CNNConfig(**TASKS["digits_cnn"].host, density=density))
    else:
        host = TransformerHost(TransformerConfig(vocab_size=load_pydoc_corpus().vocab_size, **TASKS["pydoc_lm"].host, density=density))
    return host, SeedPlane(host, run_seed=seed)


def fossilise(plane: SeedPlane, index: int) -> None:
    """Drive a seeded slot along the main line to FOSSILIZED (ticking the plane while it blends)."""
    slot = plane.slots[index]
    while slot.stage in (Stage.GERMINATED, Stage.TRAINING, Stage.BLENDING, Stage.HOLDING):
        if slot.stage is Stage.BLENDING and slot.alpha != slot.alpha_target:
            plane.tick()
        else:
            plane.apply(Action(Op.FOSSILIZE if slot.stage is Stage.HOLDING else Op.ADVANCE, index))


def perturb(plane: SeedPlane, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in plane.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * NOISE)


def random_organism(kind: str, density: SurfaceDensity, seed: int) -> tuple[torch.nn.Module, SeedPlane]:
    """Random legal actions with random blends, curves and targets; then a random half of the
    seeded slots fossilised and a random half of the phages sedated; seeds perturbed."""
    host, plane = build(kind, density, seed)
    generator = torch.Generator().manual_seed(seed)
    pick = lambda n: int(torch.randint(n, (), generator=generator))
    choose = lambda mask: int(mask.nonzero().flatten()[pick(int(mask.sum()))])
    for _ in range(RANDOM_STEPS):
        masks = plane.action_masks()
        op = Op(choose(masks.op.any(0)))
        slot = choose(masks.op[:, op]) if op is not Op.WAIT else 0
        blueprint = Blueprint(choose(masks.blueprint[slot])) if op is Op.GERMINATE else Blueprint.NOOP
        plane.apply(
            Action(op, slot, blueprint, blend=pick(len(BlendAlgorithm)), curve=pick(len(AlphaCurve)), tempo=Tempo.FAST, target=pick(len(AlphaTarget)))
        )
        plane.tick()
    for slot in plane.slots:
        if pick(2):
            fossilise(plane, slot.index)
    for slot in plane.slots:
        if slot.stage is Stage.FOSSILIZED and pick(2):
            plane.sedate(slot.index, pick(3) / 2, 0)  # 0, 0.5 or 1 at the next tick
    plane.tick()
    perturb(plane, generator)
    return host, plane


def organism_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, (SeedPlane, SeedSlot))]


@pytest.mark.parametrize(("kind", "density"), HOSTS)
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_a_random_organism_exports_to_the_same_forward(kind, density, seed):
    host, plane = random_organism(kind, density, seed)
    compaction = compact(host, plane)
    result = check(host, plane, compaction.module, validation(kind), repeats=1)
    assert result.max_abs_diff <= TOLERANCE
    assert not organism_modules(compaction.module)
    fates = {s.slot: s.fate for s in compaction.seeds}
    assert sorted(int(i) for i in compaction.module.inlined) == sorted(i for i, f in fates.items() if f == "inlined")
    assert all(fates[s.index] == "dropped" for s in plane.slots if s.stage in (Stage.GERMINATED, Stage.TRAINING))
    assert result.params_exported <= result.params_live


@pytest.mark.parametrize("levels", [(1,) * 8, (0, 1, 2, 3, 4, 4, 2, 0)])
def test_a_merged_lora_ladder_leaves_the_bare_hosts_modules(levels):
    host, plane = build("transformer", SurfaceDensity.A2)
    bare = [type(m) for m in host.modules()]
    weights = [m.linear.weight.clone() for m in host.modules() if isinstance(m, ProjectionSurface)]
    for i, level in enumerate(levels):
        plane.apply(Action(Op.GERMINATE, i, Blueprint.LORA_PROJ_LADDER, target=AlphaTarget.MOST))
        plane.apply(Action(Op.ADVANCE, i))  # TRAINING: a ladder's levels move from here on
        set_level(plane, i, level)
        fossilise(plane, i)
    perturb(plane, torch.Generator().manual_seed(0))
    compaction = compact(host, plane)
    exported = compaction.module.host
    assert [s.fate for s in compaction.seeds] == ["merged"] * len(levels)
    assert [type(m) for m in exported.modules()] == bare and not len(compaction.module.inlined)
    assert not any(isinstance(m, (Seed, FixedBlend)) for m in compaction.module.modules())
    assert all(m.surface is None for m in exported.modules() if isinstance(m, ProjectionSurface))
    assert param_count(compaction.module) == host.param_count()
    x = validation("transformer")
    with torch.inference_mode():
        assert float((host(x, plane) - host(x)).abs().max()) > 1e4 * TOLERANCE  # the merged seeds matter
    merged = [m.linear.weight for m in exported.modules() if isinstance(m, ProjectionSurface)]
    assert [not torch.equal(w, m) for w, m in zip(weights, merged)] == [level > 0 for level in levels]
    assert check(host, plane, compaction.module, x, repeats=1).max_abs_diff <= TOLERANCE


def test_nonlinear_seeds_and_blends_are_inlined_at_their_alpha():
    """conv_heavy (nonlinear) and a LoRA ladder under MULTIPLY (nonlinear in s) stay modules."""
    host, plane = build("cnn", SurfaceDensity.A1)
    plane.apply(Action(Op.GERMINATE, 4, Blueprint.CONV_HEAVY, target=AlphaTarget.HALF))
    fossilise(plane, 4)
    plane.sedate(4, 0.5, 0)
    plane.tick()
    perturb(plane, torch.Generator().manual_seed(1))
    compaction = compact(host, plane)
    inlined = compaction.module.inlined["4"]
    assert isinstance(inlined.seed, ConvHeavySeed) and inlined.alpha == 0.25
    assert check(host, plane, compaction.module, validation("cnn"), repeats=1).max_abs_diff <= TOLERANCE

    host, plane = build("transformer", SurfaceDensity.A2)
    plane.apply(Action(Op.GERMINATE, 2, Blueprint.LORA_PROJ_LADDER, blend=BlendAlgorithm.MULTIPLY))
    fossilise(plane, 2)
    perturb(plane, torch.Generator().manual_seed(2))
    compaction = compact(host, plane)
    assert [s.fate for s in compaction.seeds] == ["inlined"]
    assert check(host, plane, compaction.module, validation("transformer"), repeats=1).max_abs_diff <= TOLERANCE


def test_empty_pruned_scarred_and_incubating_slots_vanish():
    host, plane = build("cnn", SurfaceDensity.A1)
    for i, blueprint in enumerate((Blueprint.CONV_HEAVY, Blueprint.CONV_LIGHT, Blueprint.DEPTHWISE, Blueprint.NOOP)):
        plane.apply(Action(Op.GERMINATE, i, blueprint))
    plane.apply(Action(Op.ADVANCE, 0))  # TRAINING: straight-through, the host's forward
    plane.apply(Action(Op.PRUNE, 1))
    fossilise(plane, 2)
    plane.schedule_prune(2)  # lysed at the next tick: a scar
    fossilise(plane, 3)  # a noop phage adds exactly 0
    plane.tick()
    perturb(plane, torch.Generator().manual_seed(3))
    assert plane.slots[2].scar_blueprint is Blueprint.DEPTHWISE
    compaction = compact(host, plane)
    assert {s.slot: s.fate for s in compaction.seeds} == {0: "dropped", 3: "dropped"}
    assert not len(compaction.module.inlined) and param_count(compaction.module) == host.param_count()
    x = validation("cnn")
    with torch.inference_mode():
        assert torch.equal(compaction.module(x), host(x, plane))


def test_fossils_only_refuses_a_live_seed_naming_its_slot():
    host, plane = build("transformer", SurfaceDensity.A1)
    plane.apply(Action(Op.GERMINATE, 1, Blueprint.MLP))
    plane.apply(Action(Op.GERMINATE, 3, Blueprint.LORA))
    fossilise(plane, 3)
    with pytest.raises(ValueError, match=r"slot 1 \(GERMINATED, MLP\)"):
        compact(host, plane, fossils_only=True)
    fossilise(plane, 1)
    assert [s.fate for s in compact(host, plane, fossils_only=True).seeds] == ["inlined", "inlined"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The audit's smoke demo run (digits CNN a1, conv_heavy and noop blending in by step 6)."""
    root = tmp_path_factory.mktemp("telemetry")
    return root, record_demo_run(root, "smoke")


def test_the_cli_rebuilds_a_recorded_run_and_writes_a_module_that_agrees(recorded, tmp_path, capsys):
    root, run = recorded
    path = tmp_path / "organism.pt"
    assert main(["export", run, "--root", str(root), "--step", "6", "--output", str(path)]) == 0
    out = capsys.readouterr().out
    assert "params live" in out and "latency exported/live" in out and f"written: {path}" in out
    assert re.search(r"BLENDING +conv_heavy +inlined", out) and "differs" not in out
    module = torch.load(path, weights_only=False)
    assert isinstance(module, Compacted) and not organism_modules(module)
    rebuilt = rebuild(root, run, step=6)
    assert rebuilt.metric == rebuilt.recorded_metric  # the replay is the recorded organism
    morph = rebuilt.env
    with torch.inference_mode():
        x = morph.prepare(morph.val_x)
        assert float((module(x) - morph.host(x, morph.plane)).abs().max()) <= TOLERANCE


def test_the_cli_names_a_step_the_run_never_reached(recorded, capsys):
    root, run = recorded
    assert main(["export", run, "--root", str(root), "--step", "99"]) == 2
    assert "step=99 must be an integer in 1..8" in capsys.readouterr().err
