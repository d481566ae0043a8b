"""Shares come out as fractions: conv_heavy's share of the in-forward seed params, recorded from
real env steps, is exact wherever a verdict or a report reads it, and no query hands polars a
Decimal column (DuckDB's integer sums are HUGEINT, which polars divides without the fraction)."""

from __future__ import annotations

import inspect

import polars as pl
import pytest

from esper_lab.config import RunConfig
from esper_lab.contracts import GREEDY, Action, Blueprint, Op
from esper_lab.episodes import run_episodes
from esper_lab.experiments.report import outcome_table
from esper_lab.policy import OraclePolicy
from esper_lab.studies.evidence import held_out
from esper_lab.telemetry import Recorder, Store
from esper_lab.telemetry.queries import Queries
from esper_lab.vecenv import VecEnv

COHORT = "shares"
# long enough for both seeds to reach the forward path: conv_heavy from step 3, conv_light from step 7
CONFIG = RunConfig(episode_length=8, batches_per_step=2, data_fraction=0.1, blueprints=(Blueprint.CONV_HEAVY, Blueprint.CONV_LIGHT))


class TwoSeeds:
    """conv_heavy at slot 0 and conv_light at slot 1, each germinated and advanced into the
    forward path on the oracle's schedule; the second moves only on steps the first waits."""

    def __init__(self):
        self.oracles = (OraclePolicy(Blueprint.CONV_HEAVY, slot=0), OraclePolicy(Blueprint.CONV_LIGHT, slot=1))

    def act(self, results):
        return [next((a for o in self.oracles if (a := o.act([r])[0]).op is not Op.WAIT), Action(Op.WAIT)) for r in results]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("shares")
    with Recorder(root, COHORT, CONFIG, run_id="greedy", kind="eval", arm=GREEDY) as recorder:
        run_episodes(VecEnv(CONFIG, 1), TwoSeeds(), 1, recorder=recorder)
    return Store(root)


def test_conv_heavy_share_is_the_exact_fraction_everywhere_it_is_read(store):
    slots = store.rows("slots")
    last = slots.filter((pl.col("step") == slots["step"].max()) & (pl.col("in_forward") == 1))
    heavy = int(last.filter(pl.col("blueprint") == int(Blueprint.CONV_HEAVY))["seed_param_count_active"].sum())
    forward = int(last["seed_param_count_active"].sum())
    share = heavy / forward
    assert 0 < share < 1  # both seeds in forward: a fraction that integer division would lose
    outcomes = held_out(store)
    assert outcomes["conv_heavy_share"].to_list() == [share]
    steps = store.conv_heavy_share(COHORT, "greedy")
    assert steps["conv_heavy_forward_param_share"][-1] == share and steps["forward_seed_params"][-1] == forward
    assert outcome_table(outcomes)["conv_heavy share"].to_list() == [f"{share:.3f}"]


def test_no_query_returns_a_decimal_column(store):
    """Every named query that runs on its defaults (the column types do not depend on the rows)."""
    queries = [
        name
        for name, method in inspect.getmembers(Queries, inspect.isfunction)
        if not name.startswith("_") and all(p.default is not p.empty for p in list(inspect.signature(method).parameters.values())[1:])
    ]
    assert {"episode_outcomes", "conv_heavy_share", "arm_summary", "oscillation"} <= set(queries)
    wide = lambda dtype: isinstance(dtype, pl.Decimal) or dtype == pl.Int128
    decimals = {name: [c for c, dtype in getattr(store, name)().schema.items() if wide(dtype)] for name in queries}
    assert {name: columns for name, columns in decimals.items() if columns} == {}
