"""Audits: exact Shapley's axioms (efficiency, symmetry, null player) on value functions drawn by
hypothesis, Monte Carlo converging to exact, and one real audit of a recorded scripted run (the
smoke demo: conv_heavy and noop, two replicates): replicate 0 replays the recording, the noop
seed's credit is exactly 0, the labels read back through the store, worker processes give the
same values, the CLI and the dashboard page show them."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import polars as pl
import pytest
from browser import PLOTS_JS, Browser
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_lab.audit import agreement, exact_shapley, from_run, leave_one_out, monte_carlo_shapley, run_audit, train, write_audit
from esper_lab.audit.demo import demo_preset, record_demo_run
from esper_lab.audit.shapley import coalitions, error_curve
from esper_lab.cli import main
from esper_lab.contracts import Blueprint, Op
from esper_lab.dashboards import Selection, audit_page
from esper_lab.experiments.offline import save_offline
from esper_lab.telemetry import Store

PLAYERS = st.lists(st.integers(0, 20), min_size=1, max_size=4, unique=True)
VALUES = st.fractions(min_value=-10, max_value=10, max_denominator=1000)


def table(draw, players, values=VALUES) -> dict[frozenset, Fraction]:
    return {c: draw(values) for c in coalitions(players)}


@settings(max_examples=60, deadline=None)
@given(st.data(), PLAYERS)
def test_credits_sum_exactly_to_the_grand_coalitions_gain(data, players):
    values = table(data.draw, players)
    phi = exact_shapley(values, players)
    assert sum(phi.values()) == values[frozenset(players)] - values[frozenset()]  # Fractions: exactly
    floats = {c: float(v) for c, v in values.items()}
    assert math.isclose(sum(exact_shapley(floats, players).values()), floats[frozenset(players)] - floats[frozenset()], abs_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(0, 2))
def test_symmetric_players_get_equal_credit(data, others):
    """v depends on how many of a and b a coalition holds, never on which: a and b are symmetric."""
    players = ["a", "b", *range(others)]
    by_count = {(k, c): data.draw(VALUES) for k in range(3) for c in coalitions(range(others))}
    values = {s: by_count[len(s & {"a", "b"}), s - {"a", "b"}] for s in coalitions(players)}
    phi = exact_shapley(values, players)
    assert phi["a"] == phi["b"]


@settings(max_examples=60, deadline=None)
@given(st.data(), PLAYERS)
def test_a_null_player_gets_zero_credit(data, players):
    null = max(players) + 1
    base = table(data.draw, players)
    values = {**base, **{c | {null}: v for c, v in base.items()}}
    assert exact_shapley(values, [*players, null])[null] == 0


def synthetic(players: list[int]):
    """A value function with interactions: weights, a pairwise synergy and a redundancy."""

    def v(coalition: frozenset) -> float:
        total = sum(0.1 * (i + 1) for i in coalition)
        total += 0.3 * ({0, 1} <= coalition) - 0.2 * ({2, 3} <= coalition)
        return total + 0.05 * len(coalition) ** 2

    return {c: v(c) for c in coalitions(players)}


def test_monte_carlo_converges_to_exact_on_a_synthetic_value_function():
    players = list(range(6))
    values = synthetic(players)
    exact = exact_shapley(values, players)
    curve = pl.DataFrame(error_curve(values, players, samples=(4, 64, 1024), repeats=20)).filter(pl.col("method") == "monte_carlo")
    errors = curve["max_abs_error_mean"].to_list()
    assert errors[0] > errors[1] > errors[2]  # more sampled orders, smaller error ...
    assert errors[2] < errors[0] / 8 and errors[2] < 0.02  # ... at about 1/sqrt(orders): 256x the orders, ~1/16 the error
    estimate, evaluated = monte_carlo_shapley(values.__getitem__, players, 4000, seed=1)
    assert max(abs(estimate[i] - exact[i]) for i in players) < 0.01
    assert evaluated == 2 ** len(players)  # 4000 orders touch every coalition


def test_leave_one_out_is_exact_only_without_interactions():
    players = [0, 1, 2]
    additive = {c: sum(Fraction(i + 1, 10) for i in c) for c in coalitions(players)}
    assert leave_one_out(additive, players) == exact_shapley(additive, players) == {0: Fraction(1, 10), 1: Fraction(2, 10), 2: Fraction(3, 10)}
    values = synthetic([0, 1, 2, 3])
    assert leave_one_out(values, [0, 1, 2, 3]) != pytest.approx(exact_shapley(values, [0, 1, 2, 3]))


def test_a_value_table_without_every_coalition_is_refused():
    with pytest.raises(ValueError, match="lacks 1 coalition"):
        exact_shapley({frozenset(): 0.0, frozenset({1}): 1.0, frozenset({2}): 1.0}, [1, 2])


# --- one real audit -------------------------------------------------------------------------------
SMOKE = demo_preset("smoke")
NOOP_SLOT = next(slot for slot, blueprint in SMOKE.plan if blueprint is Blueprint.NOOP)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    return root, record_demo_run(root, "smoke")


@pytest.fixture(scope="module")
def audited(recorded):
    root, run = recorded
    protocol = from_run(Store(root), run, step=SMOKE.step, replicates=SMOKE.replicates)
    audit = run_audit(protocol)
    return audit, write_audit(audit, root)


@pytest.mark.slow
def test_the_protocol_holds_the_seeds_live_at_the_step_with_the_runs_view(recorded, audited):
    root, run = recorded
    protocol = audited[0].protocol
    assert protocol.players == tuple(sorted(slot for slot, _ in SMOKE.plan)) and protocol.step == SMOKE.step
    noop = next(c for c in protocol.candidates if c.slot == NOOP_SLOT)
    assert noop.blueprint is Blueprint.NOOP and noop.fate_op is Op.PRUNE and noop.fate_step > SMOKE.step  # the probe rule pruned it later
    probes = Store(root).contributions(run=run).filter((pl.col("slot") == NOOP_SLOT) & (pl.col("step") <= SMOKE.step))
    assert noop.contribution == probes["contribution"][-1] == 0.0 and noop.contribution_step == probes["step"][-1]
    assert protocol.episode_seeds[0] == Store(root).episodes(run=run)["episode_seed"][0]
    assert len(set(protocol.episode_seeds)) == protocol.replicates


def test_replicate_zero_with_every_seed_retrains_exactly_the_recorded_run(recorded, audited):
    root, run = recorded
    audit = audited[0]
    recorded_metric = Store(root).rows("steps", run=run).filter(pl.col("step") == SMOKE.step)["metric"][0]  # digits: the whole split
    assert audit.values[frozenset(audit.protocol.players), 0] == recorded_metric
    assert audit.skipped == 0


def test_a_noop_seed_changes_no_training_and_gets_exactly_zero(audited):
    audit = audited[0]
    for (coalition, replicate), value in audit.values.items():
        assert value == audit.values[coalition | {NOOP_SLOT}, replicate]
    assert audit.phi_replicates()[NOOP_SLOT] == [0.0] * SMOKE.replicates


def test_the_real_credits_are_efficient_in_every_replicate(audited):
    audit = audited[0]
    grand = frozenset(audit.protocol.players)
    for r, credits in enumerate(zip(*audit.phi_replicates().values())):
        assert math.isclose(sum(credits), audit.values[grand, r] - audit.values[frozenset(), r], abs_tol=1e-12)


def test_the_labels_read_back_through_the_store(recorded, audited):
    root, run = recorded
    audit, audit_id = audited
    store = Store(root)
    manifest = store.runs(run=audit_id).row(0, named=True)
    assert (manifest["kind"], manifest["parent_run"], manifest["status"]) == ("audit", run, "completed")
    rows = store.audits(audited_run=run)
    assert rows["run_id"].unique().to_list() == [audit_id] and rows["slot"].to_list() == list(audit.protocol.players)
    assert rows.select("step", "candidates", "replicates").unique().rows() == [(SMOKE.step, 2, SMOKE.replicates)]
    noop = rows.filter(pl.col("slot") == NOOP_SLOT).row(0, named=True)
    assert (noop["blueprint_name"], noop["fate_name"], noop["phi"], noop["phi_low"], noop["phi_high"]) == ("NOOP", "PRUNE", 0.0, 0.0, 0.0)
    values = dict(rows["subset_values"][0])
    assert values == {k: list(v) for k, v in audit.value_table().select("coalition", "v").iter_rows()} and len(values) == 4
    assert (rows["phi_low"] <= rows["phi"]).all() and (rows["phi"] <= rows["phi_high"]).all()
    assert json.loads(noop["protocol_json"])["budget_steps"] == SMOKE.step
    assert store.audits(run=audit_id).equals(rows)


def test_agreement_reads_ranks_and_prunes():
    frame = pl.DataFrame(
        {
            "phi": [0.3, 0.1, -0.05, 0.0],
            "phi_low": [0.1, -0.1, -0.2, 0.0],
            "phi_high": [0.5, 0.3, 0.1, 0.0],
            "contribution": [0.6, 0.2, -0.1, None],
            "fate_op": [None, int(Op.FOSSILIZE), int(Op.PRUNE), int(Op.PRUNE)],
        },
        schema_overrides={"fate_op": pl.Int8},
    )
    stats = agreement(frame)
    assert stats["rank_correlation"] == pytest.approx(1.0) and stats["rank_correlation_seeds"] == 3
    assert (stats["pruned"], stats["pruned_phi_nonpositive_share"], stats["kept"], stats["kept_phi_positive_share"]) == (2, 1.0, 2, 1.0)
    assert (stats["phi_ci_above_zero"], stats["phi_ci_below_zero"]) == (1, 0)


@pytest.mark.slow
def test_worker_processes_train_the_same_values(recorded, audited):
    root, run = recorded
    protocol = from_run(Store(root), run, step=SMOKE.step, slots=(NOOP_SLOT,), replicates=2)
    pooled = run_audit(protocol, workers=1)  # one spawned process: the same code path as many, and one torch import
    assert pooled.values == {job: train(protocol, *job).value for job in pooled.values}


def test_bad_requests_fail_early_naming_what_is_wrong(recorded):
    root, run = recorded
    store = Store(root)
    with pytest.raises(ValueError, match=r"step=99 must be an integer in 1\.\.8"):
        from_run(store, run, step=99)
    with pytest.raises(ValueError, match=r"slots \[0\] hold no seed at step 6"):
        from_run(store, run, step=SMOKE.step, slots=(0,))
    with pytest.raises(ValueError, match="2 seeds at step 6 .* choose some with slots="):
        from_run(store, run, step=SMOKE.step, max_candidates=1)
    with pytest.raises(ValueError, match="names a slot twice"):
        from_run(store, run, step=SMOKE.step, slots=(NOOP_SLOT, NOOP_SLOT))
    with pytest.raises(ValueError, match="max_candidates=5 must be an integer in 1..4"):
        from_run(store, run, max_candidates=5)
    with pytest.raises(ValueError, match="replicates=1 must be an integer >= 2"):
        from_run(store, run, replicates=1)
    with pytest.raises(ValueError, match="workers=-1"):
        run_audit(from_run(store, run, step=SMOKE.step, slots=(NOOP_SLOT,), replicates=2), workers=-1)


def test_the_cli_audits_a_run_and_prints_the_tables(recorded, capsys):
    root, run = recorded
    assert main(["audit", run, "--root", str(root), "--step", str(SMOKE.step), "--slots", str(NOOP_SLOT), "--replicates", "2"]) == 0
    out = capsys.readouterr().out
    assert f"audit {run}-audit-s{SMOKE.step}-" in out and "4 trainings" in out and "leave_one_out" in out and "'pruned': 1" in out
    assert main(["audit", "--root", str(root)]) == 2
    assert "give a run id to audit, or --demo PRESET" in capsys.readouterr().err
    assert main(["audit", "no-such-run", "--root", str(root)]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err


def test_the_dashboard_shows_phi_with_its_interval_beside_the_decisions(recorded, audited, tmp_path):
    root, run = recorded
    store = Store(root)
    html = save_offline(audit_page(store, Selection(store, run=run)), tmp_path / "audit.html", "audit")
    noop = next(c for c in audited[0].protocol.candidates if c.slot == NOOP_SLOT)

    def look(page) -> dict:
        page.goto(html.as_uri())
        page.get_by_text(f"Shapley audits — {run}").wait_for()
        page.get_by_text(f"PRUNE at step {noop.fate_step}").first.wait_for()  # the noop seed's decision, beside its phi
        page.locator("canvas").first.wait_for(state="attached")
        return {plot["title"]: plot["legend"] for plot in page.evaluate(PLOTS_JS)}

    with Browser(viewport={"width": 1400, "height": 1000}) as browser:
        plots = browser.run(look)
    assert set(plots[f"Shapley φ per seed — step {SMOKE.step}"]) >= {"Shapley φ (95% CI)", "online probe"}
