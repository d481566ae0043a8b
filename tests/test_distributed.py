"""Two gloo ranks on CPU: identical planes through a lifecycle, through Emrakul's lyses and a
regrowth, and through buds and a consolidation the governor judged; a forced desync is caught."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from esper_lab.config import RunConfig
from esper_lab.contracts import Action, Blueprint, EventKind, Op, SlotKind, Tempo
from esper_lab.distributed import DesyncError, process_group, run
from esper_lab.policy import PlanterPolicy

pytestmark = pytest.mark.slow  # every test here runs packs, clusters, wheels or ranks

CONFIG = RunConfig(task="digits_cnn", episode_length=12, batches_per_step=4, data_fraction=0.3)
LADDER = Blueprint.CONV_CHANNEL_LADDER
# germinate, train, blend, grow, shrink, wait for alpha, hold, fossilise (tempo FAST = 3 steps)
SCRIPT = [
    Action(Op.GERMINATE, 0, LADDER),
    Action(Op.ADVANCE, 0),
    Action(Op.ADVANCE, 0),
    Action(Op.GROW_INTERNAL, 0),
    Action(Op.SHRINK_INTERNAL, 0),
    Action(Op.WAIT),
    Action(Op.WAIT),
    Action(Op.ADVANCE, 0),
    Action(Op.FOSSILIZE, 0),
    Action(Op.WAIT),
]


def _worker(rank: int, world_size: int, rendezvous: str, results: dict, desync_step: int | None) -> None:
    torch.set_num_threads(1)
    script, stages = list(SCRIPT), []

    def perturb(step, env):
        stages.append(env.plane.slots[0].stage.name)
        if rank == 1 and step == desync_step:
            with torch.no_grad():
                next(env.plane.slots[0].seed.parameters()).add_(1e-3)

    try:
        with process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size):
            prints = run(CONFIG, lambda result: script.pop(0), len(SCRIPT), before_check=perturb)
        results[rank] = ("ok", prints, stages)
    except DesyncError as error:
        results[rank] = ("desync", str(error))


def _launch(tmp_path, desync_step=None, worker=None) -> dict:
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(worker or _worker, args=(2, f"file://{tmp_path}/rendezvous", results, desync_step), nprocs=2, join=True)
    return dict(results)


DECAY = RunConfig(
    task="digits_cnn",
    density="a1",
    episode_length=40,
    batches_per_step=4,
    data_fraction=0.3,
    max_seeds=6,
    param_budget=4.0,
    contribution_every=2,
    economy={"rent_weight": 1.0},
    decay={"enabled": True},
)


def _decay_worker(rank: int, world_size: int, rendezvous: str, results: dict, _) -> None:
    """Rank 0's planter plants and regrows; Emrakul decides on every rank from what it sees."""
    torch.set_num_threads(1)
    policy, kinds = PlanterPolicy(Blueprint.CONV_HEAVY, regrow=True), []
    with process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size):
        prints = run(
            DECAY,
            lambda result: policy.act([result])[0],
            DECAY.episode_length,
            before_check=lambda step, env: kinds.append([int(slot.kind) for slot in env.plane.slots]),
        )
    results[rank] = (prints, kinds)


def test_two_ranks_keep_identical_planes_through_grow_shrink_and_fossilise(tmp_path):
    results = _launch(tmp_path)
    assert results[0][0] == results[1][0] == "ok"
    assert results[0][1] == results[1][1]
    assert len(set(results[0][1])) > 3  # the plane really changed along the way
    assert results[0][2] == results[1][2]
    assert {"TRAINING", "BLENDING", "HOLDING", "FOSSILIZED"} <= set(results[0][2])


def test_a_forced_desync_is_detected_naming_rank_and_slot(tmp_path):
    results = _launch(tmp_path, desync_step=4)
    for rank in (0, 1):
        status, message = results[rank][:2]
        assert status == "desync"
        assert "rank 1 slot 0" in message and "step 4" in message


def test_lysis_and_regrowth_stay_symmetric_across_ranks(tmp_path):
    results = _launch(tmp_path, worker=_decay_worker)
    (prints0, kinds0), (prints1, kinds1) = results[0], results[1]
    assert prints0 == prints1 and kinds0 == kinds1  # every step: the same phages, sedations, scars and seeds
    seen = {kind for step in kinds0 for kind in step}
    assert {SlotKind.PHAGE, SlotKind.SCAR} <= seen  # Emrakul lysed on both ranks alike
    scarred_then_seed = any(a == SlotKind.SCAR and b == SlotKind.SEED for t in range(len(kinds0) - 1) for a, b in zip(kinds0[t], kinds0[t + 1]))
    assert scarred_then_seed  # and a scar was regrown (or expired) in step on both


# seed 12: one whose ladder shows a positive ROI by the bud (on most seeds it barely moves the
# digits metric, the governor vetoes the bud and the script's consolidation is illegal)
ADJACENT = RunConfig(
    task="digits_cnn", density="a1", episode_length=12, batches_per_step=4, data_fraction=0.3, contribution_every=1, param_budget=4.0, seed=12
)
# a ladder blends in and is measured every step; then it buds twice and consolidates with its bud
ADJACENT_SCRIPT = [
    Action(Op.GERMINATE, 0, LADDER, tempo=Tempo.FAST),
    Action(Op.ADVANCE, 0),
    Action(Op.ADVANCE, 0),
    Action(Op.WAIT),
    Action(Op.WAIT),
    Action(Op.BUD_NEXT_SURFACE, 0),
    Action(Op.WAIT),
    Action(Op.CONSOLIDATE_WITH_NEXT, 0),
    Action(Op.BUD_NEXT_SURFACE, 0),
    Action(Op.WAIT),
]


def _adjacency_worker(rank: int, world_size: int, rendezvous: str, results: dict, _) -> None:
    torch.set_num_threads(1)
    script, seen, stages = list(ADJACENT_SCRIPT), [], []

    def act(result):  # rank 0's policy decides for both
        seen.append([(int(e.kind), e.slot, e.name, e.value) for e in result.events])
        return script.pop(0)

    with process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size):
        prints = run(ADJACENT, act, len(ADJACENT_SCRIPT), before_check=lambda step, env: stages.append([slot.stage.name for slot in env.plane.slots]))
    results[rank] = (prints, stages, seen)


def test_buds_and_consolidation_stay_symmetric_across_ranks(tmp_path):
    results = _launch(tmp_path, worker=_adjacency_worker)
    (prints0, stages0, events0), (prints1, stages1, _) = results[0], results[1]
    assert prints0 == prints1 and stages0 == stages1  # the same buds, prunes and levels on both ranks, every step
    adjacency = [(name, slot, value) for step in events0 for kind, slot, name, value in step if kind == EventKind.ADJACENCY]
    assert adjacency == [("BUD_NEXT_SURFACE", 0, 1.0), ("CONSOLIDATE_WITH_NEXT", 0, 1.0), ("BUD_NEXT_SURFACE", 0, 2.0)]
