"""Baseline policies on real environments: legality, determinism, and whether the rules help."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from esper_lab.config import RunConfig
from esper_lab.contracts import ActionMasks, Op
from esper_lab.env import MorphEnv
from esper_lab.episodes import run_episodes
from esper_lab.policy import HeuristicPolicy, RandomPolicy
from esper_lab.vecenv import VecEnv


class Checked:
    """Wraps a policy; asserts every action is allowed by the masks it was given, counts ops."""

    def __init__(self, policy):
        self.policy = policy
        self.ops: Counter[Op] = Counter()

    def act(self, results):
        actions = self.policy.act(results)
        assert len(actions) == len(results)
        for result, action in zip(results, actions):
            if action.op is not Op.WAIT:
                assert 0 <= action.slot < result.masks.op.shape[0]
                assert result.masks.op[action.slot, action.op], f"{action} not allowed by the op mask"
            if action.op is Op.GERMINATE:
                assert result.masks.blueprint[action.slot, action.blueprint], f"{action}: blueprint not allowed"
            self.ops[action.op] += 1
        return actions


def small(**changes) -> RunConfig:
    base = dict(density="a1", episode_length=8, batches_per_step=4, data_fraction=0.3, max_seeds=3)
    return RunConfig(**{**base, **changes})


def test_random_policy_is_always_legal():
    policy = Checked(RandomPolicy(seed=0))
    summaries = run_episodes(VecEnv(small(), 2), policy, episodes=2)  # an illegal action would raise
    assert len(summaries) == 4
    # The run explored the lifecycle, not just WAIT: germinations, advances and prunes.
    assert {Op.GERMINATE, Op.ADVANCE, Op.PRUNE} <= set(policy.ops)
    assert len(policy.ops) >= 4


def test_random_policy_is_legal_on_transformer_projection_surfaces():
    policy = Checked(RandomPolicy(seed=0))
    config = RunConfig(task="pydoc_lm", density="a2", episode_length=6, batches_per_step=2, data_fraction=0.3)
    run_episodes(VecEnv(config, 2), policy)
    assert policy.ops[Op.GERMINATE] >= 2


def test_heuristic_policy_is_always_legal():
    policy = Checked(HeuristicPolicy())
    summaries = run_episodes(VecEnv(small(), 2), policy, episodes=2)
    assert len(summaries) == 4
    assert {Op.GERMINATE, Op.ADVANCE, Op.GROW_INTERNAL} <= set(policy.ops)


def test_random_policy_is_deterministic_per_seed():
    result = MorphEnv(small()).reset()
    n_slots = result.masks.op.shape[0]
    # Everything legal, so every head of the random policy has real choices to make.
    open_result = dataclasses.replace(
        result, masks=ActionMasks(op=torch.ones(n_slots, len(Op), dtype=torch.bool), blueprint=result.masks.blueprint, phage=result.masks.phage)
    )

    def actions(seed: int, n_envs: int = 3, steps: int = 40):
        policy = RandomPolicy(seed)
        return [policy.act([open_result] * n_envs) for _ in range(steps)]

    first = actions(5)
    assert first == actions(5)
    assert first != actions(6)
    assert len({a.op for step in first for a in step}) == len(Op)  # every op drawn at some point
    # Each env has its own stream: env 0's draws do not depend on how many envs there are.
    assert [step[0] for step in first] == [step[0] for step in actions(5, n_envs=1)]
    assert [step[0] for step in first] != [step[1] for step in first]


def test_random_policy_samples_only_legal_ops_and_all_of_them():
    result = MorphEnv(small()).reset()
    ops = torch.zeros_like(result.masks.op)
    ops[:, Op.WAIT] = True
    ops[2, Op.PRUNE] = ops[4, Op.ADVANCE] = ops[4, Op.GROW_INTERNAL] = True
    partial = dataclasses.replace(result, masks=ActionMasks(op=ops, blueprint=result.masks.blueprint, phage=result.masks.phage))
    policy = RandomPolicy(seed=1)
    seen = Counter((a.op, a.slot if a.op is not Op.WAIT else None) for _ in range(200) for a in policy.act([partial]))
    assert set(seen) == {(Op.WAIT, None), (Op.PRUNE, 2), (Op.ADVANCE, 4), (Op.GROW_INTERNAL, 4)}
    assert min(seen.values()) > 25  # uniform over the 4 legal ops: about 50 each


def test_random_policy_replays_a_whole_run():
    config = small(episode_length=4)
    first = run_episodes(VecEnv(config, 2), RandomPolicy(seed=2))
    assert first == run_episodes(VecEnv(config, 2), RandomPolicy(seed=2))
    other = run_episodes(VecEnv(config, 2), RandomPolicy(seed=3))
    assert [s.ops for s in other] != [s.ops for s in first]


# --- does the heuristic help? ------------------------------------------------------------------
# Full-data epochs, long enough for a seed germinated early to be blended for several epochs.
# Both policies see the same host inits and data orders (same seeds), so envs pair up.
HEURISTIC_RUN = dict(task="digits_cnn", episode_length=12)
HEURISTIC_SEEDS = (0, 1, 2)
# Of the 6 (seed, env) pairs, the heuristic must win most (measured: 5 of 6, mean 0.900 vs 0.898:
# the mean moves with one bad episode, so the paired sign is what is checked here; the real
# comparison, with CIs on held-out seeds, is the packs' evaluation)
HEURISTIC_PAIR_WINS = 4


@pytest.mark.slow
def test_heuristic_beats_random_on_digits():
    heuristic, random = [], []
    for seed in HEURISTIC_SEEDS:
        config = RunConfig(seed=seed, **HEURISTIC_RUN)
        heuristic += [s.final_metric for s in run_episodes(VecEnv(config, 2), HeuristicPolicy())]
        random += [s.final_metric for s in run_episodes(VecEnv(config, 2), RandomPolicy(seed))]
    assert sum(h > r for h, r in zip(heuristic, random)) >= HEURISTIC_PAIR_WINS, (heuristic, random)
