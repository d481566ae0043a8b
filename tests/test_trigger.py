"""The gain trigger (`GainTriggerPolicy`): legal over whole episodes, commits when its threshold is
low, never when it is above every score, and commits the candidate with the highest score."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest
import torch
from legality import assert_legal

from esper_lab.config import RunConfig
from esper_lab.contracts import ActionMasks, Op, Stage, StepResult
from esper_lab.env import MorphEnv
from esper_lab.episodes import run_episodes
from esper_lab.policy import GainTriggerPolicy
from esper_lab.policy.trigger import GAIN_THRESHOLD, TRUST_DELTA, gain_scores
from esper_lab.vecenv import VecEnv

CONFIG = RunConfig(
    task="digits_cnn",
    density="a0",
    blueprints=["noop", "conv_light", "conv_heavy", "attention"],
    episode_length=6,
    batches_per_step=3,
    data_fraction=0.25,
)


class Watched:
    """Wraps a policy: asserts each action is allowed by the masks it was given, counts ops and
    the largest number of seeds in the forward path any result showed."""

    def __init__(self, policy):
        self.policy = policy
        self.ops: Counter[Op] = Counter()
        self.most_in_forward = 0

    def act(self, results: list[StepResult]):
        actions = self.policy.act(results)
        for result, action in zip(results, actions):
            assert_legal(result, action)
            self.ops[action.op] += 1
            self.most_in_forward = max(self.most_in_forward, int(result.report.column("in_forward").sum()))
        return actions


def play(threshold: float, episodes: int = 1) -> tuple[Watched, list]:
    watched = Watched(GainTriggerPolicy(threshold))
    summaries = run_episodes(VecEnv(CONFIG, 2), watched, episodes=episodes)  # an illegal action would raise
    return watched, summaries


@pytest.mark.parametrize("threshold", [0.0, GAIN_THRESHOLD])
def test_gain_trigger_is_always_legal(threshold):
    watched, summaries = play(threshold, episodes=2)
    assert len(summaries) == 4
    assert {Op.GERMINATE, Op.ADVANCE} <= set(watched.ops)


def test_gain_trigger_commits_when_the_threshold_is_low():
    watched, summaries = play(0.0)
    assert watched.most_in_forward >= 1  # a candidate was committed into the forward path
    assert all(s.forward_params > 0 for s in summaries)


def test_gain_trigger_never_commits_above_every_score():
    watched, summaries = play(math.inf)
    assert watched.most_in_forward == 0
    assert all(s.forward_params == 0 for s in summaries)
    assert watched.ops[Op.PRUNE] >= 2  # each env's first candidate was judged and removed
    # the surfaces incubate different blueprints at once (the rotation is offset by surface)
    assert {name for s in summaries for name in s.germinated} == {"conv_light", "conv_heavy"}


# --- decisions on hand-built results ------------------------------------------------------------
def incubating(**columns: list[float]) -> StepResult:
    """A reset result with both slots' seeds in TRAINING, every op legal, and the report's
    `columns` set per slot."""
    result = MorphEnv(CONFIG).reset()
    report = result.report
    values = report.values.clone()
    for name, per_slot in {"stage": [Stage.TRAINING] * 2, **columns}.items():
        values[:, report.columns.index(name)] = torch.tensor([float(v) for v in per_slot])
    masks = ActionMasks(op=torch.ones_like(result.masks.op), blueprint=result.masks.blueprint, phage=result.masks.phage)
    return dataclasses.replace(result, step=3, report=dataclasses.replace(report, values=values), masks=masks)


# Both seeds show the same gradient, delta and output; slot 1 has half slot 0's parameters.
SENSED = dict(seed_grad_norm=[1e-3, 1e-3], delta_l2_norm=[0.05, 0.05], output_l2_norm=[10.0, 10.0], seed_param_count_active=[1000, 500])


def test_gain_score_is_the_first_order_bound_per_thousand_params():
    scores = gain_scores(incubating(**SENSED).report)
    assert scores.tolist() == pytest.approx([5e-4, 1e-3])


def test_gain_trigger_commits_the_highest_score():
    action = GainTriggerPolicy(threshold=1e-4).act([incubating(**SENSED)])[0]
    assert (action.op, action.slot) == (Op.ADVANCE, 1)  # the same bound, half the parameters


def test_gain_trigger_skips_a_candidate_outside_the_trust_region():
    outside = incubating(**{**SENSED, "delta_l2_norm": [0.05, 2 * TRUST_DELTA]})  # slot 1 scores higher still
    assert gain_scores(outside.report)[1] > gain_scores(outside.report)[0]
    action = GainTriggerPolicy(threshold=1e-4).act([outside])[0]
    assert (action.op, action.slot) == (Op.ADVANCE, 0)
    action = GainTriggerPolicy(threshold=1e-3).act([outside])[0]  # slot 0 fails the threshold: the first failing goes
    assert (action.op, action.slot) == (Op.PRUNE, 0)


def test_gain_trigger_prunes_failing_candidates_but_waits_for_unmeasured_ones():
    sensed = incubating(**SENSED)
    action = GainTriggerPolicy(threshold=1.0).act([sensed])[0]
    assert (action.op, action.slot) == (Op.PRUNE, 0)
    unmoved = incubating(**{**SENSED, "delta_l2_norm": [0.0, 0.05]})  # slot 0's sensors have not seen it move yet
    action = GainTriggerPolicy(threshold=1.0).act([unmoved])[0]
    assert (action.op, action.slot) == (Op.PRUNE, 1)
