"""The organism: a host with its seed plane, seen as tables (the helpers behind the tour notebook).

Every change goes through the plane's public surface: `apply(Action)` for decisions, `tick()` for
step boundaries, `report()` for what a slot looks like; so a table here shows what the policy sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pandas as pd
import torch
from torch import nn

from esper_lab.contracts import SEED_STAGES, Action, Blueprint, Op, Stage, Subtarget, SurfaceDensity
from esper_lab.data import load_pydoc_corpus
from esper_lab.hosts import CNNConfig, CNNHost, TransformerConfig, TransformerHost
from esper_lab.plane import SeedPlane
from esper_lab.training import loss_of, train_epoch

# The densities each host's config accepts (hosts/cnn.py and hosts/transformer.py; seed 000 A0-A2).
HOST_DENSITIES: dict[str, tuple[SurfaceDensity, ...]] = {
    "cnn": (SurfaceDensity.A0, SurfaceDensity.A1),
    "transformer": (SurfaceDensity.A0, SurfaceDensity.A1, SurfaceDensity.A2),
}
# The lifecycle's main line, in order; `walk_lifecycle` stops at any of these stages.
MAIN_LINE = tuple(sorted(SEED_STAGES))
SEED_LR = 1e-2  # Adam for host and seeds in the tour: a few batches must visibly train a seed


def build_host(kind: str, density: SurfaceDensity | str, seed: int = 0, **config) -> nn.Module:
    """A host of `kind` ("cnn" | "transformer") at `density`, initialised from `seed` alone.

    The Transformer's vocabulary defaults to the pydoc corpus's, so its surfaces match the
    char LM the experiments train.
    """
    if kind not in HOST_DENSITIES:
        raise ValueError(f"kind={kind!r} is not a host; allowed: {list(HOST_DENSITIES)}")
    with torch.random.fork_rng():  # seeded init that leaves the caller's global RNG alone
        torch.manual_seed(seed)
        if kind == "cnn":
            return CNNHost(CNNConfig(density=density, **config))
        config.setdefault("vocab_size", load_pydoc_corpus().vocab_size)
        return TransformerHost(TransformerConfig(density=density, **config))


def surface_table(plane: SeedPlane) -> pd.DataFrame:
    """One row per slot (slot order = surface_uid order) with the blueprints the plane allows there."""
    fit = plane.action_masks().blueprint
    rows = [
        {
            "slot": i,
            "surface_uid": spec.surface_uid,
            "depth_idx": spec.depth_idx,
            "depth_norm": round(spec.depth_norm, 3),
            "site": spec.site.name,
            "role": spec.role.name,
            "width": spec.width,
            "in_width": spec.in_width,
            "blueprints": ", ".join(b.name.lower() for b in Blueprint if fit[i, b]),
        }
        for i, spec in enumerate(plane.specs)
    ]
    return pd.DataFrame(rows)


def slot_state(plane: SeedPlane, slot: int) -> dict:
    """One slot's row of `plane.report()` in plain words (reading it clears the step's sensors)."""
    report = plane.report()
    row = dict(zip(report.columns, report.values[slot].tolist()))
    blueprint = int(row["blueprint"])
    return {
        "stage": Stage(int(row["stage"])).name,
        "blueprint": "-" if blueprint < 0 else Blueprint(blueprint).name.lower(),
        "alpha": round(row["alpha"], 4),
        "alpha_target": row["alpha_target"],
        "level": int(row["internal_level"]),
        "focus": Subtarget(int(row["focus_subtarget"])).name,
        "active_params": int(row["seed_param_count_active"]),
        "active_flops": row["seed_flops_active_est"],
        "delta_l2_norm": row["delta_l2_norm"],
        "output_l2_norm": row["output_l2_norm"],
    }


def epoch_runner(host: nn.Module, plane: SeedPlane, batches: Callable[[], Iterable]) -> Callable[[], float]:
    """A callable that trains host and live seeds for one epoch of `batches()` and returns the loss.

    The optimizer's `seeds` group is re-synced on every call, because germination and
    fossilisation change which seed parameters learn.
    """
    optimizer = torch.optim.Adam([{"params": host.parameters()}, {"params": [], "name": "seeds"}], lr=SEED_LR)

    def run() -> float:
        plane.sync_optimizer(optimizer)
        return float(train_epoch(host, plane, batches(), optimizer))

    return run


def walk_lifecycle(
    plane: SeedPlane,
    slot: int,
    blueprint: Blueprint,
    to: Stage = Stage.FOSSILIZED,
    train: Callable[[], float] | None = None,
    **germination,
) -> pd.DataFrame:
    """Drive one slot DORMANT -> ... -> `to`, one op or tick per row, as the policy would.

    BLENDING ticks until alpha reaches its target, since ADVANCE waits for it. `train` (e.g. an
    `epoch_runner`) is one host epoch run after each op or tick, so sensors and the loss show
    what the seed does at that stage. `germination` holds the Action's blend/curve/tempo/target.
    """
    if to not in MAIN_LINE:
        raise ValueError(f"to={to!r} is not on the main line; allowed: {[s.name for s in MAIN_LINE]}")
    rows = []

    def step(op: str) -> None:
        loss = train() if train is not None else float("nan")
        rows.append({"step": len(rows), "op": op, **slot_state(plane, slot), "train_loss": loss})

    step("start")
    plane.apply(Action(Op.GERMINATE, slot, blueprint, **germination))
    step("GERMINATE")
    for stage in MAIN_LINE[1 : MAIN_LINE.index(to) + 1]:
        if stage is Stage.HOLDING:
            while plane.slots[slot].alpha != plane.slots[slot].alpha_target:
                plane.tick()
                step("tick")
        op = Op.FOSSILIZE if stage is Stage.FOSSILIZED else Op.ADVANCE
        plane.apply(Action(op, slot))
        step(op.name)
    return pd.DataFrame(rows).set_index("step")


def ladder_profile(host: nn.Module, plane: SeedPlane, slot: int, inputs: torch.Tensor, target: torch.Tensor) -> pd.DataFrame:
    """Cost (active params, FLOPs) and effect (sensors, loss on the batch) of a ladder seed at
    every level of its focused subtarget.

    Levels change only through GROW/SHRINK actions; at each level one forward and backward pass
    on (inputs, target) fills the sensors. The host runs in eval mode (BatchNorm statistics stay
    put), gradients are cleared afterwards, and the seed is left at the level it started from.
    """
    ladder = plane.slots[slot].ladder
    if ladder is None:
        raise ValueError(f"slot {slot} holds {plane.slots[slot].blueprint!r}, not a ladder seed")
    start, was_training = ladder.level(), host.training
    host.eval()
    rows = []
    try:
        for level in range(ladder.max_level + 1):
            set_level(plane, slot, level)
            plane.report()  # drop sensors from earlier passes
            loss = loss_of(host(inputs, plane), target)
            loss.backward()
            rows.append({"level": level, **slot_state(plane, slot), "probe_loss": loss.item()})
    finally:
        host.zero_grad(set_to_none=True)
        plane.zero_grad(set_to_none=True)
        set_level(plane, slot, start)
        host.train(was_training)
    columns = ["level", "active_params", "active_flops", "delta_l2_norm", "output_l2_norm", "probe_loss"]
    return pd.DataFrame(rows)[columns]


def set_level(plane: SeedPlane, slot: int, level: int) -> None:
    """Move a ladder's focused subtarget to `level` by GROW/SHRINK actions, one level per action."""
    ladder = plane.slots[slot].ladder
    if ladder is None or not 0 <= level <= ladder.max_level:
        raise ValueError(f"slot {slot} has no ladder level {level}")  # checked first: no half-done moves
    while ladder.level() != level:
        plane.apply(Action(Op.GROW_INTERNAL if ladder.level() < level else Op.SHRINK_INTERNAL, slot))


def focus_cycle(plane: SeedPlane, slot: int) -> pd.DataFrame:
    """Grow each subtarget of a multi-ladder once, moving the focus with FOCUS_NEXT between them.

    Shows that GROW acts on the focused subtarget only; the focus ends where it started.
    """
    ladder = plane.slots[slot].ladder
    if ladder is None or ladder.n_subtargets < 2:
        raise ValueError(f"slot {slot} does not hold a multi-ladder seed")
    rows = []

    def record(op: str) -> None:
        state = slot_state(plane, slot)
        rows.append({"op": op, "focus": state["focus"], "levels": str(ladder.levels.tolist()), "active_params": state["active_params"]})

    record("start")
    for _ in range(ladder.n_subtargets):
        plane.apply(Action(Op.GROW_INTERNAL, slot))
        record("GROW_INTERNAL")
        plane.apply(Action(Op.FOCUS_NEXT, slot))
        record("FOCUS_NEXT")
    return pd.DataFrame(rows)
