"""PPO: GAE, proof that it learns a known optimum with each encoder, exact resume, atomic
checkpoints, the recorder hooks and the `train` command.

The learning tests use `KnownAnswerEnv`: real planes, real masks, and `plane.apply` raises on an
illegal action, so a finished run is also a run that never sampled one."""

from __future__ import annotations

import pytest
import torch

from esper_lab.cli import main
from esper_lab.contracts import HEADS, Action, Op
from esper_lab.episodes import run_episodes
from esper_lab.policy import Agent, PolicyConfig, PPOPolicy, RandomPolicy
from esper_lab.policy.synthetic import OPTIMAL_RETURN, ImmuneAnswerEnv, KnownAnswerEnv
from esper_lab.ppo import PPOConfig, PPOTrainer, gae
from esper_lab.telemetry.schema import TIMING_COLUMNS

N_ENVS = 16  # 128 decisions a round: enough to find the paying seed within a few rounds
SEEDS = range(5)  # a learning test holds on every seed, not on one that happens to work
# Rounds to three good rounds in a row, seeds 0-4 (2026-12-08): flat 48, 40, 34, 39, 56; the slot
# transformer 50, 53, 32, 50, 52. Emrakul's task: flat 20, 40, 33, 28, 31; slot transformer 18,
# 14, 17, 19, 24 (the greedy policy may need a few rounds more). The budgets leave room above the slowest.
MAX_ROUNDS = 70
IMMUNE_MAX_ROUNDS = 50
STREAK = 3  # one good round can be luck; three in a row is a policy
TIMING_KEYS = set(TIMING_COLUMNS["updates"])


def trainer_for(encoder: str, n_envs: int = N_ENVS, recurrent: bool = False, seed: int = 0, recorder=None, **ppo) -> PPOTrainer:
    env = KnownAnswerEnv(n_envs)
    agent = Agent(PolicyConfig(encoder=encoder, max_slots=env.paying_slot + 1, recurrent=recurrent), seed=seed)
    return PPOTrainer(env, agent, PPOConfig(seed=seed, **ppo), recorder)


def test_gae_matches_the_recursion_written_out():
    rewards = torch.tensor([[1.0], [0.0], [2.0], [1.0]])
    values = torch.tensor([[0.5], [0.4], [0.3], [0.2]])
    dones = torch.tensor([[False], [True], [False], [True]])
    gamma, lam = 0.9, 0.8
    advantages, targets = gae(rewards, values, dones, gamma, lam)
    d1 = 0.0 - 0.4  # episode ends after step 1: nothing bootstrapped
    d0 = 1.0 + gamma * 0.4 - 0.5
    d3 = 1.0 - 0.2
    d2 = 2.0 + gamma * 0.2 - 0.3
    expected = torch.tensor([[d0 + gamma * lam * d1], [d1], [d2 + gamma * lam * d3], [d3]])
    assert torch.allclose(advantages, expected) and torch.allclose(targets, expected + values)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("encoder", ["flat", "slot_transformer"])
def test_ppo_reaches_90_percent_of_the_known_optimal_return(encoder, seed):
    """Within the budget, both the sampled policy (three rounds in a row at >= 90% on average) and
    the greedy one (every env of a fresh batch at >= 90%): sampling can average above the target a
    few rounds before the argmax is right on every env."""
    trainer = trainer_for(encoder, seed=seed)
    target = 0.9 * OPTIMAL_RETURN
    streak, greedy_worst = 0, None
    for _ in range(MAX_ROUNDS):
        streak = streak + 1 if trainer.train_round()["return_mean"] >= target else 0
        if streak >= STREAK:
            greedy_worst = min(s.episode_return for s in run_episodes(KnownAnswerEnv(4), PPOPolicy(trainer.agent, greedy=True)))
            if greedy_worst >= target:
                return
    pytest.fail(f"{encoder}, seed {seed}: {MAX_ROUNDS} rounds; sampled streak {streak}, greedy worst env {greedy_worst} (target {target:.3f})")


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("encoder", ["flat", "slot_transformer"])
def test_ppo_learns_emrakuls_known_answer_lyse_the_idle_phage_spare_the_needed_one(encoder, seed):
    """A learned Emrakul alone (Tamiyo's heads are not hers: she waits) on `ImmuneAnswerEnv`:
    holding forever and ordering at random both fall short of the known best return."""
    env = ImmuneAnswerEnv(N_ENVS)
    optimal = play(env, env.optimal_orders)
    assert play(env, lambda results: [Action(Op.WAIT)] * len(results)) < optimal - 0.5
    assert play(env, RandomPolicy(seed=seed).act) < optimal - 0.5
    agent = Agent(PolicyConfig(encoder=encoder, max_slots=len(env.planes[0]), role="emrakul"), seed=seed)
    trainer, streak = PPOTrainer(env, agent, PPOConfig(seed=seed)), 0
    for _ in range(IMMUNE_MAX_ROUNDS):
        streak = streak + 1 if trainer.train_round()["return_mean"] >= optimal - 0.05 else 0
        if streak == STREAK:
            break
    else:
        pytest.fail(f"{encoder}, seed {seed}: sampled return stayed below {optimal - 0.05:.3f} for {IMMUNE_MAX_ROUNDS} rounds")
    assert play(env, PPOPolicy(agent, greedy=True).act) == pytest.approx(optimal, abs=1e-4)


def play(env, act) -> float:
    """One episode of every env under `act(results) -> actions`: the mean return."""
    results, total = env.reset(), 0.0
    while not results[0].done:
        results = env.step(act(results))
        total += sum(r.reward.total for r in results) / len(results)
    return total


@pytest.mark.slow
@pytest.mark.parametrize("encoder,recurrent", [("flat", False), ("slot_transformer", True)])
def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path, encoder, recurrent):
    settings = dict(n_envs=4, recurrent=recurrent, seed=5)
    straight = trainer_for(encoder, **settings)
    straight_stats = [straight.train_round() for _ in range(4)]

    first = trainer_for(encoder, **settings)
    first_stats = [first.train_round() for _ in range(2)]
    first.save(tmp_path / "run.pt")
    del first
    resumed = PPOTrainer.resume(tmp_path / "run.pt", KnownAnswerEnv(4))
    resumed_stats = first_stats + [resumed.train_round() for _ in range(2)]

    assert resumed.round == straight.round == 4
    for (name, a), b in zip(straight.agent.state_dict().items(), resumed.agent.state_dict().values()):
        assert torch.equal(a, b), name  # weights and the running normalisers
    for a, b in zip(straight.optimizer.state_dict()["state"].values(), resumed.optimizer.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda stats: [{k: v for k, v in s.items() if k not in TIMING_KEYS} for s in stats]
    assert strip(straight_stats) == strip(resumed_stats)


def test_checkpoint_is_replaced_atomically(tmp_path, monkeypatch):
    trainer = trainer_for("flat", n_envs=2)
    path = tmp_path / "run.pt"
    trainer.train_round()
    trainer.save(path)
    trainer.train_round()
    trainer.save(path)
    assert torch.load(path, weights_only=True)["round"] == 2 and not list(tmp_path.glob("*.tmp"))

    def crash(payload, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    trainer.train_round()
    with pytest.raises(OSError, match="disk full"):
        trainer.save(path)
    assert torch.load(path, weights_only=True)["round"] == 2  # the last good checkpoint survives


class Tape:
    """A duck-typed recorder that keeps every call."""

    def __init__(self):
        self.steps, self.updates = [], []

    def record_step(self, env, episode, action, result, decision):
        self.steps.append((env, episode, action, result, decision))

    def record_update(self, update, stats):
        self.updates.append((update, stats))


def test_recorder_gets_every_decision_and_every_update():
    from esper_lab.telemetry.schema import UPDATE_STATS

    tape = Tape()
    trainer = trainer_for("slot_transformer", n_envs=3, recorder=tape, episodes_per_round=2)
    trainer.train_round()
    trainer.train_round()
    episode_length = trainer.env.episode_length
    assert len(tape.steps) == 2 * 2 * episode_length * 3
    assert sorted({episode for _, episode, *_ in tape.steps}) == [0, 1, 2, 3]
    for _, _, action, _, decision in tape.steps:
        assert set(decision) == {*HEADS, *(f"{h}_{p}" for h in HEADS for p in ("logp", "entropy", "mask")), "value", "logp", "used"}
        assert all(decision[h] == int(getattr(action, h)) for h in HEADS)
        assert decision["logp"] == pytest.approx(sum(decision[f"{h}_logp"] for h in HEADS), abs=1e-5)
    fresh = [op in (Op.WAIT, Op.GERMINATE) for op in Op]  # what a new plane allows
    for env in range(3):
        mine = [(result, decision) for e, _, _, result, decision in tape.steps if e == env]
        for (previous, _), (result, decision) in zip(mine[-1:] + mine, mine):
            offered = fresh if result.step == 1 else previous.masks.op.any(0).tolist()
            assert decision["op_mask"] == offered  # the op head was sampled under the plane's mask
    assert [u for u, _ in tape.updates] == [0, 1]
    assert set(UPDATE_STATS) <= set(tape.updates[0][1])


def test_train_command_checkpoints_and_resumes(tmp_path, capsys):
    checkpoint = tmp_path / "ppo.pt"
    common = [
        "train",
        "--envs",
        "2",
        "--episode-length",
        "2",
        "--encoder",
        "slot_transformer",
        "--checkpoint",
        str(checkpoint),
        "--telemetry",
        str(tmp_path / "telemetry"),
    ]
    assert main([*common, "--rounds", "1"]) == 0
    assert main([*common, "--rounds", "2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "update 1/1: return" in out and "update 2/2: return" in out
    assert torch.load(checkpoint, weights_only=True)["round"] == 2
    assert main(["train", "--resume"]) == 2  # a clear error, not a traceback


def test_a_resume_into_another_root_or_with_other_settings_is_refused_and_changes_nothing(tmp_path, capsys):
    checkpoint, root = tmp_path / "ppo.pt", tmp_path / "telemetry"
    common = ["train", "--envs", "2", "--episode-length", "2", "--checkpoint", str(checkpoint), "--cohort", "c"]
    assert main([*common, "--rounds", "1", "--telemetry", str(root)]) == 0
    saved = checkpoint.read_bytes()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    refusals = {
        "telemetry root": [*common, "--rounds", "2", "--resume", "--telemetry", str(tmp_path / "other")],
        "cohort": [*common[:-1], "d", "--rounds", "2", "--resume", "--telemetry", str(root)],
        "economy.rent_weight=9.0": [*common, "--rounds", "2", "--resume", "--telemetry", str(root), "--set", "economy.rent_weight=9.0"],
        "ppo.lr=0.01": [*common, "--rounds", "2", "--resume", "--telemetry", str(root), "--set", "ppo.lr=1e-2"],
        "envs=4": [*common, "--rounds", "2", "--resume", "--telemetry", str(root), "--envs", "4"],
    }
    for difference, argv in refusals.items():
        assert main(argv) == 2
        line = capsys.readouterr().err.strip()
        assert line.count("\n") == 0 and line.startswith("esper-lab: error: ") and difference in line, line
    assert checkpoint.read_bytes() == saved and sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # the knobs a resume may change: the total rounds and the worker processes
    assert main([*common, "--rounds", "2", "--resume", "--telemetry", str(root), "--workers", "0"]) == 0
    assert torch.load(checkpoint, weights_only=True)["round"] == 2


def test_an_entropy_target_raises_a_collapsing_heads_coefficient_and_lowers_a_wandering_one():
    env = KnownAnswerEnv(2)
    agent = Agent(PolicyConfig(encoder="slot_transformer"), seed=0)
    trainer = PPOTrainer(env, agent, PPOConfig(entropy_target={"op": 5.0, "slot": 0.0}))  # op can never reach 5 nats
    before = dict(trainer.entropy_coef)
    stats = trainer.train_round()
    assert trainer.entropy_coef["op"] > before["op"] and trainer.entropy_coef["slot"] < before["slot"]
    assert stats["entropy_coef_op"] == trainer.entropy_coef["op"]
    assert trainer.entropy_coef["blueprint"] == before["blueprint"]  # no target: fixed
    with pytest.raises(ValueError, match="entropy_target has unknown heads"):
        PPOConfig(entropy_target={"opp": 1.0})


def test_a_curriculum_narrows_the_learners_ops_for_its_rounds_then_opens_them():
    env = KnownAnswerEnv(2)
    config = PPOConfig(curriculum=({"rounds": 1, "ops": ["germinate"]}, {"rounds": 1, "ops": ["Germinate", "advance"]}))
    trainer = PPOTrainer(env, Agent(PolicyConfig(encoder="slot_transformer"), seed=0), config)
    chosen = []
    for _ in range(3):
        rollout = trainer.collect()
        chosen.append(set(rollout.choice["op"].flatten().tolist()))
        trainer.update(rollout)
        trainer.round += 1
    assert chosen[0] <= {Op.WAIT, Op.GERMINATE} and chosen[1] <= {Op.WAIT, Op.GERMINATE, Op.ADVANCE}
    assert trainer.allowed_ops() is None  # past the last stage: every op the plane allows
    with pytest.raises(ValueError, match="not ops"):
        PPOConfig(curriculum=({"rounds": 2, "ops": ["grow"]},))
