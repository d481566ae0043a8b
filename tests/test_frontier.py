"""The scoreboard: static-width arms, the static frontier and its gains, training FLOPs, and the
test split that nothing the policy sees reads (issue 25)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_lab import env as env_module
from esper_lab.config import RunConfig
from esper_lab.contracts import STATIC_ARMS, WIDTH_SCALES, Action, Op, Stream, stream_seed
from esper_lab.env import TRAIN_FLOPS_PER_FORWARD, MorphEnv
from esper_lab.episodes import run_episodes
from esper_lab.experiments.evaluation import eval_seeds, evaluate_arms
from esper_lab.experiments.frontier import frontier_at, frontier_gains
from esper_lab.experiments.settings import Settings
from esper_lab.hosts import CNNConfig, CNNHost
from esper_lab.policy import HeuristicPolicy, Observer, OraclePolicy
from esper_lab.studies.evidence import held_out
from esper_lab.telemetry import Store
from esper_lab.training import evaluate, train_epoch
from esper_lab.vecenv import VecEnv

SHAPE = dict(task="digits_cnn", episode_length=4, batches_per_step=3, data_fraction=0.25)


# --- the frontier -------------------------------------------------------------------------------
costs = st.lists(st.integers(1_000, 100_000), min_size=2, max_size=6, unique=True)


@settings(max_examples=200, deadline=None)
@given(costs=costs, data=st.data())
def test_the_frontier_is_monotone_in_cost_and_exact_at_the_measured_widths(costs, data):
    scores = data.draw(st.lists(st.floats(0, 100), min_size=len(costs), max_size=len(costs)))
    order = np.argsort(costs)
    envelope = np.maximum.accumulate(np.asarray(scores)[order])
    for cost, best in zip(np.asarray(costs)[order], envelope):
        assert frontier_at(costs, scores, float(cost)) == pytest.approx(best, abs=1e-9)
    grid = np.geomspace(min(costs), max(costs), 25)
    values = [frontier_at(costs, scores, float(c)) for c in grid]
    assert all(b >= a - 1e-9 for a, b in zip(values, values[1:]))
    assert frontier_at(costs, scores, min(costs) * 0.99) is None and frontier_at(costs, scores, max(costs) * 1.01) is None


def test_a_wider_host_that_scores_lower_does_not_lower_the_frontier():
    assert frontier_at([1000, 2000, 4000], [80.0, 90.0, 85.0], 4000) == 90.0
    assert frontier_at([1000, 4000], [80.0, 90.0], 2000) == pytest.approx(85.0)  # halfway in log cost


def test_frontier_gains_pair_each_arm_with_the_static_hosts_of_its_own_episode():
    rows = []
    for episode, lift in ((1, 0.0), (2, 10.0)):
        for arm, params, score in (("static", 1000, 80), ("static_w125", 2000, 85), ("static_w200", 4000, 90), ("ppo_greedy", 2000, 88)):
            rows.append(
                dict(cohort="c", parent_run="p", episode_seed=episode, arm=arm, params_total=params, train_flops=params * 1e6, score=score + lift)
            )
    gains = frontier_gains(pl.DataFrame(rows)).filter(pl.col("arm") == "ppo_greedy")
    assert gains["frontier_params"].to_list() == [85.0, 95.0] and gains["frontier_gain_params"].to_list() == [3.0, 3.0]
    assert gains["frontier_gain_flops"].to_list() == [3.0, 3.0]


# --- static-width arms --------------------------------------------------------------------------
def _plain_run(config: RunConfig, episode_seed: int) -> float:
    """The host of `config` trained without any plane, on the batches the env draws for
    `episode_seed`, then read on the test split: what a static-width arm must reproduce."""
    seed = lambda stream: stream_seed(episode_seed, 0, stream)
    split = env_module._images("digits", config.seed, None, "cpu")
    keep = max(int(len(split.train_y) * config.data_fraction), config.batch_size)
    rows = torch.randperm(len(split.train_y), generator=torch.Generator().manual_seed(seed(Stream.DATA)))[:keep]
    with torch.random.fork_rng():
        torch.manual_seed(seed(Stream.HOST))
        host = CNNHost(CNNConfig(**config.host_config()))
    optimizer = torch.optim.Adam(host.parameters(), lr=config.lr, fused=True)
    order = torch.Generator().manual_seed(seed(Stream.DATA))
    for _ in range(config.episode_length):
        train_epoch(host, None, split.batches(rows, config.batch_size, order, config.batches_per_step), optimizer)
    return evaluate(host, None, split.test_pixels, split.test_y, split.standardise).accuracy


@pytest.mark.slow
def test_a_static_width_arm_is_a_plain_training_run_of_that_host_on_the_same_batches(tmp_path):
    study = Settings.build(dict(SHAPE, rounds=0, arms=list(STATIC_ARMS), envs=2, workers=0, eval_episodes=2))
    evaluate_arms(study, None, tmp_path, "c", "p")
    outcomes = held_out(Store(tmp_path))
    for arm in STATIC_ARMS:
        config = study.run if arm == "static" else study.run.widened(WIDTH_SCALES[arm])
        for episode_seed in eval_seeds(0, 2):
            recorded = outcomes.filter((pl.col("arm") == arm) & (pl.col("episode_seed") == episode_seed))["test_metric"].item()
            assert recorded == _plain_run(config, episode_seed), arm  # bit-identical, not approximately
    widths = outcomes.group_by("arm").agg(pl.col("params_total").first()).sort("params_total")
    assert widths["arm"].to_list() == list(STATIC_ARMS)  # narrowest to widest: 5,050 to 19,562 params on digits
    assert widths["params_total"].to_list() == [5050, 7790, 11122, 19562]
    static = outcomes.filter(pl.col("arm").is_in(STATIC_ARMS))
    assert static["frontier_gain_params"].max() == 0.0  # a frontier point is never above the frontier


# --- training FLOPs -----------------------------------------------------------------------------
def test_training_flops_of_a_static_run_are_the_analytic_count():
    config = RunConfig(**SHAPE)
    env = MorphEnv(config)
    env.reset(eval_seeds(0, 1)[0])
    samples = min(len(env.train_rows), config.batches_per_step * config.batch_size)
    # digits_cnn (8, 16) at a0, per image: the stem conv, block 1 (two 3x3 convs at 8x8), block 2
    # (3x3 stride 2, 3x3, a 1x1 shortcut at 4x4) and the linear head, 2 FLOPs per multiply-add
    macs = 1 * 8 * 9 * 64 + 2 * (8 * 8 * 9 * 64) + (8 * 16 * 9 * 16 + 16 * 16 * 9 * 16 + 8 * 16 * 16) + 16 * 10
    flops = [env.step(Action(Op.WAIT)).metrics["train_flops"] for _ in range(config.episode_length)]
    assert flops == [TRAIN_FLOPS_PER_FORWARD * samples * 2 * macs] * config.episode_length


def test_training_flops_count_the_seeds_that_ran():
    config = RunConfig(**SHAPE, blueprints=["noop", "conv_light", "conv_heavy", "attention"])
    with VecEnv(config, 1) as vec:
        rows = []
        run_episodes(vec, OraclePolicy(), on_step=lambda _, __, results: rows.append(results[0].metrics))
    samples = config.batches_per_step * config.batch_size  # 192 of the 269 rows data_fraction keeps
    assert rows[0]["forward_flops"] == 0  # step 1 germinates: the seed does not run yet
    assert rows[-1]["forward_flops"] > 0  # conv_heavy in forward at the end, running every step since it was advanced
    assert rows[-1]["train_flops"] == pytest.approx(rows[0]["train_flops"] + TRAIN_FLOPS_PER_FORWARD * samples * rows[-1]["forward_flops"])


# --- the test split -----------------------------------------------------------------------------
def test_the_three_parts_of_a_split_hold_every_image_once_and_the_seed_fixes_them():
    from collections import Counter

    from sklearn import datasets

    from esper_lab.data import load_digits, load_pydoc_corpus

    rows = lambda pixels, y: Counter((bytes(p.flatten().tolist()), int(label)) for p, label in zip(pixels, y))
    split, again, other = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    parts = [rows(split.train_pixels, split.train_y), rows(split.val_pixels, split.val_y), rows(split.test_pixels, split.test_y)]
    bunch = datasets.load_digits()
    assert parts[0] + parts[1] + parts[2] == rows(torch.from_numpy(bunch.images.astype(np.uint8)), bunch.target)  # each image in one part
    assert [sum(p.values()) for p in parts] == [1077, 360, 360]
    assert torch.equal(split.test_pixels, again.test_pixels) and not torch.equal(split.test_y, other.test_y)
    corpus = load_pydoc_corpus()
    assert torch.equal(torch.cat([corpus.train_ids, corpus.val_ids, corpus.test_ids]), corpus.encode(corpus.text))


def test_nothing_the_policy_sees_or_is_rewarded_for_reads_the_test_split(monkeypatch):
    """Play the same episode twice, the second time with the test split replaced by noise: every
    observation, mask, reward and step metric the policy can read comes out the same; only the
    reported test metric moves. A reward or feature that read the test split would fail here."""
    config = RunConfig(**SHAPE, blueprints=["noop", "conv_light", "conv_heavy", "attention"], test_every=1)

    def play() -> list:
        observer, policy, seen = Observer(), HeuristicPolicy(), []
        with VecEnv(config, 1) as vec:
            results = vec.reset(seeds=eval_seeds(0, 1))
            while not results[0].done:
                observation = observer(results)
                seen.append((observation, results[0]))
                results = vec.step(policy.act(results))
            seen.append((observer(results), results[0]))
        return seen

    clean = play()
    original = env_module._images

    def poisoned(*args):
        split = original(*args)
        noise = torch.Generator().manual_seed(1)
        return dataclasses.replace(
            split,
            test_pixels=torch.randint(0, 17, split.test_pixels.shape, generator=noise, dtype=torch.uint8),
            test_y=torch.randint(0, 10, split.test_y.shape, generator=noise),
        )

    monkeypatch.setattr(env_module, "_images", poisoned)
    dirty = play()
    moved = False
    for (seen, result), (seen_dirty, result_dirty) in zip(clean, dirty, strict=True):
        for field in dataclasses.fields(seen):
            assert torch.equal(getattr(seen, field.name), getattr(seen_dirty, field.name)), field.name
        assert result.reward == result_dirty.reward and torch.allclose(result.report.values, result_dirty.report.values, 0, 0, equal_nan=True)
        assert torch.equal(result.masks.op, result_dirty.masks.op)
        for name, value in result.metrics.items():
            if name == "test_metric":
                moved |= not (math.isnan(value) and math.isnan(result_dirty.metrics[name])) and value != result_dirty.metrics[name]
            else:
                assert value == result_dirty.metrics[name] or (math.isnan(value) and math.isnan(result_dirty.metrics[name])), name
    assert moved  # the poison reached the test metric, so the comparison above was not vacuous
