"""Fixed growth schedules and the schedule search (issue 25): what a schedule plays, what the
search spends, and that it never sees a held-out episode."""

from __future__ import annotations

import json
import math

import pytest
import torch
from legality import assert_legal

from esper_lab.config import RunConfig
from esper_lab.contracts import (
    EVAL_SEED_BASE,
    Action,
    AlphaCurve,
    AlphaTarget,
    BlendAlgorithm,
    Blueprint,
    Op,
    Tempo,
    eval_episode_seed,
    training_episode_seed,
)
from esper_lab.env import MorphEnv
from esper_lab.episodes import run_episodes
from esper_lab.experiments.evaluation import eval_seeds
from esper_lab.experiments.search import ETA, rungs, search_schedules, training_env_steps
from esper_lab.experiments.settings import Settings
from esper_lab.policy import OraclePolicy, SchedulePolicy
from esper_lab.policy.schedules import Germination, Schedule, germinable, random_schedule
from esper_lab.seeds import BLUEPRINTS, MAX_INTERNAL_LEVEL
from esper_lab.seeds.ladders import START_LEVEL
from esper_lab.vecenv import VecEnv

STAGE1 = dict(task="digits_cnn", density="a0", blueprints=["noop", "conv_light", "conv_heavy", "attention"], batches_per_step=2, data_fraction=0.25)
DEEP = 1  # digits_cnn at a0 has two surfaces; the second is the deep one


def config(**changes) -> RunConfig:
    return RunConfig(**{**STAGE1, "episode_length": 4, **changes})


class Played:
    """Wraps a policy: asserts every action is legal under the masks it was shown, keeps them."""

    def __init__(self, policy):
        self.policy, self.actions = policy, []

    def act(self, results):
        actions = self.policy.act(results)
        for result, action in zip(results, actions):
            assert_legal(result, action)
        self.actions.append(actions)
        return actions


def test_a_schedule_germinates_what_it_says_when_it_says_and_plays_only_legal_actions():
    heavy = Germination(0, DEEP, Blueprint.CONV_HEAVY, BlendAlgorithm.GATE, AlphaCurve.COSINE, Tempo.STANDARD, AlphaTarget.MOST)
    light = Germination(2, 0, Blueprint.ATTENTION)
    late = Schedule((Germination(1, 0, Blueprint.CONV_LIGHT),))
    played = Played(SchedulePolicy([Schedule((light, heavy)), late]))  # one schedule per env
    run_episodes(VecEnv(config(), 2), played)
    first, second = zip(*played.actions)
    assert list(first) == [heavy.action(), Action(Op.ADVANCE, DEEP), light.action(), Action(Op.ADVANCE, DEEP)]
    assert list(second) == [Action(Op.WAIT), late.germinations[0].action(), Action(Op.ADVANCE, 0), Action(Op.ADVANCE, 0)]


def test_a_one_seed_schedule_plays_exactly_what_the_oracle_plays():
    """The oracle is the schedule 'conv_heavy at the deep surface at the first decision', fast and full."""
    oracle, schedule = Played(OraclePolicy()), Played(SchedulePolicy(Schedule((Germination(0, DEEP, Blueprint.CONV_HEAVY),))))
    for policy in (oracle, schedule):
        run_episodes(VecEnv(config(episode_length=8), 1), policy)
    assert schedule.actions == oracle.actions
    assert {a.op for (a,) in oracle.actions} == {Op.GERMINATE, Op.ADVANCE, Op.WAIT}


def test_a_ladder_grows_to_its_planned_level_and_a_vetoed_germination_is_not_retried():
    ladder = config(episode_length=8, blueprints=["conv_channel_ladder"])
    env = VecEnv(ladder, 1)
    played = Played(SchedulePolicy(Schedule((Germination(0, DEEP, Blueprint.CONV_CHANNEL_LADDER, level=3),))))
    levels = []
    run_episodes(env, played, on_step=lambda _, __, results: levels.append(int(results[0].report.column("internal_level")[DEEP])))
    assert levels[-1] == 3 and sum(a.op is Op.GROW_INTERNAL for (a,) in played.actions) == 3 - START_LEVEL

    starved = VecEnv(config(param_budget=1e-3), 1)  # no seed fits the budget: every germination is vetoed
    played = Played(SchedulePolicy(Schedule((Germination(0, DEEP, Blueprint.CONV_HEAVY), Germination(1, 0, Blueprint.ATTENTION)))))
    vetoes = []
    run_episodes(starved, played, on_step=lambda _, __, results: vetoes.append(results[0].metrics["veto"]))
    assert [a.op for (a,) in played.actions] == [Op.GERMINATE, Op.GERMINATE, Op.WAIT, Op.WAIT] and vetoes[:2] == [1.0, 1.0]


def test_a_schedule_round_trips_through_json_and_refuses_what_cannot_play():
    generator = torch.Generator().manual_seed(0)
    full = RunConfig(**{**STAGE1, "blueprints": None, "episode_length": 6})  # the ladders too
    schedules = [random_schedule(generator, full, 4) for _ in range(20)]
    assert any(g.level is not None for s in schedules for g in s.germinations)
    for schedule in schedules:
        assert Schedule.from_dict(json.loads(json.dumps(schedule.to_dict()))) == schedule
    with pytest.raises(ValueError, match="each slot at most once"):
        Schedule((Germination(0, 1, Blueprint.CONV_HEAVY), Germination(2, 1, Blueprint.ATTENTION)))
    with pytest.raises(ValueError, match="not a ladder"):
        Germination(0, 1, Blueprint.CONV_HEAVY, level=2)
    with pytest.raises(ValueError, match="a ladder grows to a level"):
        Germination(0, 1, Blueprint.CONV_CHANNEL_LADDER)
    with pytest.raises(ValueError, match="tempo='brisk' is not one of: fast, standard, slow"):
        Schedule.from_dict({"germinations": [{"step": 0, "slot": 1, "blueprint": "conv_heavy", "tempo": "brisk"}]})


def test_random_schedules_stay_inside_the_space_the_config_allows_and_repeat_per_seed():
    full = RunConfig(**{**STAGE1, "blueprints": None, "episode_length": 6, "max_seeds": 1})
    fitting = germinable(full)

    def draws(seed: int, **kwargs) -> list[Schedule]:
        generator = torch.Generator().manual_seed(seed)
        return [random_schedule(generator, full, 4, **kwargs) for _ in range(60)]

    schedules = draws(0)
    assert schedules == draws(0) and schedules != draws(1)
    assert all(len(s.germinations) == 1 for s in schedules)  # max_seeds caps the plan: nothing is pruned
    germinations = [g for s in schedules for g in s.germinations]
    assert all(g.blueprint in fitting[g.slot] and g.blueprint is not Blueprint.NOOP and 0 <= g.step < 6 for g in germinations)
    assert {g.step for g in germinations} == set(range(6)) and {g.blueprint for g in germinations} == set(fitting[DEEP])
    levels = {g.level for g in germinations if BLUEPRINTS[g.blueprint].is_ladder}
    assert levels <= set(range(START_LEVEL, MAX_INTERNAL_LEVEL + 1)) and len(levels) > 1
    fixed = [g for s in draws(0, grow=False) for g in s.germinations if BLUEPRINTS[g.blueprint].is_ladder]
    assert fixed and {g.level for g in fixed} == {START_LEVEL}  # a policy without grow_internal: no dial to turn


@pytest.mark.parametrize(("episodes", "batch"), [(800, 8), (20, 2), (15, 1), (24, 4), (6, 2), (2, 2)])
def test_the_halving_plan_spends_exactly_the_budget_in_full_batches(episodes, batch):
    plan = rungs(episodes, batch)
    new = [r.candidates * (r.episodes - (plan[i - 1].episodes if i else 0)) for i, r in enumerate(plan)]
    assert sum(new) == episodes and all(n % batch == 0 for n in new)
    assert plan[0].episodes == 1 and all(b.candidates <= a.candidates and b.episodes == ETA * a.episodes for a, b in zip(plan, plan[1:]))
    assert len(plan) == 1 or plan[-1].candidates >= ETA
    if episodes == 800:  # Stage 1's full preset: 100 rounds x 8 envs
        assert [(r.candidates, r.episodes) for r in plan] == [(368, 1), (72, 3), (24, 9), (8, 27)]


def stage1_settings(rounds: int = 10) -> Settings:
    economy = {"reward_signal": "gain_over_static"}  # Stage 1's: a task reward that does not credit the host's own learning
    return Settings.build({**STAGE1, "episode_length": 4, "rounds": rounds, "envs": 2, "workers": 0, "economy": economy})


@pytest.fixture(scope="module")
def searched():
    """One search at a two-rung budget, with every episode seed the envs were reset with and every
    env step they took recorded in-process."""
    settings, seeds, steps = stage1_settings(), [], []
    reset, step = MorphEnv.reset, MorphEnv.step
    MorphEnv.reset = lambda env, seed=None: (seeds.append(seed), reset(env, seed))[1]
    MorphEnv.step = lambda env, action: (steps.append(1), step(env, action))[1]
    try:
        result = search_schedules(settings, training_env_steps(settings), seed=0)
    finally:
        MorphEnv.reset, MorphEnv.step = reset, step
    return settings, result, seeds, len(steps)


@pytest.mark.slow
def test_the_search_spends_exactly_the_policys_training_env_steps(searched):
    settings, result, _, steps = searched
    assert training_env_steps(settings) == 10 * 1 * 2 * 4 == steps == result.env_steps
    assert [(r.candidates, r.episodes) for r in result.rungs] == [(12, 1), (4, 3)] and result.candidates == 12
    assert sum(row["episodes"] for row in result.table) * settings.run.episode_length == steps
    with pytest.raises(ValueError, match="multiple of episode_length"):
        search_schedules(settings, 10, seed=0)


def test_the_search_never_sees_a_held_out_episode_seed(searched):
    settings, _, seeds, _ = searched
    held_out = {eval_episode_seed(settings.run.seed, k) for k in range(10_000)} | set(eval_seeds(settings.run.seed, 100))
    assert seeds and not set(seeds) & held_out and all(s < EVAL_SEED_BASE for s in seeds)
    trained = {training_episode_seed(settings.run.seed, env, episode) for env in range(settings.envs) for episode in range(settings.rounds)}
    assert set(seeds) <= trained  # the very episodes PPO trains on
    assert len(set(seeds)) == 3  # a rung's candidates share its seeds: the finalists' three


def test_the_search_chooses_the_best_finalist(searched):
    _, result, _, _ = searched
    finalists = [row for row in result.table if row["rung"] == len(result.rungs) - 1]
    assert len(finalists) == result.rungs[-1].candidates and all(row["episodes"] == result.rungs[-1].episodes for row in finalists)
    top = max(finalists, key=lambda row: row["mean_return"])
    assert result.score == top["mean_return"] and result.best == Schedule.from_dict(top["schedule"])
    assert all(math.isfinite(row["mean_return"]) for row in result.table)
    json.dumps(result.to_dict())  # a manifest can store it


@pytest.mark.slow
def test_the_search_is_deterministic_for_a_seed(searched):
    settings, result, _, _ = searched
    assert search_schedules(settings, training_env_steps(settings), seed=0) == result
    one_batch = 2 * settings.run.episode_length
    first, other = (search_schedules(settings, one_batch, seed=s) for s in (0, 1))
    assert [row["schedule"] for row in first.table] == [row["schedule"] for row in result.table[:2]]  # the same stream's first draws
    assert [row["schedule"] for row in other.table] != [row["schedule"] for row in first.table]
