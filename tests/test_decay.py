"""Decay (seed 003 §9, seed 004 Stages 2-3): phages, sedation probes, the immune ledger, lysis at
step boundaries and scars, on real hosts and real tensors; then Emrakul inside a real env."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_lab.config import DecayConfig, RunConfig
from esper_lab.contracts import (
    LYSIS_FUNCTIONAL,
    LYSIS_PHYSICAL,
    PROBE_CLEARED,
    PROBE_RESTORED,
    PROBE_STARTED,
    SCAR_EXPIRED,
    SCAR_REGROWN,
    Action,
    BlendAlgorithm,
    Blueprint,
    Decay,
    EventKind,
    Op,
    SlotKind,
    Stage,
    SurfaceDensity,
)
from esper_lab.decay import Emrakul
from esper_lab.env import MorphEnv
from esper_lab.hosts import CNNConfig, CNNHost
from esper_lab.plane import QUARANTINE_STEPS, SCAR_EXPIRY_STEPS, IllegalAction, SeedPlane
from esper_lab.policy import PlanterPolicy

RULES = DecayConfig(enabled=True, debt_threshold=1.0, probe_steps=2, settle_steps=2, baseline_steps=3, harm_tolerance=0.01, lock_steps=4)
TASK_SCALE = 100.0


def phage_plane(blend: BlendAlgorithm = BlendAlgorithm.ADD, slots: tuple[int, ...] = (0,)):
    """A CNN host whose `slots` hold fossils with random (non-zero) weights, and an input batch."""
    torch.manual_seed(0)
    host = CNNHost(CNNConfig(density=SurfaceDensity.A0)).eval()
    plane = SeedPlane(host, run_seed=0)
    for slot in slots:
        plane.apply(Action(Op.GERMINATE, slot, Blueprint.CONV_LIGHT, blend=blend))
        plane.apply(Action(Op.ADVANCE, slot))
        plane.apply(Action(Op.ADVANCE, slot))
        while plane.slots[slot].alpha != plane.slots[slot].alpha_target:
            plane.tick()
        plane.apply(Action(Op.ADVANCE, slot))
        plane.apply(Action(Op.FOSSILIZE, slot))
        with torch.no_grad():
            for p in plane.slots[slot].seed.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
    return host, plane, torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def ticks(plane: SeedPlane, n: int) -> list:
    return [event for _ in range(n) for event in plane.tick()]


def names(events) -> list[str]:
    return [e.name for e in events]


# --- the phage --------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(blend=st.sampled_from(list(BlendAlgorithm)), sedation=st.floats(0.0, 1.0))
def test_a_phage_enters_at_alpha_times_sedation_and_is_exactly_the_identity_gated(blend, sedation):
    host, plane, x = phage_plane(blend)
    slot = plane.slots[0]
    assert slot.kind is SlotKind.PHAGE
    with torch.no_grad():
        full, bare = host(x, plane), host(x)
        slot.sedation = sedation
        mixed = host(x, plane)
        slot.alpha = slot.alpha * sedation  # the same forward written as a smaller alpha
        slot.sedation = 1.0
        assert torch.allclose(mixed, host(x, plane), atol=1e-6)
        slot.sedation, calls = 0.0, []
        slot.seed.register_forward_hook(lambda *_: calls.append(1))
        assert torch.equal(host(x, plane), bare) and not calls  # gated: the module is not even called
    assert not torch.equal(full, bare)  # the phage did change the forward before


def test_sedate_fades_linearly_over_the_steps_and_only_a_phage_can_be_sedated():
    _, plane, _ = phage_plane(slots=(0,))
    plane.sedate(0, 0.0, 4)
    seen = [(plane.tick(), plane.slots[0].sedation)[1] for _ in range(5)]
    assert seen == pytest.approx([0.75, 0.5, 0.25, 0.0, 0.0])
    assert plane.slots[0].stage is Stage.FOSSILIZED and not plane.slots[0].in_forward  # gated, still there
    plane.sedate(0, 1.0, 0)
    plane.tick()
    assert plane.slots[0].sedation == 1.0 and plane.slots[0].in_forward  # a restore: back in full at the next boundary
    with pytest.raises(IllegalAction, match="not a phage"):
        plane.sedate(1, 0.0, 2)  # slot 1 is dormant
    with pytest.raises(ValueError, match="outside"):
        plane.sedate(0, 1.5, 2)


@pytest.mark.parametrize("k", range(1, 17))
def test_a_fade_over_k_steps_lands_exactly_on_its_target_at_step_k(k):
    _, plane, _ = phage_plane(slots=(0,))
    plane.sedate(0, 0.0, k)
    seen = [(plane.tick(), plane.slots[0].sedation)[1] for _ in range(k)]
    assert all(v > 0.0 for v in seen[:-1]) and seen[-1] == 0.0  # gated at step k, not one boundary late
    assert seen == pytest.approx([1 - n / k for n in range(1, k + 1)])
    plane.sedate(0, 1.0, k)
    assert [(plane.tick(), plane.slots[0].sedation)[1] for _ in range(k)][-1] == 1.0  # a restore lands on 1, exactly


def test_physical_lysis_waits_for_a_step_boundary_with_the_phage_gated_and_leaves_a_scar():
    host, plane, x = phage_plane()
    contribution = 0.012
    plane.note_contribution(0, contribution)
    plane.schedule_prune(0, 2)
    assert plane.slots[0].seed is not None  # nothing is removed between boundaries
    first = plane.tick()
    assert plane.slots[0].stage is Stage.FOSSILIZED and plane.slots[0].sedation == 0.5 and not first
    events = plane.tick()  # gated to 0 at this boundary: lysed at it
    assert names(events) == [LYSIS_PHYSICAL, "FOSSILIZED->PRUNED", "PRUNED->EMBARGOED"]
    slot = plane.slots[0]
    assert slot.seed is None and slot.kind is SlotKind.SCAR and slot.scar_blueprint is Blueprint.CONV_LIGHT
    assert slot.scar_contribution == pytest.approx(contribution) and slot.embargo_remaining == QUARANTINE_STEPS
    with torch.no_grad():
        assert torch.equal(host(x, plane), host(x))  # a scar is an identity surface
    row = dict(zip(plane.report().columns, plane.report().values[0].tolist()))
    assert row["slot_kind"] == SlotKind.SCAR and row["scar_blueprint"] == Blueprint.CONV_LIGHT and row["seed_param_count_active"] == 0


def test_a_scar_is_quarantined_then_open_to_regrowth_then_expires():
    _, plane, _ = phage_plane(slots=(0, 1))
    for slot in (0, 1):
        plane.schedule_prune(slot)
    plane.tick()  # lysed, then embargoed for the quarantine, then resetting
    for _ in range(QUARANTINE_STEPS + 1):
        assert not plane.action_masks().op[0, Op.GERMINATE]
        plane.tick()
    assert plane.slots[0].stage is Stage.DORMANT and plane.action_masks().op[0, Op.GERMINATE]
    regrown = plane.apply(Action(Op.GERMINATE, 0, Blueprint.CONV_HEAVY))
    assert names(regrown) == ["DORMANT->GERMINATED", SCAR_REGROWN] and plane.slots[0].kind is SlotKind.SEED
    left = ticks(plane, SCAR_EXPIRY_STEPS)
    assert SCAR_EXPIRED in names(left) and plane.slots[1].kind is SlotKind.SEED  # nobody regrew slot 1
    assert [e.slot for e in left if e.name == SCAR_EXPIRED] == [1]


def test_the_scar_and_sedation_state_is_part_of_the_fingerprint():
    _, plane, _ = phage_plane()
    before = plane.fingerprint()
    plane.sedate(0, 0.0, 2)
    plane.tick()
    assert plane.fingerprint() != before  # ranks that sedated differently would be caught


# --- Emrakul's rules -----------------------------------------------------------------------------
def drive(emrakul: Emrakul, plane: SeedPlane, metrics: list[float], rent: float = 0.5, steps_left: int = 100, order: int | None = None):
    """One Emrakul decision per metric, each followed by the step boundary; all events."""
    events = []
    for metric in metrics:
        rents = [rent if slot.stage is Stage.FOSSILIZED else 0.0 for slot in plane.slots]
        events += emrakul.step(plane, metric, rents, steps_left, order)
        events += plane.tick()
    return events


def test_debt_is_rent_paid_minus_contribution_in_reward_units():
    _, plane, _ = phage_plane()
    emrakul = Emrakul(RULES, TASK_SCALE)
    plane.note_contribution(0, 0.002)  # 0.2 reward units a step
    drive(emrakul, plane, [0.9, 0.9], rent=0.5)
    assert emrakul.ledgers[0].debt == pytest.approx(2 * (0.5 - 0.2))
    assert plane.report().column("debt")[0] == pytest.approx(0.6)


def test_a_phage_that_pays_its_rent_is_never_probed():
    _, plane, _ = phage_plane()
    emrakul = Emrakul(RULES, TASK_SCALE)
    plane.note_contribution(0, 0.02)  # 2 units a step against 0.5 of rent
    assert not drive(emrakul, plane, [0.9] * 20)
    assert emrakul.ledgers[0].debt < 0 and plane.slots[0].sedation == 1.0


def test_a_harmless_probe_becomes_a_functional_then_a_physical_lysis():
    _, plane, _ = phage_plane()
    emrakul = Emrakul(RULES, TASK_SCALE)
    events = drive(emrakul, plane, [0.9] * 3)  # debt 1.5 > 1 once the baseline window is full
    assert names(events) == [PROBE_STARTED] and events[0].value == pytest.approx(0.9)
    events = drive(emrakul, plane, [0.9, 0.895, 0.9])  # fading, then gated at 0 for two steps
    assert names(events) == [PROBE_CLEARED, LYSIS_FUNCTIONAL, LYSIS_PHYSICAL, "FOSSILIZED->PRUNED", "PRUNED->EMBARGOED"]
    assert plane.slots[0].kind is SlotKind.SCAR and 0 not in emrakul.ledgers


def test_a_probe_that_hurt_is_restored_gets_an_antibody_and_a_lock():
    _, plane, _ = phage_plane()
    emrakul = Emrakul(RULES, TASK_SCALE)
    drive(emrakul, plane, [0.9] * 3)  # probe started
    events = drive(emrakul, plane, [0.88, 0.85, 0.86])  # gated: 4.5 points below the baseline
    assert names(events) == [PROBE_RESTORED] and events[0].value == pytest.approx(0.9 - 0.855)
    ledger = emrakul.ledgers[0]
    assert plane.slots[0].sedation == 1.0 and ledger.antibodies == 1 and ledger.debt == 0.0
    assert ledger.lock_remaining == RULES.lock_steps
    report = plane.report()
    assert report.column("antibodies")[0] == 1 and report.column("lock_remaining")[0] == RULES.lock_steps


def test_the_criticality_lock_stops_repeated_bad_probes():
    """A phage the host needs, with debt past the threshold all along (rent 2 a step): every probe
    is restored, and the next one starts only once the lock's steps have all gone by."""
    _, plane, _ = phage_plane()
    emrakul = Emrakul(RULES, TASK_SCALE)
    events, stepped = [], []
    for step in range(40):
        gated = plane.slots[0].sedation == 0.0
        new = drive(emrakul, plane, [0.80 if gated else 0.90], rent=2.0)
        events += new
        stepped += [(step, e) for e in new]
    starts = [i for i, e in enumerate(events) if e.name == PROBE_STARTED]
    judged = len(starts) - (emrakul.probe is not None)  # the last may still be in flight
    assert names(events).count(PROBE_RESTORED) == judged >= 2 and LYSIS_FUNCTIONAL not in names(events)
    assert emrakul.ledgers[0].antibodies == judged
    judged = [i for i, e in enumerate(events) if e.name == PROBE_RESTORED]
    steps = {id(e): step for step, e in stepped}
    gaps = [steps[id(events[s])] - steps[id(events[j])] for j, s in zip(judged, starts[1:])]
    assert gaps and min(gaps) == RULES.lock_steps + 1  # the lock blocks exactly its steps, then the debt is owed again
    assert plane.slots[0].stage is Stage.FOSSILIZED


def test_one_probe_at_a_time_on_the_phage_that_owes_most_and_none_the_episode_cannot_finish():
    _, plane, _ = phage_plane(slots=(0, 1))
    emrakul = Emrakul(RULES, TASK_SCALE)
    plane.note_contribution(1, -0.001)  # slot 1 owes more: it even hurts a little
    events = drive(emrakul, plane, [0.9] * 4)  # both owe more than the threshold by the fourth step
    assert names(events) == [PROBE_STARTED] and events[0].slot == 1
    late = Emrakul(RULES, TASK_SCALE)
    _, plane, _ = phage_plane()
    finish = RULES.probe_steps + RULES.settle_steps
    assert not drive(late, plane, [0.9] * 6, steps_left=finish + RULES.watch_steps - 1)  # no room to watch it recover
    assert names(drive(late, plane, [0.9], steps_left=finish + RULES.watch_steps)) == [PROBE_STARTED]


def test_decay_config_fails_before_compute_naming_the_field():
    with pytest.raises(ValueError, match="decay.probe_steps"):
        RunConfig(decay={"enabled": True, "probe_steps": 0})
    with pytest.raises(ValueError, match="decay.watch_steps"):
        DecayConfig(watch_steps=0)
    with pytest.raises(ValueError, match="decay.harm_tolerance"):
        RunConfig(decay={"harm_tolerance": -1})
    with pytest.raises(ValueError, match="decay.enabled"):
        DecayConfig(enabled="yes")
    with pytest.raises(ValueError, match="decay.learned=true needs decay.enabled"):
        DecayConfig(learned=True)


# --- the learned Emrakul ---------------------------------------------------------------------------
LEARNED = dataclasses.replace(RULES, learned=True)


def test_a_learned_emrakul_probes_only_what_she_orders_among_what_her_mask_allows():
    _, plane, _ = phage_plane(slots=(0, 1))
    emrakul = Emrakul(LEARNED, TASK_SCALE)
    n = len(plane.slots)
    assert not drive(emrakul, plane, [0.9] * 6, rent=2.0)  # deep in debt, but nobody ordered a probe
    mask = emrakul.phage_mask(n, steps_left=100)
    assert mask.nonzero().flatten().tolist() == [0, 1]  # both phages, whatever their debt
    room = LEARNED.probe_steps + LEARNED.settle_steps + LEARNED.watch_steps
    assert not emrakul.phage_mask(n, steps_left=room).any()  # no room to finish and watch (the mask is for the next step)
    assert emrakul.phage_mask(n, steps_left=room + 1).any()
    assert not Emrakul(RULES, TASK_SCALE).phage_mask(n, 100).any()  # the rule-based Emrakul takes no orders
    events = drive(emrakul, plane, [0.9], order=0)  # slot 1 owes as much: the order, not the debt, chooses
    assert names(events) == [PROBE_STARTED] and events[0].slot == 0
    assert not emrakul.phage_mask(n, 100).any()  # one probe at a time
    events = drive(emrakul, plane, [0.88, 0.85, 0.86])  # the judgement is still the measurement: it hurt
    assert names(events) == [PROBE_RESTORED] and emrakul.ledgers[0].lock_remaining == LEARNED.lock_steps
    drive(emrakul, plane, [0.9] * LEARNED.baseline_steps)
    assert emrakul.phage_mask(n, 100).nonzero().flatten().tolist() == [1]  # a locked phage cannot be ordered
    assert not drive(emrakul, plane, [0.9], order=0)  # and an order for it is no probe


@pytest.mark.slow
def test_the_env_shows_a_learned_emrakul_her_phages_and_refuses_an_order_outside_the_mask():
    config = RunConfig(
        task="digits_cnn",
        density="a1",
        episode_length=30,
        max_seeds=8,
        param_budget=4.0,
        batches_per_step=2,
        data_fraction=0.25,
        economy={"rent_weight": 1.0},
        decay={"enabled": True, "learned": True},
    )
    env, planter = MorphEnv(config), PlanterPolicy(Blueprint.CONV_HEAVY)
    result, probed = env.reset(), []
    with pytest.raises(IllegalAction, match="SEDATE phage 0"):
        env.step(Action(Op.WAIT, decay=Decay.SEDATE, phage=0))  # no phage yet
    while not result.done:
        action = planter.act([result])[0]
        phages = result.masks.phage.nonzero().flatten().tolist()
        for slot in phages:
            assert env.plane.slots[slot].kind is SlotKind.PHAGE
        if phages:
            action = dataclasses.replace(action, decay=Decay.SEDATE, phage=phages[-1])
        result = env.step(action)
        started = [e.slot for e in result.events if e.name == PROBE_STARTED]
        assert started == ([phages[-1]] if phages else [])  # the order, obeyed at the step it was given
        probed += started
    assert probed


# --- in a real env ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_emrakul_lyses_planted_redundancy_in_live_training_and_leaves_readable_events():
    config = RunConfig(
        task="digits_cnn",
        density="a1",
        episode_length=40,
        max_seeds=8,
        param_budget=4.0,
        batches_per_step=6,
        economy={"rent_weight": 1.0},
        decay={"enabled": True},
    )
    env, policy = MorphEnv(config), PlanterPolicy(Blueprint.CONV_HEAVY)
    result, events = env.reset(), []
    while not result.done:
        result = env.step(policy.act([result])[0])
        events += result.events
        assert math.isfinite(result.metrics["metric"])
    lysed = [e.slot for e in events if e.name == LYSIS_PHYSICAL]
    assert lysed, names(e for e in events if e.kind in (EventKind.PROBE, EventKind.LYSIS))
    kinds = result.report.column("slot_kind").tolist()
    assert all(kinds[slot] == SlotKind.SCAR for slot in lysed)
    assert result.metrics["forward_params"] < sum(env.plane.slots[s].param_count_active() for s in range(len(env.plane))) + 1
