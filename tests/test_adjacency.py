"""Phase 5's adjacency ops and economy on real planes: buds, consolidations, their masks, the
governor's ROI and budget mediation, and the per-slot ROI, churn and governor counts."""

from __future__ import annotations

import copy
import dataclasses
import math

import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_lab.config import RunConfig
from esper_lab.contracts import (
    ADJACENCY_OPS,
    ROI_PARAMS,
    VETO_BUD,
    VETO_CONSOLIDATE,
    VETO_LOW_ROI,
    Action,
    AlphaCurve,
    BlendAlgorithm,
    Blueprint,
    EventKind,
    Op,
    Stage,
    SurfaceDensity,
    Tempo,
)
from esper_lab.env import MorphEnv
from esper_lab.episodes import run_episodes
from esper_lab.governor import Governor
from esper_lab.hosts import CNNConfig, CNNHost, TransformerConfig, TransformerHost
from esper_lab.plane import EMBARGO_STEPS, IllegalAction, SeedPlane
from esper_lab.slot import ECONOMY_EMA
from esper_lab.telemetry.recorder import Recorder
from esper_lab.telemetry.store import Store
from esper_lab.vecenv import VecEnv

LADDER, LIGHT, HEAVY = Blueprint.CONV_CHANNEL_LADDER, Blueprint.CONV_LIGHT, Blueprint.CONV_HEAVY


def cnn_plane(max_seeds: int | None = None, run_seed: int = 0) -> SeedPlane:
    torch.manual_seed(0)
    return SeedPlane(CNNHost(CNNConfig(density=SurfaceDensity.A1)), run_seed=run_seed, max_seeds=max_seeds)


def grow_to(plane: SeedPlane, slot: int, blueprint: Blueprint, stage: Stage, **germination) -> None:
    """Germinate `blueprint` in `slot` and advance it to `stage` (BLENDING waits for its alpha)."""
    plane.apply(Action(Op.GERMINATE, slot, blueprint, **germination))
    for next_stage in (Stage.TRAINING, Stage.BLENDING, Stage.HOLDING, Stage.FOSSILIZED):
        if plane.slots[slot].stage is stage:
            return
        while next_stage in (Stage.HOLDING, Stage.FOSSILIZED) and plane.slots[slot].alpha != plane.slots[slot].alpha_target:
            plane.tick()
        plane.apply(Action(Op.FOSSILIZE if next_stage is Stage.FOSSILIZED else Op.ADVANCE, slot))
    assert plane.slots[slot].stage is stage


def test_a_bud_copies_its_seed_into_the_nearest_empty_slot_it_fits_with_a_germinations_init():
    plane = cnn_plane()
    grow_to(plane, 2, LADDER, Stage.BLENDING, blend=BlendAlgorithm.GATE, curve=AlphaCurve.COSINE, tempo=Tempo.FAST)
    grow_to(plane, 3, LIGHT, Stage.TRAINING)  # occupied: the bud skips it
    events = plane.apply(Action(Op.BUD_NEXT_SURFACE, 2))
    bud, parent = plane.slots[4], plane.slots[2]
    assert bud.stage is Stage.GERMINATED and parent.stage is Stage.BLENDING
    assert (bud.blueprint, bud.blend_algorithm, bud.curve, bud.tempo) == (LADDER, BlendAlgorithm.GATE, AlphaCurve.COSINE, Tempo.FAST)
    assert bud.alpha == 0.0 and bud.alpha_target == parent.alpha_target
    assert [(e.kind, e.slot, e.name, e.value) for e in events] == [
        (EventKind.ADJACENCY, 2, "BUD_NEXT_SURFACE", 4.0),
        (EventKind.TRANSITION, 4, "DORMANT->GERMINATED", float(Stage.GERMINATED)),
    ]
    # the bud is exactly what a germination there would be: the same level, the same weights (ranks agree)
    twin = cnn_plane()
    twin.apply(Action(Op.GERMINATE, 4, LADDER))
    assert bud.ladder.level() == twin.slots[4].ladder.level()
    assert all(torch.equal(a, b) for a, b in zip(bud.seed.state_dict().values(), twin.slots[4].seed.state_dict().values()))
    plane.apply(Action(Op.BUD_PREV_SURFACE, 2))
    assert plane.slots[1].stage is Stage.GERMINATED and plane.slots[1].blueprint is LADDER


def test_buds_and_consolidations_are_bounded_by_the_surface_order_and_max_seeds():
    plane = cnn_plane()
    grow_to(plane, 5, LIGHT, Stage.TRAINING)
    masks = plane.action_masks().op
    assert not masks[5, Op.BUD_NEXT_SURFACE] and masks[5, Op.BUD_PREV_SURFACE]  # no slot after the last
    with pytest.raises(IllegalAction, match="BUD_NEXT_SURFACE: no empty slot after"):
        plane.apply(Action(Op.BUD_NEXT_SURFACE, 5))
    assert not masks[5, Op.CONSOLIDATE_WITH_NEXT]  # not a ladder, and nothing after it
    assert not plane.action_masks().op[0, Op.BUD_NEXT_SURFACE]  # a dormant slot has nothing to bud
    capped = cnn_plane(max_seeds=2)
    grow_to(capped, 0, LIGHT, Stage.TRAINING)
    capped.apply(Action(Op.BUD_NEXT_SURFACE, 0))
    assert not capped.action_masks().op[0, Op.BUD_NEXT_SURFACE]  # slot 2 is empty, but two seeds are the cap
    with pytest.raises(IllegalAction, match="max_seeds=2"):
        capped.apply(Action(Op.BUD_NEXT_SURFACE, 0))


def test_consolidation_prunes_the_next_seed_tamiyo_holds_and_grows_this_ladder():
    plane = cnn_plane()
    grow_to(plane, 1, LADDER, Stage.BLENDING)
    grow_to(plane, 2, HEAVY, Stage.FOSSILIZED)  # a phage: Emrakul's, skipped
    grow_to(plane, 4, LIGHT, Stage.TRAINING)
    level = plane.slots[1].ladder.level()
    events = plane.apply(Action(Op.CONSOLIDATE_WITH_NEXT, 1))
    assert plane.slots[4].stage is Stage.PRUNED and plane.slots[4].seed is None
    assert plane.slots[4].embargo_remaining == EMBARGO_STEPS and plane.slots[2].stage is Stage.FOSSILIZED
    assert plane.slots[1].ladder.level() == level + 1 and plane.slots[1].stage is Stage.BLENDING
    assert [(e.kind, e.slot, e.name) for e in events] == [
        (EventKind.ADJACENCY, 1, "CONSOLIDATE_WITH_NEXT"),
        (EventKind.TRANSITION, 4, "TRAINING->PRUNED"),
        (EventKind.LEVEL_CHANGED, 1, "CONSOLIDATE_WITH_NEXT"),
    ]
    assert not plane.action_masks().op[1, Op.CONSOLIDATE_WITH_NEXT]  # no seed of Tamiyo's after it now
    with pytest.raises(IllegalAction, match="CONSOLIDATE_WITH_NEXT needs a seed of Tamiyo's after this slot"):
        plane.apply(Action(Op.CONSOLIDATE_WITH_NEXT, 1))
    top = plane.slots[1].ladder
    grow_to(plane, 3, LIGHT, Stage.TRAINING)
    while top.level() < top.max_level:
        plane.apply(Action(Op.GROW_INTERNAL, 1))
    assert not plane.action_masks().op[1, Op.CONSOLIDATE_WITH_NEXT]  # at the top level


def _random_organism(seed: int, transformer: bool) -> SeedPlane:
    """A plane driven by `seed` through random legal ops, adjacency ops included."""
    torch.manual_seed(seed)
    host = (
        TransformerHost(TransformerConfig(vocab_size=17, context=8, density=SurfaceDensity.A1))
        if transformer
        else CNNHost(CNNConfig(density=SurfaceDensity.A1))
    )
    plane = SeedPlane(host, run_seed=seed)
    g = torch.Generator().manual_seed(seed)
    for _ in range(30):
        masks = plane.action_masks()
        legal = masks.op.nonzero().tolist()
        adjacency = [pair for pair in legal if pair[1] in ADJACENCY_OPS]
        pool = adjacency if adjacency and torch.rand(1, generator=g) < 0.5 else legal
        slot, op = pool[int(torch.randint(len(pool), (1,), generator=g))]
        fits = masks.blueprint[slot].nonzero().flatten()
        plane.apply(Action(Op(op), slot, Blueprint(int(fits[torch.randint(len(fits), (1,), generator=g)])), tempo=Tempo.FAST))
        plane.tick()
    return plane


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), transformer=st.booleans())
def test_adjacency_masks_say_exactly_what_apply_accepts_and_replays_are_identical(seed, transformer):
    plane = _random_organism(seed, transformer)
    masks = plane.action_masks().op
    for slot in range(len(plane)):
        for op in sorted(ADJACENCY_OPS):
            trial = copy.deepcopy(plane)
            try:
                trial.apply(Action(op, slot))
                legal = True
            except IllegalAction:
                legal = False
            assert legal == bool(masks[slot, op]), (slot, op.name)
    assert _random_organism(seed, transformer).fingerprint() == plane.fingerprint()  # deterministic, so ranks agree


def test_the_governor_lets_only_paying_seeds_bud_and_consolidate_toward_the_better_payer():
    plane = cnn_plane()
    grow_to(plane, 0, LADDER, Stage.BLENDING)
    grow_to(plane, 3, LIGHT, Stage.BLENDING)
    roomy = Governor(param_budget=10**9)
    bud, consolidate = Action(Op.BUD_NEXT_SURFACE, 0), Action(Op.CONSOLIDATE_WITH_NEXT, 0)
    assert roomy.veto(plane, bud) == VETO_LOW_ROI  # never measured: it has shown nothing to copy
    plane.note_contribution(0, -0.01)
    assert roomy.veto(plane, bud) == VETO_LOW_ROI  # measured, and it hurts
    plane.note_contribution(0, 0.5)
    assert plane.slots[0].roi_ema > 0 and roomy.veto(plane, bud) is None
    assert roomy.veto(plane, consolidate) is None  # the neighbour was never measured
    plane.note_contribution(3, 50.0)  # the neighbour pays far better per param: keep it
    assert plane.slots[3].roi_ema > plane.slots[0].roi_ema and roomy.veto(plane, consolidate) == VETO_LOW_ROI
    tight = Governor(param_budget=plane.active_param_count())
    assert tight.veto(plane, bud) == VETO_BUD  # the budget comes first
    while plane.slots[3].roi_ema > plane.slots[0].roi_ema:  # the neighbour turns out to hurt
        plane.note_contribution(3, -50.0)
    assert tight.veto(plane, consolidate) is None  # net of the pruned neighbour, growing here fits
    assert Governor(param_budget=plane.slots[0].param_count_active()).veto(plane, consolidate) == VETO_CONSOLIDATE


def test_roi_is_an_ema_of_contribution_per_thousand_params_reset_by_a_new_seed_and_churn_decays():
    plane = cnn_plane()
    grow_to(plane, 0, LADDER, Stage.BLENDING)
    slot = plane.slots[0]
    per = ROI_PARAMS / slot.param_count_active()
    plane.note_contribution(0, 0.02)
    assert slot.roi_ema == pytest.approx(0.02 * per)
    plane.note_contribution(0, 0.04)
    assert slot.roi_ema == pytest.approx(ECONOMY_EMA * 0.02 * per + (1 - ECONOMY_EMA) * 0.04 * per)
    report = plane.report()
    assert report.column("roi_estimate_ema")[0] == pytest.approx(slot.roi_ema, rel=1e-6)
    plane.apply(Action(Op.PRUNE, 0))
    assert math.isnan(slot.roi_ema)  # the ROI is the seed's; the churn is the slot's
    churn = []
    for _ in range(3):
        plane.tick()
        churn.append(slot.churn_ema)
    assert churn[0] > 0 and churn[1] == pytest.approx(ECONOMY_EMA * churn[0]) and churn[2] < churn[1]
    assert plane.report().column("churn_ema")[5] == 0  # never touched


def test_a_vetoed_bud_is_an_explicit_counted_event_the_policy_sees():
    config = RunConfig(
        task="digits_cnn", density="a1", episode_length=6, batches_per_step=2, data_fraction=0.2, contribution_every=0, blueprints=("conv_light",)
    )
    env = MorphEnv(config)
    env.reset()
    env.step(Action(Op.GERMINATE, 0, LIGHT))
    env.step(Action(Op.ADVANCE, 0))
    result = env.step(Action(Op.BUD_NEXT_SURFACE, 0))  # TRAINING, never measured: no ROI to copy
    vetoes = [e for e in result.events if e.kind is EventKind.VETO]
    assert [(e.slot, e.name, e.value) for e in vetoes] == [(0, VETO_LOW_ROI, float(Op.BUD_NEXT_SURFACE))]
    assert result.metrics["veto"] == 1.0 and result.report.column("governor_vetoes").tolist()[:2] == [1, 0]
    assert env.plane.slots[1].stage is Stage.DORMANT
    assert result.masks.op[0, Op.BUD_NEXT_SURFACE]  # still legal: the veto is the governor's, the mask the plane's


def test_a_rollback_counts_on_the_slot_it_removed():
    plane = cnn_plane()
    grow_to(plane, 2, LIGHT, Stage.BLENDING)
    plane.remove_culprit(2)
    assert plane.report().column("governor_rollbacks").tolist() == [0, 0, 1, 0, 0, 0]


class Script:
    """Plays a fixed list of actions, one per step (a one-env VecEnv)."""

    def __init__(self, actions: list[Action]):
        self.actions = list(actions)

    def act(self, results):
        return [self.actions.pop(0)]


# seed 12: the ladder's ROI is positive by step 6 (see tests/test_distributed.py); seed 0: it is not
ECONOMY = RunConfig(task="digits_cnn", density="a1", episode_length=9, batches_per_step=4, data_fraction=0.3, contribution_every=1, param_budget=4.0)
BUDDING = [
    Action(Op.GERMINATE, 0, LADDER, tempo=Tempo.FAST),
    Action(Op.ADVANCE, 0),
    Action(Op.ADVANCE, 0),
    Action(Op.WAIT),
    Action(Op.WAIT),
    Action(Op.BUD_NEXT_SURFACE, 0),
    Action(Op.WAIT),
    Action(Op.CONSOLIDATE_WITH_NEXT, 0),
    Action(Op.WAIT),
]


def test_the_store_reads_the_economy_per_step_and_counts_adjacency_vetoes(tmp_path):
    for seed, script in ((12, BUDDING), (0, BUDDING[:6] + [Action(Op.WAIT)] * 3)):
        config = dataclasses.replace(ECONOMY, seed=seed)
        with Recorder(tmp_path, "economy", config, run_id=f"s{seed}") as recorder:
            run_episodes(VecEnv(config, 1), Script(script), 1, recorder=recorder)
    store = Store(tmp_path)
    paid, vetoed = (store.economy(run=r).sort("step") for r in ("s12", "s0"))
    assert paid["buds"].sum() == 1 and paid["consolidations"].sum() == 1 and paid["adjacency_vetoes"].sum() == 0
    assert vetoed["buds"].sum() == 0 and vetoed["adjacency_vetoes"].sum() == 1
    assert paid.filter(pl.col("step") == 6)["buds"].item() == 1  # the step the bud was applied
    assert paid["roi_ema"][0] is None and paid["roi_ema"].drop_nulls().len() > 0  # no in-forward seed before blending
    assert (paid["churn_ema"] > 0).all() and (paid["active_param_budget_util"] > 0).all()
    counts = {row["run_id"]: row for row in store.governor_counts().iter_rows(named=True)}
    assert (counts["s0"]["roi_vetoes"], counts["s0"]["adjacency_budget_vetoes"], counts["s12"]["roi_vetoes"]) == (1, 0, 0)
    episodes = {row["run_id"]: row for row in store.adjacency_counts().iter_rows(named=True)}  # the same, per episode
    assert (episodes["s12"]["buds"], episodes["s12"]["consolidations"], episodes["s12"]["roi_vetoes"]) == (1, 1, 0)
    assert (episodes["s0"]["buds"], episodes["s0"]["roi_vetoes"], episodes["s0"]["adjacency_budget_vetoes"]) == (0, 1, 0)


class Fossiliser:
    """Germinates conv_light at slot 0, advances it whenever the plane allows and fossilises it."""

    def act(self, results):
        (result,) = results
        if result.step == 0:
            return [Action(Op.GERMINATE, 0, LIGHT, tempo=Tempo.FAST)]
        op = next((op for op in (Op.FOSSILIZE, Op.ADVANCE) if result.masks.op[0, op]), None)
        return [Action(Op.WAIT) if op is None else Action(op, 0)]


def test_the_store_lists_each_fossil_with_its_step_its_fate_and_its_last_contribution(tmp_path):
    config = dataclasses.replace(ECONOMY, episode_length=12)
    with Recorder(tmp_path, "economy", config, run_id="f") as recorder:
        run_episodes(VecEnv(config, 1), Fossiliser(), 1, recorder=recorder)
    store = Store(tmp_path)
    (fossil,) = store.fossils().iter_rows(named=True)
    slots = store.slot_series(run="f").filter(pl.col("slot") == 0).sort("step")
    fossilised = slots.filter(pl.col("stage") == int(Stage.FOSSILIZED))
    first = fossilised["step"].min()
    assert (fossil["slot"], fossil["blueprint_name"], fossil["fossilised_at"], fossil["kept"]) == (0, "CONV_LIGHT", first, True)
    last = slots.filter(pl.col("step") == slots["step"].max())
    assert fossil["measurements"] == fossilised.height > 0 and fossil["contribution"] == pytest.approx(last["contribution"].item())
    assert fossil["params"] == last["seed_param_count_active"].item() > 0
