"""Each named store query against answers worked out by hand on a small synthetic telemetry set.

The set is written through the real `Recorder` from hand-made step results (3 runs, 2 cohorts,
2 slots, 3 steps per episode), so what is checked is exactly what dashboards will read.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from esper_lab.config import RunConfig
from esper_lab.contracts import (
    EMRAKUL_HEADS,
    HEADS,
    SLOT_COLUMNS,
    TAMIYO_HEADS,
    VETO_GERMINATE,
    VETO_INTERNAL_GROW,
    Action,
    ActionMasks,
    Blueprint,
    Event,
    EventKind,
    Op,
    PlaneReport,
    RewardParts,
    Stage,
    StepResult,
    heads_used,
)
from esper_lab.telemetry import Recorder
from esper_lab.telemetry.store import Store

CONFIG = RunConfig(episode_length=3)
LADDER, HEAVY = Blueprint.CONV_CHANNEL_LADDER, Blueprint.CONV_HEAVY
DORMANT = (Stage.DORMANT, -1, 0, 0, 0, 0.0)  # slot: stage, blueprint, active params, level, max level, delta


FORWARD = (Stage.BLENDING, Stage.HOLDING, Stage.FOSSILIZED)  # seeds here blend in with alpha > 0 in these rows


def result(step, metric, gain, total, rent, churn, slots, events=(), veto=0, rollback=0, lcr=0.0, nlc=0.0):
    values = torch.zeros(len(slots), len(SLOT_COLUMNS))
    for i, (stage, blueprint, params, level, max_level, delta) in enumerate(slots):
        columns = ("stage", "blueprint", "seed_param_count_active", "internal_level", "max_level", "delta_l2_norm", "in_forward")
        for name, value in zip(columns, (stage, blueprint, params, level, max_level, delta, stage in FORWARD)):
            values[i, SLOT_COLUMNS.index(name)] = value
    forward = sum(params for stage, _, params, *_ in slots if stage in FORWARD)
    incubating = sum(params for stage, _, params, *_ in slots if stage not in FORWARD)
    metrics = {
        "metric": metric,
        "metric_gain": gain,
        "full_metric": metric if step == 3 else math.nan,
        "forward_params": forward,
        "incubating_params": incubating,
        "veto": float(veto),
        "rollback": float(rollback),
        "level_change_rate": lcr,
        "net_level_change": nlc,
    }
    return StepResult(
        step,
        PlaneReport(SLOT_COLUMNS, values, torch.ones(len(slots), dtype=torch.bool)),
        ActionMasks(
            torch.ones(len(slots), len(Op), dtype=torch.bool),
            torch.ones(len(slots), len(Blueprint), dtype=torch.bool),
            torch.zeros(len(slots), dtype=torch.bool),
        ),
        metrics,
        RewardParts(task=total, rent=rent, churn=churn, intervention=0.0, total=total),
        list(events),
        step == 3,
        7,
    )


def transition(slot, old, new):
    return Event(EventKind.TRANSITION, slot, slot, f"{old.name}->{new.name}", float(new))


# (env, episode, action, result, decision entropies or None)
A1 = [
    (
        0,
        0,
        Action(Op.GERMINATE, 1, HEAVY),
        result(1, 0.50, 0.10, 1.0, 0.10, 0.0, [DORMANT, (Stage.GERMINATED, HEAVY, 100, 0, 0, 0.0)], [transition(1, Stage.DORMANT, Stage.GERMINATED)]),
    ),
    (
        0,
        0,
        Action(Op.GROW_INTERNAL, 0),
        result(
            2,
            0.60,
            0.10,
            2.0,
            0.20,
            0.1,
            [(Stage.TRAINING, LADDER, 50, 1, 4, 0.2), (Stage.TRAINING, HEAVY, 100, 0, 0, 0.3)],
            [Event(EventKind.LEVEL_CHANGED, 0, 0, "GROW_INTERNAL", 1.0)],
            lcr=0.5,
            nlc=1.0,
        ),
    ),
    (
        0,
        0,
        Action(Op.GROW_INTERNAL, 0),
        result(
            3,
            0.55,
            -0.05,
            -1.0,
            0.20,
            0.1,
            [(Stage.TRAINING, LADDER, 50, 1, 4, 0.4), (Stage.TRAINING, HEAVY, 100, 0, 0, 0.3)],
            [Event(EventKind.VETO, 0, 0, VETO_INTERNAL_GROW, 6.0)],
            veto=1,
            lcr=0.3,
            nlc=1.0,
        ),
    ),
    (1, 0, Action(Op.WAIT), result(1, 0.40, 0.0, 0.0, 0.0, 0.0, [DORMANT, DORMANT])),
    (
        1,
        0,
        Action(Op.GERMINATE, 0, LADDER),
        result(2, 0.45, 0.05, 0.5, 0.05, 0.0, [(Stage.GERMINATED, LADDER, 50, 1, 4, 0.0), DORMANT], [transition(0, Stage.DORMANT, Stage.GERMINATED)]),
    ),
    (
        1,
        0,
        Action(Op.SHRINK_INTERNAL, 0),
        result(
            3,
            0.50,
            0.05,
            0.4,
            0.04,
            0.1,
            [(Stage.TRAINING, LADDER, 40, 0, 4, 0.1), DORMANT],
            [Event(EventKind.LEVEL_CHANGED, 0, 0, "SHRINK_INTERNAL", 0.0), Event(EventKind.ROLLBACK, -1, -1, "governor_rollback", 9.0)],
            rollback=1,
            lcr=0.5,
            nlc=-1.0,
        ),
    ),
]
A2 = [
    *((0, 0, Action(Op.WAIT), result(s, 0.30, 0.0, 0.0, 0.0, 0.0, [DORMANT, DORMANT])) for s in (1, 2, 3)),
    (
        0,
        1,
        Action(Op.GERMINATE, 0, LADDER),
        result(1, 0.35, 0.05, 0.5, 0.01, 0.0, [(Stage.GERMINATED, LADDER, 10, 1, 4, 0.0), DORMANT], [transition(0, Stage.DORMANT, Stage.GERMINATED)]),
    ),
    (
        0,
        1,
        Action(Op.FOSSILIZE, 0),
        result(2, 0.38, 0.03, 0.2, 0.01, 0.0, [(Stage.FOSSILIZED, LADDER, 10, 1, 4, 0.3), DORMANT], [transition(0, Stage.HOLDING, Stage.FOSSILIZED)]),
    ),
    (0, 1, Action(Op.WAIT), result(3, 0.40, 0.02, 0.1, 0.01, 0.0, [(Stage.FOSSILIZED, LADDER, 10, 1, 4, 0.5), DORMANT])),
]
HEAVY_TRAINING = (Stage.TRAINING, HEAVY, 400, 0, 0, 0.5)
HEAVY_BLENDING = (Stage.BLENDING, HEAVY, 400, 0, 0, 0.5)
B1 = [
    (
        0,
        0,
        Action(Op.GERMINATE, 1, HEAVY),
        result(1, 0.20, 0.0, 0.0, 0.3, 0.0, [DORMANT, (Stage.GERMINATED, HEAVY, 400, 0, 0, 0.0)], [transition(1, Stage.DORMANT, Stage.GERMINATED)]),
    ),
    (
        0,
        0,
        Action(Op.GERMINATE, 0, HEAVY),
        result(2, 0.25, 0.05, 0.4, 0.3, 0.0, [DORMANT, HEAVY_TRAINING], [Event(EventKind.VETO, 0, 0, VETO_GERMINATE, 1.0)], veto=1),
    ),
    (0, 0, Action(Op.ADVANCE, 1), result(3, 0.30, 0.05, 0.45, 0.3, 0.0, [DORMANT, HEAVY_BLENDING])),
]
B1_ENTROPY = [  # per step: op, slot, blueprint, blend, curve, tempo, target
    (0.9, 0.6, 1.2, 0.3, 0.2, 0.1, 0.4),
    (0.6, 0.3, 0.9, 0.3, 0.2, 0.1, 0.4),
    (0.3, 0.0, 0.6, 0.3, 0.2, 0.1, 0.4),
]


def decision(action: Action, entropies, legal_op: bool) -> dict:
    sizes = {"op": len(Op), "slot": 2, "blueprint": len(Blueprint), "blend": 3, "curve": 3, "tempo": 3, "target": 3, "decay": 2, "phage": 2}
    masks = {h: [True] * n for h, n in sizes.items()}
    masks["op"][int(action.op)] = legal_op
    if not legal_op:
        masks["slot"] = [False, True]  # one legal slot: a forced choice, not an open one
    row = {h: int(getattr(action, h)) for h in HEADS} | {"value": 0.0, "logp": -1.0}
    row |= {f"{h}_logp": -0.1 for h in HEADS} | {f"{h}_mask": masks[h] for h in HEADS}
    row |= {f"{h}_entropy": 0.0 for h in EMRAKUL_HEADS} | {"used": list(heads_used(action.op))}  # a Tamiyo: Emrakul's heads hold
    return row | {f"{h}_entropy": e for h, e in zip(TAMIYO_HEADS, entropies)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    for cohort, run_id, rows in (("a", "a1", A1), ("a", "a2", A2), ("b", "b1", B1)):
        with Recorder(root, cohort, CONFIG, run_id=run_id, flush_every=2) as recorder:
            for i, (env, episode, action, step_result) in enumerate(rows):
                chosen = decision(action, B1_ENTROPY[i], legal_op=i != 2) if run_id == "b1" else None
                recorder.record_step(env, episode, action, step_result, chosen)
    return Store(root)


def by_run(frame, *columns):
    return {row["run_id"]: tuple(row[c] for c in columns) for row in frame.iter_rows(named=True)}


def test_runs_and_filters(store):
    assert store.runs()["run_id"].to_list() == ["a1", "a2", "b1"]
    assert store.runs(cohort="a")["run_id"].to_list() == ["a1", "a2"]
    assert store.conv_heavy_share(run="b1")["run_id"].unique().to_list() == ["b1"]


def test_rent_churn_averages_envs_per_step(store):
    a1 = store.rent_churn(run="a1")
    assert a1["step"].to_list() == [1, 2, 3] and a1["envs"].to_list() == [2, 2, 2]
    assert a1["rent"].to_list() == pytest.approx([0.05, 0.125, 0.12])
    assert a1["churn"].to_list() == pytest.approx([0.0, 0.05, 0.1])
    assert a1["reward"].to_list() == pytest.approx([0.5, 1.25, -0.3])
    # every a1 seed is germinated or training: incubating, never in the forward path
    assert a1["incubating_params"].to_list() == pytest.approx([50, 100, 95])
    assert a1["forward_params"].to_list() == [0, 0, 0]


def test_conv_heavy_share_counts_in_forward_params_only(store):
    share = "conv_heavy_forward_param_share"
    assert store.conv_heavy_share(run="a1")[share].to_list() == [0.0, 0.0, 0.0]  # conv_heavy only incubates
    assert store.conv_heavy_share(run="b1")[share].to_list() == [0.0, 0.0, 1.0]  # blending from step 3
    a2 = store.conv_heavy_share(run="a2")  # nothing (episode 0), then a ladder germinated, then fossilised
    assert a2[share].to_list() == [0.0] * 6 and a2["forward_seed_params"].to_list() == [0, 0, 0, 0, 10, 10]


def test_lifecycle_op_counts_include_zeros(store):
    counts = store.lifecycle_op_counts()
    assert counts.height == 3 * len(Op)
    got = {(r["run_id"], r["op_name"]): (r["chosen"], r["executed"]) for r in counts.iter_rows(named=True) if r["chosen"]}
    assert got == {
        ("a1", "WAIT"): (1, 1),
        ("a1", "GERMINATE"): (2, 2),
        ("a1", "GROW_INTERNAL"): (2, 1),
        ("a1", "SHRINK_INTERNAL"): (1, 1),
        ("a2", "WAIT"): (4, 4),
        ("a2", "GERMINATE"): (1, 1),
        ("a2", "FOSSILIZE"): (1, 1),
        ("b1", "GERMINATE"): (2, 1),
        ("b1", "ADVANCE"): (1, 1),
    }
    per_episode = store.lifecycle_op_counts(run="a2", by_episode=True).filter(op_name="WAIT")
    assert per_episode["chosen"].to_list() == [3, 1]


def test_grow_shrink_share(store):
    assert by_run(store.grow_shrink_share(), "grow", "shrink", "non_wait", "grow_shrink_share", "wait_share") == {
        "a1": (2, 1, 5, 0.6, pytest.approx(1 / 6)),
        "a2": (0, 0, 2, 0.0, pytest.approx(4 / 6)),
        "b1": (0, 0, 3, 0.0, 0.0),
    }


def test_policy_entropy_is_the_mean_over_decisions_that_used_the_head(store):
    entropy = store.policy_entropy()
    assert entropy["run_id"].unique().to_list() == ["b1"]  # baselines record no entropies
    assert entropy["head"].to_list() == list(TAMIYO_HEADS)  # Emrakul's heads decided nothing
    # b1 decided GERMINATE, GERMINATE, ADVANCE: the ADVANCE used only the op and slot heads, so the
    # germination heads' entropies average over the two germinations (hand-computed from B1_ENTROPY)
    means = dict(zip(entropy["head"], entropy["entropy"]))
    assert means == pytest.approx({"op": 0.6, "slot": 0.3, "blueprint": 1.05, "blend": 0.3, "curve": 0.2, "tempo": 0.1, "target": 0.4})
    assert dict(zip(entropy["head"], entropy["decisions"])) == {"op": 3, "slot": 3, **{h: 2 for h in TAMIYO_HEADS[2:]}}
    # the ADVANCE had one legal slot: a forced choice, left out of the open-choice mean
    opened = entropy.filter(head="slot").row(0, named=True)
    assert (opened["open_decisions"], opened["open_entropy"]) == (2, pytest.approx(0.45))


def test_invalid_action_rate(store):
    rates = by_run(store.invalid_action_rate(), "masked_decisions", "invalid", "invalid_action_rate")
    assert rates == {"a1": (0, 0, None), "a2": (0, 0, None), "b1": (3, 1, pytest.approx(1 / 3))}


def test_governor_counts(store):
    assert by_run(store.governor_counts(), "steps", "vetoes", "rollbacks", "grow_vetoes", "germinate_vetoes", "veto_rate") == {
        "a1": (6, 1, 1, 1, 0, pytest.approx(1 / 6)),
        "a2": (6, 0, 0, 0, 0, 0.0),
        "b1": (3, 1, 0, 0, 1, pytest.approx(1 / 3)),
    }


def test_level_change(store):
    a1 = store.level_change(run="a1")
    assert a1["level_change_rate"].to_list() == pytest.approx([0.0, 0.25, 0.4])
    assert a1["net_level_change"].to_list() == pytest.approx([0.0, 0.5, 0.0])


def test_grow_lagged_correlation(store):
    corr = store.grow_lagged_correlation(cohort="a", lags=(1, 2, 3))
    a1 = corr.filter(run_id="a1")
    # a1 (env 0, env 1) gains per step and the one executed grow (env 0, step 2; the step-3 grow was vetoed)
    gains = {0: [0.10, 0.10, -0.05], 1: [0.0, 0.05, 0.05]}
    grew = {0: [0, 1, 0], 1: [0, 0, 0]}
    for lag, n, grows in ((1, 6, 1), (2, 4, 1), (3, 2, 0)):
        row = a1.filter(lag=lag).row(0, named=True)
        x = [grew[e][t] for e in (0, 1) for t in range(4 - lag)]
        y = [sum(gains[e][t : t + lag]) for e in (0, 1) for t in range(4 - lag)]
        assert (row["n"], row["grows"]) == (n, grows)
        if grows:
            assert row["correlation"] == pytest.approx(np.corrcoef(x, y)[0, 1])
        else:
            assert row["correlation"] is None
    assert corr.filter(run_id="a2")["correlation"].null_count() == 3  # no grows: no correlation


def test_delta_norm_by_level(store):
    frame = store.delta_norm_by_level()
    assert frame["cohort"].to_list() == ["a", "a"] and set(frame["blueprint_name"]) == {"CONV_CHANNEL_LADDER"}
    level0, level1 = frame.row(0, named=True), frame.row(1, named=True)
    assert (level0["internal_level"], level0["n"], level0["median"]) == (0, 1, pytest.approx(0.1))
    deltas = [0.2, 0.4, 0.3, 0.5]  # live ladder slots at level 1 (a1 env 0 steps 2-3, a2 fossilised steps 2-3)
    assert level1["n"] == 4 and level1["mean"] == pytest.approx(np.mean(deltas))
    for q, column in ((0.25, "q25"), (0.5, "median"), (0.75, "q75")):
        assert level1[column] == pytest.approx(np.quantile(deltas, q))


def test_fossilisation_ratio(store):
    assert by_run(store.fossilisation_ratio(), "germinated", "fossilized", "pruned", "fossilisation_ratio") == {
        "a1": (2, 0, 0, 0.0),
        "a2": (1, 1, 0, 1.0),
        "b1": (1, 0, 0, 0.0),
    }


def test_episode_outcomes_read_the_last_step_of_finished_episodes(store):
    rows = {(r["run_id"], r["env"], r["episode"]): r for r in store.episode_outcomes().iter_rows(named=True)}
    assert set(rows) == {("a1", 0, 0), ("a1", 1, 0), ("a2", 0, 0), ("a2", 0, 1), ("b1", 0, 0)}
    got = {k: (r["final_metric"], r["episode_return"], r["forward_params"], r["conv_heavy_params"], r["rollbacks"]) for k, r in rows.items()}
    assert got == {
        ("a1", 0, 0): (0.55, pytest.approx(2.0), 0, 0, 0),
        ("a1", 1, 0): (0.50, pytest.approx(0.9), 0, 0, 1),
        ("a2", 0, 0): (0.30, 0.0, 0, 0, 0),
        ("a2", 0, 1): (0.40, pytest.approx(0.8), 10, 0, 0),
        ("b1", 0, 0): (0.30, pytest.approx(0.85), 400, 400, 0),
    }
    assert {r["kind"] for r in rows.values()} == {"baseline"} and {r["episode_seed"] for r in rows.values()} == {7}
    assert store.episode_outcomes(kind="eval").is_empty()


def test_oscillation_counts_regerminations_alpha_reversals_and_level_flips(tmp_path):
    def slots(alpha):
        return [(Stage.BLENDING if alpha else Stage.DORMANT, LADDER if alpha else -1, 10 if alpha else 0, 1, 4, 0.0)]

    steps = [  # slot 0: germinated, pruned, germinated again; alpha up, down, up; grow, shrink, grow
        (Action(Op.GERMINATE, 0, LADDER), 0.0, [transition(0, Stage.DORMANT, Stage.GERMINATED)]),
        (Action(Op.GROW_INTERNAL, 0), 0.5, [Event(EventKind.LEVEL_CHANGED, 0, 0, "GROW_INTERNAL", 2.0)]),
        (Action(Op.SHRINK_INTERNAL, 0), 1.0, [Event(EventKind.LEVEL_CHANGED, 0, 0, "SHRINK_INTERNAL", 1.0)]),
        (Action(Op.PRUNE, 0), 0.0, [transition(0, Stage.BLENDING, Stage.PRUNED)]),
        (Action(Op.GERMINATE, 0, LADDER), 0.0, [transition(0, Stage.RESETTING, Stage.DORMANT), transition(0, Stage.DORMANT, Stage.GERMINATED)]),
        (Action(Op.GROW_INTERNAL, 0), 0.3, [Event(EventKind.LEVEL_CHANGED, 0, 0, "GROW_INTERNAL", 2.0)]),
    ]
    with Recorder(tmp_path, "c", CONFIG, run_id="c1") as recorder:
        for step, (action, alpha, events) in enumerate(steps, start=1):
            r = result(step, 0.5, 0.0, 0.0, 0.0, 0.0, slots(alpha), events)
            values = r.report.values.clone()
            values[0, SLOT_COLUMNS.index("alpha")] = alpha
            done = step == len(steps)
            r = StepResult(step, PlaneReport(SLOT_COLUMNS, values, r.report.slot_mask), r.masks, r.metrics, r.reward, r.events, done, 7)
            recorder.record_step(0, 0, action, r)
    row = Store(tmp_path).oscillation().row(0, named=True)
    # alpha 0 -> .5 -> 1 -> 0 -> 0 -> .3: up, up, down, up: two reversals
    assert (row["regerminations"], row["alpha_reversals"], row["level_flips"]) == (1, 2, 2)


def test_a_column_added_since_a_part_was_written_reads_as_null_there(tmp_path):
    """Schemas grow (Emrakul's heads came in schema 4): a root written before still reads."""
    with Recorder(tmp_path, "a", CONFIG, run_id="old", flush_every=2) as recorder:
        for env, episode, action, step_result in A1:
            recorder.record_step(env, episode, action, step_result)
    for part in tmp_path.rglob("decisions/*.parquet"):
        pq.write_table(pq.read_table(part).drop_columns(["decay", "phage"]), part)  # as an older writer left it
    store = Store(tmp_path)
    decisions = store.rows("decisions")
    assert decisions.height == len(A1) and decisions["decay"].null_count() == decisions.height
    assert store.policy_entropy().is_empty() and store.lifecycle_op_counts()["run_id"].unique().to_list() == ["old"]
