"""The environment on the embedded digits data: step contract, legality, rollback, vetoes,
determinism and vectorisation. Small settings (a few batches per step) keep it quick."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from esper_lab.config import RunConfig
from esper_lab.contracts import (
    SEED_STAGES,
    SLOT_COLUMNS,
    STEP_METRICS,
    VETO_GERMINATE,
    VETO_INTERNAL_GROW,
    Action,
    Blueprint,
    EventKind,
    Op,
    Stage,
    StepResult,
)
from esper_lab.data import DATA_ENV_VAR, write_cifar10_batches
from esper_lab.economy import rent_cost
from esper_lab.env import MorphEnv
from esper_lab.plane import IllegalAction
from esper_lab.policy import HeuristicPolicy
from esper_lab.seeds import make_seed
from esper_lab.vecenv import VecEnv

METRIC_KEYS = set(STEP_METRICS)


def small(**changes) -> RunConfig:
    base = dict(episode_length=4, batches_per_step=4, data_fraction=0.3)
    return RunConfig(**{**base, **changes})


def fresh(config: RunConfig, env_index: int = 0) -> tuple[MorphEnv, StepResult]:
    env = MorphEnv(config, env_index)
    return env, env.reset()


def host_state(env: MorphEnv) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in env.host.state_dict().items()}


def record_hash(result: StepResult) -> str:
    """Everything a step returns, as one digest."""
    digest = hashlib.sha256()
    digest.update(repr((result.step, result.done, sorted(result.metrics.items()), result.reward)).encode())
    digest.update(repr(result.events).encode())
    digest.update(result.report.values.numpy().tobytes())
    digest.update(result.masks.op.numpy().tobytes() + result.masks.blueprint.numpy().tobytes())
    return digest.hexdigest()


# --- the step contract ---------------------------------------------------------------------------
def test_reset_and_step_contract():
    config = small()
    env, result = fresh(config)
    n_slots = len(env.plane)
    assert n_slots == 2  # digits_cnn at a0: one surface per block, widths (8, 16)

    def check_shapes(r: StepResult) -> None:
        assert r.report.columns == SLOT_COLUMNS
        assert r.report.values.shape == (n_slots, len(SLOT_COLUMNS))
        assert r.report.slot_mask.shape == (n_slots,)
        assert r.masks.op.shape == (n_slots, len(Op)) and r.masks.op.dtype == torch.bool
        assert r.masks.op[:, Op.WAIT].all()
        assert r.masks.blueprint.shape == (n_slots, len(Blueprint))
        assert set(r.metrics) == METRIC_KEYS
        assert r.metrics["n_slots"] == n_slots and r.metrics["host_params"] == env.plane.host_param_count

    check_shapes(result)
    assert result.step == 0 and not result.done and result.events == []
    assert result.reward.total == 0.0
    assert math.isnan(result.metrics["train_loss"])  # no training yet
    # Fresh plane: only WAIT and GERMINATE are legal anywhere.
    assert result.masks.op.any(0).nonzero().flatten().tolist() == [Op.WAIT, Op.GERMINATE]

    actions = [Action(Op.GERMINATE, 1, Blueprint.CONV_LIGHT), Action(Op.ADVANCE, 1), Action(Op.ADVANCE, 1), Action(Op.WAIT)]
    economy = config.economy
    for i, action in enumerate(actions, start=1):
        previous_metric = result.metrics["metric"]
        result = env.step(action)
        check_shapes(result)
        assert result.step == i
        assert result.done == (i == config.episode_length)
        assert result.metrics["progress"] == i / config.episode_length
        assert math.isfinite(result.metrics["train_loss"])
        assert result.metrics["metric_gain"] == pytest.approx(result.metrics["metric"] - previous_metric)
        # Reward parts: rent recomputed from the report, the task part from the metric gain, total
        # from the weights.
        report = result.report
        occupied = torch.tensor([Stage(int(s)) in SEED_STAGES for s in report.column("stage")])
        rent = rent_cost(report.column("alpha"), report.column("seed_param_count_active"), occupied, env.plane.host_param_count, economy.max_rent)
        parts = result.reward
        assert parts.rent == pytest.approx(rent) and parts.rent > 0  # a seed is occupying slot 1
        assert parts.task == pytest.approx(economy.task_scale * result.metrics["metric_gain"])
        assert parts.intervention == 0.0
        assert parts.total == pytest.approx(parts.task - economy.rent_weight * parts.rent - economy.churn_weight * parts.churn - parts.intervention)
    stages = [Stage(int(s)) for s in result.report.column("stage")]
    assert stages == [Stage.DORMANT, Stage.BLENDING]
    assert 0 < float(result.report.column("alpha")[1]) < 1
    assert result.metrics["occupied_slots"] == 1 and result.metrics["forward_params"] > 0
    assert result.done
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(Action(Op.WAIT))
    # reset starts a new episode
    again = env.reset()
    assert again.step == 0 and not again.done and env.step(Action(Op.WAIT)).step == 1


def test_illegal_action_raises_naming_stage_and_op_and_changes_nothing():
    env, _ = fresh(small())
    env.step(Action(Op.WAIT))
    before = (env.plane.fingerprint(), host_state(env), env.data_order.get_state().clone(), env.step_count, list(env.ledger.edits), env.metric)

    for action, words in [
        (Action(Op.ADVANCE, 0), ["DORMANT", "ADVANCE"]),
        (Action(Op.GROW_INTERNAL, 1), ["DORMANT", "GROW_INTERNAL"]),
        (Action(Op.GERMINATE, 0, Blueprint.LORA), ["LORA"]),  # does not fit a CNN surface
        (Action(Op.PRUNE, 5), ["slot 5"]),
    ]:
        with pytest.raises(IllegalAction) as info:
            env.step(action)
        assert all(word in str(info.value) for word in words), str(info.value)

    after = (env.plane.fingerprint(), host_state(env), env.data_order.get_state(), env.step_count, list(env.ledger.edits), env.metric)
    assert after[0] == before[0]
    assert all(torch.equal(after[1][k], v) for k, v in before[1].items())
    assert torch.equal(after[2], before[2])
    assert after[3:] == before[3:]
    assert env.step(Action(Op.WAIT)).step == 2  # the episode goes on


# --- governor: rollback ----------------------------------------------------------------------------
def test_nan_seed_triggers_rollback_and_prune():
    env, _ = fresh(small(episode_length=7))
    slot = 1
    for action in (Action(Op.GERMINATE, slot, Blueprint.CONV_HEAVY), Action(Op.ADVANCE, slot), Action(Op.ADVANCE, slot)):
        result = env.step(action)
        assert result.metrics["rollback"] == 0.0
    assert env.plane.slots[slot].stage is Stage.BLENDING
    good_host = host_state(env)

    with torch.no_grad():
        next(env.plane.slots[slot].seed.parameters()).fill_(float("nan"))
    result = env.step(Action(Op.WAIT))

    assert result.metrics["rollback"] == 1.0
    assert math.isnan(result.metrics["train_loss"])
    rollbacks = [e for e in result.events if e.kind is EventKind.ROLLBACK]
    assert len(rollbacks) == 1 and rollbacks[0].slot == slot
    assert rollbacks[0].surface_uid == env.plane.specs[slot].surface_uid
    # The prune the rollback made is in the event stream, after the rollback itself.
    transitions = [(e.slot, e.name) for e in result.events if e.kind is EventKind.TRANSITION]
    assert transitions == [(slot, "BLENDING->PRUNED")]
    assert result.events.index(rollbacks[0]) < [e.name for e in result.events].index("BLENDING->PRUNED")
    assert env.plane.slots[slot].stage is Stage.PRUNED and env.plane.slots[slot].seed is None
    assert Stage(int(result.report.column("stage")[slot])) is Stage.PRUNED
    # The host is back at the last good snapshot, exactly, and everything is finite.
    assert all(torch.equal(env.host.state_dict()[k], v) for k, v in good_host.items())
    assert all(torch.isfinite(p).all() for p in env.host.parameters())
    for state in env.optimizer.state.values():
        assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v))
    assert math.isfinite(result.metrics["val_loss"]) and (result.metrics["forward_params"] + result.metrics["incubating_params"]) == 0
    assert all(math.isfinite(x) for x in env.governor.losses)
    assert env.plane.trainable_parameters() == []

    while not result.done:
        result = env.step(Action(Op.WAIT))
        assert result.metrics["rollback"] == 0.0 and math.isfinite(result.metrics["train_loss"])
    assert result.step == 7
    assert Stage(int(result.report.column("stage")[slot])) not in (Stage.TRAINING, Stage.BLENDING, Stage.HOLDING)


@pytest.mark.parametrize("after_snapshot", [(Op.GROW_INTERNAL, Op.FOSSILIZE), (Op.PRUNE,)])
def test_rollback_restores_the_seed_as_it_was_at_the_snapshot(after_snapshot):
    """The snapshot keeps the seed module and copies its tensors and frozen flags: whatever
    happened to the seed since (grown, trained, frozen, pruned) is undone exactly."""
    env, _ = fresh(small(episode_length=20))
    slot = 0
    for op in (Op.GERMINATE, Op.ADVANCE, Op.ADVANCE, Op.ADVANCE, Op.GROW_INTERNAL):
        while not env.plane.action_masks().op[slot, op]:  # HOLDING waits for the alpha ramp
            env.step(Action(Op.WAIT))
        env.step(Action(op, slot, Blueprint.CONV_CHANNEL_LADDER))
    seed = env.plane.slots[slot].seed
    assert env.plane.slots[slot].stage is Stage.HOLDING and seed.level() == 2
    saved = {k: v.clone() for k, v in seed.state_dict().items()}

    with torch.no_grad():
        for p in seed.parameters():
            p.add_(1.0)
    for op in after_snapshot:
        env.plane.apply(Action(op, slot))
        env.plane.sync_optimizer(env.optimizer)
    env.governor.rollback(env.host, env.plane, env.optimizer, loss=float("nan"))  # no seed evidence: nothing removed

    restored = env.plane.slots[slot]
    assert restored.stage is Stage.HOLDING and restored.seed is seed and seed.level() == 2
    assert all(torch.equal(seed.state_dict()[k], v) for k, v in saved.items())
    assert all(p.requires_grad for p in seed.parameters())
    group = next(g for g in env.optimizer.param_groups if g["name"] == "seeds")
    assert {id(p) for p in group["params"]} == {id(p) for p in seed.parameters()}
    result = env.step(Action(Op.WAIT))
    assert result.metrics["rollback"] == 0.0 and math.isfinite(result.metrics["train_loss"])


# --- governor: vetoes --------------------------------------------------------------------------------
def test_germinate_over_budget_is_vetoed_explicitly():
    env, _ = fresh(small(param_budget=0.05))
    budget = env.param_budget
    heavy = make_seed(Blueprint.CONV_HEAVY, env.plane.specs[0], torch.Generator().manual_seed(0)).param_count_active()
    norm = make_seed(Blueprint.NORM, env.plane.specs[0], torch.Generator().manual_seed(0)).param_count_active()
    assert norm <= budget < heavy  # the budget separates the two

    result = env.step(Action(Op.GERMINATE, 0, Blueprint.CONV_HEAVY))
    vetoes = [e for e in result.events if e.kind is EventKind.VETO]
    assert len(vetoes) == 1 and vetoes[0].name == VETO_GERMINATE == "governor_veto_germinate"
    assert vetoes[0].slot == 0 and vetoes[0].value == float(Op.GERMINATE)
    assert not any(e.kind is EventKind.TRANSITION for e in result.events)
    assert result.metrics["veto"] == 1.0
    assert env.plane.slots[0].stage is Stage.DORMANT
    assert Stage(int(result.report.column("stage")[0])) is Stage.DORMANT
    assert (result.metrics["forward_params"] + result.metrics["incubating_params"]) == 0 and result.metrics["occupied_slots"] == 0
    assert result.reward.rent == 0.0 and result.reward.churn == 0.0

    result = env.step(Action(Op.GERMINATE, 0, Blueprint.NORM))  # a small seed fits the same budget
    assert result.metrics["veto"] == 0.0
    assert env.plane.slots[0].stage is Stage.GERMINATED
    assert (result.metrics["forward_params"] + result.metrics["incubating_params"]) == norm


def test_grow_past_budget_is_vetoed_explicitly():
    probe, _ = fresh(small())
    host_params, spec = probe.plane.host_param_count, probe.plane.specs[0]
    ladder = make_seed(Blueprint.CONV_CHANNEL_LADDER, spec, torch.Generator().manual_seed(0))
    assert ladder.level() == 1
    counts = []
    for level in range(ladder.max_level + 1):
        ladder.set_level(level)
        counts.append(ladder.param_count_active())
    assert counts == sorted(counts) and counts[2] < counts[3]
    # A budget between level 2 and level 3: growing 1 -> 2 is fine, 2 -> 3 is not.
    budget = (counts[2] + counts[3]) / 2 / host_params

    env, _ = fresh(small(param_budget=budget, episode_length=5))
    assert counts[2] <= env.param_budget < counts[3]
    env.step(Action(Op.GERMINATE, 0, Blueprint.CONV_CHANNEL_LADDER))
    env.step(Action(Op.ADVANCE, 0))
    result = env.step(Action(Op.GROW_INTERNAL, 0))
    assert result.metrics["veto"] == 0.0
    assert [e.value for e in result.events if e.kind is EventKind.LEVEL_CHANGED] == [2.0]
    assert result.reward.intervention == config_op_cost(env)
    assert (result.metrics["forward_params"] + result.metrics["incubating_params"]) == counts[2]

    result = env.step(Action(Op.GROW_INTERNAL, 0))
    vetoes = [e for e in result.events if e.kind is EventKind.VETO]
    assert len(vetoes) == 1 and vetoes[0].name == VETO_INTERNAL_GROW == "governor_veto_internal_grow"
    assert vetoes[0].value == float(Op.GROW_INTERNAL)
    assert not any(e.kind is EventKind.LEVEL_CHANGED for e in result.events)
    assert result.metrics["veto"] == 1.0
    assert env.plane.slots[0].ladder.level() == 2
    assert float(result.report.column("internal_level")[0]) == 2.0
    assert (result.metrics["forward_params"] + result.metrics["incubating_params"]) == counts[2]
    assert result.reward.intervention == 0.0  # a vetoed grow costs nothing
    assert result.metrics["net_level_change"] == 1.0  # only the executed grow counts

    result = env.step(Action(Op.SHRINK_INTERNAL, 0))  # shrinking is never vetoed
    assert result.metrics["veto"] == 0.0 and env.plane.slots[0].ladder.level() == 1


def config_op_cost(env: MorphEnv) -> float:
    return env.config.economy.internal_op_cost


# --- determinism and vectorisation ---------------------------------------------------------------
def play(env: MorphEnv, policy) -> tuple[list[str], list[Action]]:
    result = env.reset()
    hashes, actions = [record_hash(result)], []
    while not result.done:
        (action,) = policy.act([result])
        result = env.step(action)
        actions.append(action)
        hashes.append(record_hash(result))
    return hashes, actions


def test_same_config_and_seed_replay_exactly():
    config = small(episode_length=6, seed=3)
    torch.manual_seed(1)  # the env must not depend on the global RNG
    first, actions = play(MorphEnv(config), HeuristicPolicy())
    torch.manual_seed(2)
    torch.rand(17)
    second, _ = play(MorphEnv(config), HeuristicPolicy())
    assert first == second
    assert any(a.op is not Op.WAIT for a in actions)  # the heuristic did act on the plane
    other, _ = play(MorphEnv(config.replace(seed=4)), HeuristicPolicy())
    assert other[0] != first[0]  # a different host init already shows at reset
    assert all(a != b for a, b in zip(other[1:], first[1:]))


def test_vec_env_matches_lone_envs():
    config = small(episode_length=3, seed=1)
    vec = VecEnv(config, 2)
    assert len(vec) == 2
    policy = HeuristicPolicy()
    results = vec.reset()
    hashes = [[record_hash(r)] for r in results]
    while not results[0].done:
        results = vec.step(policy.act(results))
        assert len(results) == 2
        for i, r in enumerate(results):
            hashes[i].append(record_hash(r))
    assert all(r.done for r in results) and results[0].step == 3
    for i in range(2):
        alone, _ = play(MorphEnv(config, env_index=i), HeuristicPolicy())
        assert alone == hashes[i], f"env {i} of the VecEnv differs from a lone env {i}"
    assert hashes[0][0] != hashes[1][0]  # each env has its own streams


def vec_hashes(vec: VecEnv, policy) -> list[list[str]]:
    results = vec.reset()
    hashes = [[record_hash(r)] for r in results]
    while not results[0].done:
        results = vec.step(policy.act(results))
        for i, r in enumerate(results):
            hashes[i].append(record_hash(r))
    return hashes


@pytest.mark.slow
def test_worker_processes_compute_what_in_process_envs_compute():
    config = small(episode_length=3, seed=2)
    expected = vec_hashes(VecEnv(config, 3), HeuristicPolicy())
    with VecEnv(config, 3, workers=2) as vec:  # envs [0] and [1, 2] in two processes
        assert len(vec) == 3 and vec.slot_count() == 2
        assert vec_hashes(vec, HeuristicPolicy()) == expected
        assert vec_hashes(vec, HeuristicPolicy()) == expected  # a second episode replays too


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_an_illegal_action_moves_no_env_and_the_envs_keep_serving(workers):
    with VecEnv(small(), 2, workers=workers) as vec:
        before = vec.reset()
        illegal = Action(Op.ADVANCE, slot=0)  # nothing to advance on an empty slot
        with pytest.raises(IllegalAction, match="slot 0"):
            vec.step([Action(Op.WAIT), illegal])
        with pytest.raises(ValueError, match="1 actions for 2"):
            vec.step([Action(Op.WAIT)])
        after = vec.step([Action(Op.WAIT), Action(Op.WAIT)])  # the rejected step moved no env
    assert [r.step for r in before] == [0, 0] and [r.step for r in after] == [1, 1]


@pytest.mark.slow
def test_a_dead_worker_is_reported_not_waited_on():
    with VecEnv(small(), 2, workers=2) as vec:
        vec.reset()
        vec._workers[1]._process.kill()
        with pytest.raises(RuntimeError, match=r"env worker for envs \[1\] died"):
            vec.step([Action(Op.WAIT)] * 2)


def test_vec_env_rejects_bad_input():
    with pytest.raises(ValueError, match="n_envs"):
        VecEnv(small(), 0)
    with pytest.raises(ValueError, match="workers"):
        VecEnv(small(), 2, workers=3)
    vec = VecEnv(small(), 2)
    vec.reset()
    with pytest.raises(ValueError, match="1 actions for 2"):
        vec.step([Action(Op.WAIT)])


def test_cifar_envs_share_one_compact_copy_and_keep_their_own_order(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    write_cifar10_batches(tmp_path / "cifar", per_batch=40)
    config = RunConfig(
        task="cifar10_cnn",
        cifar_folder=str(tmp_path / "cifar"),
        host={"widths": (4, 8)},
        episode_length=2,
        batches_per_step=2,
        batch_size=16,
        val_samples=12,
    )
    vec = VecEnv(config, 2)
    results = vec.reset()
    first, second = vec.envs
    assert first.split is second.split and first.split.train_pixels.dtype == torch.uint8  # one copy, as bytes
    assert not torch.equal(first.train_rows, second.train_rows)  # each env draws its own order
    assert first.probe_x.dtype == torch.float32 and len(first.probe_y) == 12  # the per-step subsample, ready
    while not results[0].done:
        results = vec.step([Action(Op.WAIT)] * 2)
    full = first.full_evaluation()  # the whole split (40 images), standardised chunk by chunk
    assert results[0].metrics["full_metric"] == full.accuracy and full.accuracy * 40 == round(full.accuracy * 40)
