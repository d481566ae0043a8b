"""NaN per location: a seed in each stage that is in the forward pass, a fossilised seed, a host
weight. The rollback blames the right one (or the host, removing nothing), leaves the innocent
seed as it was, and training goes on healthy.

Two seeds on digits_cnn at a1 (six surfaces): the innocent one at slot 1 sits earlier in the
forward pass than the culprit at slot 4, so "the first live seed with NaN parameters after the
step" (every one, once Adam has spread the NaN) is the wrong answer."""

from __future__ import annotations

import math

import pytest
import torch

from esper_lab.config import RunConfig
from esper_lab.contracts import ROLLBACK_HOST, ROLLBACK_SEED, Action, Blueprint, EventKind, Op, Stage, Tempo
from esper_lab.env import MorphEnv, StepResult

CONFIG = RunConfig(task="digits_cnn", density="a1", batches_per_step=2, data_fraction=0.25, episode_length=40)
INNOCENT, CULPRIT = 1, 4
HEALTHY_STEPS = 3  # steps after the rollback that must train normally
# The main line to each stage; BLENDING -> HOLDING waits for the alpha ramp (FAST tempo).
PATH = {
    Stage.TRAINING: (Op.GERMINATE, Op.ADVANCE),
    Stage.BLENDING: (Op.GERMINATE, Op.ADVANCE, Op.ADVANCE),
    Stage.HOLDING: (Op.GERMINATE, Op.ADVANCE, Op.ADVANCE, Op.ADVANCE),
    Stage.FOSSILIZED: (Op.GERMINATE, Op.ADVANCE, Op.ADVANCE, Op.ADVANCE, Op.FOSSILIZE),
}


def drive(env: MorphEnv, slot: int, stage: Stage) -> None:
    for op in PATH[stage]:
        while not env.plane.action_masks().op[slot, op]:
            assert env.step(Action(Op.WAIT)).metrics["rollback"] == 0.0
        action = Action(op, slot, Blueprint.CONV_LIGHT, tempo=Tempo.FAST)
        assert env.step(action).metrics["rollback"] == 0.0
    assert env.plane.slots[slot].stage is stage


def organism(culprit_stage: Stage | None, innocent_stage: Stage = Stage.TRAINING) -> MorphEnv:
    env = MorphEnv(CONFIG)
    env.reset()
    drive(env, INNOCENT, innocent_stage)
    if culprit_stage is not None:
        drive(env, CULPRIT, culprit_stage)
    return env


def seed_state(env: MorphEnv, slot: int) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in env.plane.slots[slot].seed.state_dict().items()}


def poison(tensor: torch.Tensor) -> None:
    with torch.no_grad():
        tensor.view(-1)[0] = float("nan")


def rollback_of(result: StepResult):
    assert result.metrics["rollback"] == 1.0 and math.isnan(result.metrics["train_loss"])
    rollbacks = [e for e in result.events if e.kind is EventKind.ROLLBACK]
    assert len(rollbacks) == 1
    transitions = [(e.slot, e.name) for e in result.events if e.kind is EventKind.TRANSITION]
    return rollbacks[0], transitions


def assert_trains_healthy(env: MorphEnv) -> None:
    for _ in range(HEALTHY_STEPS):
        result = env.step(Action(Op.WAIT))
        assert result.metrics["rollback"] == 0.0 and math.isfinite(result.metrics["train_loss"])
        assert math.isfinite(result.metrics["val_loss"])
    tensors = [*env.host.parameters(), *(p for s in env.plane.slots if s.seed is not None for p in s.seed.parameters())]
    assert all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("stage", [Stage.TRAINING, Stage.BLENDING, Stage.HOLDING, Stage.FOSSILIZED], ids=lambda s: s.name)
def test_a_poisoned_seed_is_blamed_and_removed_and_the_innocent_one_kept(stage):
    env = organism(stage)
    innocent_before = seed_state(env, INNOCENT)
    poison(next(env.plane.slots[CULPRIT].seed.parameters()))

    rollback, transitions = rollback_of(env.step(Action(Op.WAIT)))

    assert (rollback.slot, rollback.name) == (CULPRIT, ROLLBACK_SEED)
    assert rollback.surface_uid == env.plane.specs[CULPRIT].surface_uid
    # a fossil has no PRUNE op; the governor removes it and the transition says so
    assert transitions == [(CULPRIT, f"{stage.name}->PRUNED")]
    assert env.plane.slots[CULPRIT].stage is Stage.PRUNED and env.plane.slots[CULPRIT].seed is None
    innocent = env.plane.slots[INNOCENT]
    assert innocent.stage is Stage.TRAINING
    assert all(torch.equal(innocent.seed.state_dict()[k], v) for k, v in innocent_before.items())
    assert {id(p) for p in env.plane.trainable_parameters()} == {id(p) for p in innocent.seed.parameters()}
    assert_trains_healthy(env)
    assert env.plane.slots[INNOCENT].stage is Stage.TRAINING


@pytest.mark.parametrize("weight", ["stem.0.weight", "blocks.1.conv1.weight", "classifier.weight"])
def test_a_poisoned_host_weight_blames_the_host_and_removes_nothing(weight):
    """Before the first surface, between two live seeds, after the last surface: no seed
    turned a finite input non-finite, so no seed pays for the host's NaN."""
    env = organism(Stage.BLENDING)
    before = {slot: seed_state(env, slot) for slot in (INNOCENT, CULPRIT)}
    poison(env.host.get_parameter(weight))

    rollback, transitions = rollback_of(env.step(Action(Op.WAIT)))

    assert (rollback.slot, rollback.surface_uid, rollback.name) == (-1, -1, ROLLBACK_HOST)
    assert transitions == []
    assert [env.plane.slots[s].stage for s in (INNOCENT, CULPRIT)] == [Stage.TRAINING, Stage.BLENDING]
    for slot, state in before.items():
        assert all(torch.equal(env.plane.slots[slot].seed.state_dict()[k], v) for k, v in state.items())
    assert_trains_healthy(env)


def test_a_removed_culprit_stays_removed_through_a_second_rollback():
    """The snapshot is retaken after the removal: restoring it again must not bring back the
    seed the first rollback removed."""
    env = organism(Stage.TRAINING)
    poison(next(env.plane.slots[CULPRIT].seed.parameters()))
    assert rollback_of(env.step(Action(Op.WAIT)))[0].slot == CULPRIT
    poison(next(env.plane.slots[INNOCENT].seed.parameters()))
    rollback, transitions = rollback_of(env.step(Action(Op.WAIT)))
    assert rollback.slot == INNOCENT and (INNOCENT, "TRAINING->PRUNED") in transitions
    assert env.plane.slots[CULPRIT].seed is None
    assert env.plane.slots[CULPRIT].stage in (Stage.PRUNED, Stage.EMBARGOED)
    assert_trains_healthy(env)


def test_a_finite_loss_spike_is_not_blamed_on_a_training_seed():
    """A TRAINING seed leaves the forward pass exactly the host's, so it cannot cause a spike."""
    env = organism(None)
    for _ in range(4):  # history for the spike test
        env.step(Action(Op.WAIT))
    with torch.no_grad():
        env.host.classifier.weight.mul_(1e3)

    result = env.step(Action(Op.WAIT))

    assert result.metrics["rollback"] == 1.0 and math.isfinite(result.metrics["train_loss"])
    assert [(e.slot, e.name) for e in result.events] == [(-1, ROLLBACK_HOST)]
    assert env.plane.slots[INNOCENT].stage is Stage.TRAINING
    assert_trains_healthy(env)


def test_a_host_rollback_rebaselines_so_a_lasting_level_shift_is_rolled_back_once():
    """A finite spike nobody caused (the loss a lysed phage leaves) cannot be undone by the
    snapshot: the first step over the line is rolled back, then the new level is the history."""
    env = organism(None)
    governor = env.governor
    for loss in (0.30, 0.31, 0.29, 0.30, 0.31):
        governor.healthy(loss, env.host, env.plane, env.optimizer)
    shifted = [0.8, 0.81, 0.79, 0.8, 0.8, 0.82]
    verdicts = []
    for loss in shifted:
        verdicts.append(governor.diverged(loss))
        if verdicts[-1]:
            (event,) = governor.rollback(env.host, env.plane, env.optimizer, loss)
            assert event.name == ROLLBACK_HOST
        else:
            governor.healthy(loss, env.host, env.plane, env.optimizer)
    assert verdicts == [True, False, False, False, False, False]
    assert governor.diverged(float("nan"))  # a non-finite loss is still caught with no history
