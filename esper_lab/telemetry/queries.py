"""The named queries: every number a report, dashboard or notebook shows (DESIGN rule 5).

`Queries` is the SQL half of `Store`: each method fills `{where}` with the cohort/run filter
through `Store._query` and returns a polars frame. One definition per metric:

- a head's entropy is the mean over the decisions where that head was used (the recorder leaves
  it null elsewhere), with how many there were;
- params and FLOPs are split into *in forward* (the seed's output reaches the host: alpha > 0 or
  fossilised) and *incubating*; conv_heavy share and ROI count in-forward params only;
- a seed's contribution is measured, not inferred (the env's counterfactual probe);
- outcomes are read at each finished episode's last step on the whole validation split;
- no column is a Decimal: DuckDB sums an integer column into a HUGEINT, which polars reads as
  Decimal(38, 0) and divides without the fraction (a 0.47 share came out 0), so such sums are
  cast to BIGINT, and ratios are DOUBLE (DuckDB's `/` is a float division).
"""

from __future__ import annotations

import polars as pl

from esper_lab.contracts import (
    HEADS,
    VETO_BUD,
    VETO_CONSOLIDATE,
    VETO_GERMINATE,
    VETO_INTERNAL_GROW,
    VETO_LOW_ROI,
    Blueprint,
    EventKind,
    Op,
    RunKind,
    Stage,
)
from esper_lab.telemetry.query_base import EPISODE_KEYS, STEP_KEYS, by_keys
from esper_lab.telemetry.slot_queries import SlotQueries


class Queries(SlotQueries):
    """Named queries over the views `runs, steps, slots, decisions, events, updates, audits`:
    runs, outcomes, the economy, the policy's decisions (this module), and slots, lifecycles and
    decay (`SlotQueries`)."""

    # --- runs ---------------------------------------------------------------------------------
    def runs(self, cohort: str | None = None, run: str | None = None, kind: str | None = None) -> pl.DataFrame:
        """The run manifests: configs, versions, lineage, kind/arm and status."""
        extra = " AND kind = $kind" if kind is not None else ""
        params = {"kind": kind} if kind is not None else {}
        return self._query("SELECT * EXCLUDE (run) FROM runs WHERE {where}" + extra + " ORDER BY started_at, run_id", cohort, run, **params)

    def rows(self, table: str, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """One table's rows in key order (what replay compares)."""
        if table not in ("steps", "slots", "decisions", "events", "updates"):
            raise ValueError(f"table={table!r} is not one of: steps, slots, decisions, events, updates")
        order = {"slots": ", slot", "events": ", seq"}.get(table, "")
        keys = "cohort, run_id, update" if table == "updates" else STEP_KEYS
        return self._query(f"SELECT * EXCLUDE (run) FROM {table} WHERE {{where}} ORDER BY {keys}{order}", cohort, run)

    def episodes(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Each run's (env, episode) pairs, their seed, recorded steps and whether they finished."""
        return self._query(
            f"""
            SELECT {EPISODE_KEYS}, any_value(episode_seed) AS episode_seed, count(*) AS steps, bool_or(done) AS done
            FROM steps WHERE {{where}} GROUP BY {EPISODE_KEYS} ORDER BY {EPISODE_KEYS}""",
            cohort,
            run,
        )

    # --- outcomes -----------------------------------------------------------------------------
    def episode_outcomes(self, cohort: str | None = None, run: str | None = None, kind: str | None = None) -> pl.DataFrame:
        """One row per finished episode of a completed run, with the run's kind, arm, parent and
        seed: final metric (whole validation split), the test split's metric at the end and its
        mean over the episode's test reads (the area under the test curve per step), the training
        FLOPs summed over the episode, return and its parts, in-forward params at the end and on
        average, conv_heavy's in-forward params at the end, vetoes and rollbacks. Held-out
        evaluation arms pair up on (cohort, seed, episode_seed)."""
        return self._query(_OUTCOMES + " ORDER BY cohort, run_id, env, episode", cohort, run, kind=kind, conv_heavy=int(Blueprint.CONV_HEAVY))

    def arm_summary(self, cohort: str | None = None) -> pl.DataFrame:
        """Per cohort and held-out arm, across its evaluation episodes: how many (and seeds), the
        final metric's median with q25 and q75, the mean return and in-forward params (the
        dashboards' view; the report's paired CIs come from `experiments.stats`)."""
        return self._query(
            f"""
            WITH o AS ({_OUTCOMES})
            SELECT cohort, arm, count(*) AS episodes, count(DISTINCT seed) AS seeds, median(final_metric) AS final_metric_median,
                   quantile_cont(final_metric, 0.25) AS final_metric_q25, quantile_cont(final_metric, 0.75) AS final_metric_q75,
                   avg(episode_return) AS return_mean, avg(forward_params) AS forward_params_mean
            FROM o GROUP BY cohort, arm ORDER BY cohort, arm""",
            cohort,
            None,
            conv_heavy=int(Blueprint.CONV_HEAVY),
            kind=RunKind.EVAL,
        )

    def learning_curve(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Per training episode of each PPO run (one round plays one per env), means over envs:
        return, final metric, C_rent and C_churn summed over the episode, WAIT share of decisions,
        in-forward and incubating params, and each head's entropy over the decisions that used it."""
        entropy = ", ".join(f"avg({h}_entropy) AS entropy_{h}" for h in HEADS)
        return self._query(
            f"""
            WITH s AS (SELECT cohort, run_id, episode, avg(ret) AS episode_return, avg(final_metric) AS final_metric,
                              avg(rent) AS rent, avg(churn) AS churn, avg(fwd) AS forward_params, avg(inc) AS incubating_params,
                              count(*) AS envs
                       FROM (SELECT cohort, run_id, env, episode, sum(reward_total) AS ret, arg_max(full_metric, step) AS final_metric,
                                    sum(reward_rent) AS rent, sum(reward_churn) AS churn,
                                    avg(forward_params) AS fwd, avg(incubating_params) AS inc
                             FROM steps WHERE {{where}} AND run IN (SELECT run FROM runs WHERE kind = 'ppo')
                             GROUP BY ALL HAVING bool_or(done)) GROUP BY ALL),
                 d AS (SELECT cohort, run_id, episode, avg((op = $wait)::DOUBLE) AS wait_share, {entropy}
                       FROM decisions WHERE {{where}} GROUP BY ALL)
            SELECT * FROM s LEFT JOIN d USING (cohort, run_id, episode) ORDER BY cohort, run_id, episode""",
            cohort,
            run,
            wait=int(Op.WAIT),
        )

    # --- economy ------------------------------------------------------------------------------
    def rent_churn(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Per step (mean over envs): C_rent, C_churn, total reward, in-forward and incubating seed
        params and FLOPs."""
        return self._query(
            """
            SELECT cohort, run_id, episode, step, avg(reward_rent) AS rent, avg(reward_churn) AS churn,
                   avg(reward_total) AS reward, avg(forward_params) AS forward_params,
                   avg(incubating_params) AS incubating_params, avg(forward_flops) AS forward_flops,
                   avg(incubating_flops) AS incubating_flops, count(*) AS envs
            FROM steps WHERE {where} GROUP BY ALL ORDER BY cohort, run_id, episode, step""",
            cohort,
            run,
        )

    def economy(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Per step (mean over envs), seed 000 Phase 5's economy: the budget utilisations, the
        slots' mean churn EMA, the mean ROI EMA of the in-forward seeds that have one (null when
        none), and the buds, consolidations and their vetoes that step (sums over envs)."""
        return self._query(
            f"""
            WITH sl AS (SELECT cohort, run_id, env, episode, step, avg(churn_ema) AS churn_ema,
                               avg(roi_estimate_ema) FILTER (WHERE in_forward = 1 AND NOT isnan(roi_estimate_ema)) AS roi_ema
                        FROM slots WHERE {{where}} GROUP BY ALL),
                 st AS (SELECT cohort, run_id, env, episode, step, active_param_budget_util, active_flops_budget_util
                        FROM steps WHERE {{where}}),
                 ev AS (SELECT cohort, run_id, episode, step, {_ADJACENCY_COUNTS.format(count="count(*)")}
                        FROM events WHERE {{where}} GROUP BY ALL)
            SELECT cohort, run_id, episode, step, avg(st.active_param_budget_util) AS active_param_budget_util,
                   avg(st.active_flops_budget_util) AS active_flops_budget_util, avg(sl.churn_ema) AS churn_ema,
                   avg(sl.roi_ema) AS roi_ema, any_value(coalesce(ev.buds, 0)) AS buds,
                   any_value(coalesce(ev.consolidations, 0)) AS consolidations,
                   any_value(coalesce(ev.adjacency_budget_vetoes + ev.roi_vetoes, 0)) AS adjacency_vetoes, count(*) AS envs
            FROM st JOIN sl USING (cohort, run_id, env, episode, step) LEFT JOIN ev USING (cohort, run_id, episode, step)
            GROUP BY ALL ORDER BY cohort, run_id, episode, step""",
            cohort,
            run,
            **_ADJACENCY_PARAMS,
        )

    def conv_heavy_share(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """`conv_heavy_forward_param_share` per step: conv_heavy's share of the in-forward seed
        params, summed over envs and slots (0 when none is in forward). `run_step` counts env steps
        from the run's start (episodes, then steps), so seeds of one preset line up."""
        return self._query(_CONV_HEAVY_SHARE + " ORDER BY cohort, run_id, episode, step", cohort, run, conv_heavy=int(Blueprint.CONV_HEAVY))

    def conv_heavy_share_bands(self, cohort: str | None = None) -> pl.DataFrame:
        """Per cohort and `run_step`, across its completed training runs (seeds): median, q25 and
        q75 of the conv_heavy share: reliability across seeds, not the lucky run (seed 003)."""
        return self._query(
            f"""
            SELECT cohort, run_step, min(episode) AS episode, min(step) AS step, count(*) AS runs,
                   median(conv_heavy_forward_param_share) AS median,
                   quantile_cont(conv_heavy_forward_param_share, 0.25) AS q25,
                   quantile_cont(conv_heavy_forward_param_share, 0.75) AS q75
            FROM ({_CONV_HEAVY_SHARE}) WHERE run_id IN (SELECT run_id FROM runs WHERE kind = 'ppo' AND status = 'completed')
            GROUP BY cohort, run_step ORDER BY cohort, run_step""",
            cohort,
            None,
            conv_heavy=int(Blueprint.CONV_HEAVY),
        )

    def adjacency_counts(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Per finished (run, env, episode), seed 000 Phase 5's adjacency economy: buds and
        consolidations executed, and the governor's vetoes of them (for the budget, or for ROI)."""
        return self._query(
            f"""
            WITH ep AS (SELECT {EPISODE_KEYS} FROM finished_episodes WHERE {{where}}),
            ev AS (SELECT {EPISODE_KEYS}, kind, name FROM events WHERE kind IN ($adjacency, $veto) AND {{where}})
            SELECT ep.*, {_ADJACENCY_COUNTS.format(count="count(name)")}
            FROM ep LEFT JOIN ev USING ({EPISODE_KEYS}) GROUP BY ALL ORDER BY {EPISODE_KEYS}""",
            cohort,
            run,
            **_ADJACENCY_PARAMS,
        )

    def fossils(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """One row per slot fossilised in a finished (run, env, episode): its blueprint, the step
        it fossilised, whether it was still a fossil at the episode's last step (`kept`: only a
        rollback or a lysis removes one), its in-forward params then, and the last contribution
        measured while it was a fossil (null when none was: seed 000 Phase 5 "are fossilised
        slots stable and beneficial")."""
        return self._query(
            f"""
            WITH ep AS (SELECT {EPISODE_KEYS}, last_step FROM finished_episodes WHERE {{where}}),
            f AS (SELECT {EPISODE_KEYS}, slot, any_value(surface_uid) AS surface_uid, min(step) AS fossilised_at,
                         max(step) AS last_fossil_step, arg_min(blueprint, step) AS blueprint,
                         arg_max(seed_param_count_active, step) AS params,
                         count(*) FILTER (WHERE contribution_measured = 1) AS measurements,
                         arg_max(contribution::DOUBLE, step) FILTER (WHERE contribution_measured = 1) AS contribution
                  FROM slots WHERE stage = $fossilized AND {{where}} GROUP BY ALL)
            SELECT f.* EXCLUDE (last_fossil_step), b.name AS blueprint_name, f.last_fossil_step = ep.last_step AS kept
            FROM f JOIN ep USING ({EPISODE_KEYS}) LEFT JOIN blueprint_names b ON b.value = f.blueprint
            ORDER BY {EPISODE_KEYS}, slot""",
            cohort,
            run,
            fossilized=int(Stage.FOSSILIZED),
        )

    # --- decisions ----------------------------------------------------------------------------
    def lifecycle_op_counts(self, cohort: str | None = None, run: str | None = None, by_episode: bool = False) -> pl.DataFrame:
        """Every op (GROW/SHRINK/FOCUS included, zeros too): times chosen and times executed."""
        by = by_keys(by_episode)
        same = " AND ".join(f"c.{k} = k.{k}" for k in by.split(", "))
        return self._query(
            f"""
            WITH counts AS (
                SELECT {by}, op, count(*) AS chosen, count(*) FILTER (WHERE NOT vetoed) AS executed
                FROM decisions WHERE {{where}} GROUP BY ALL)
            SELECT k.*, n.value AS op, n.name AS op_name,
                   coalesce(c.chosen, 0) AS chosen, coalesce(c.executed, 0) AS executed
            FROM (SELECT DISTINCT {by} FROM counts) k CROSS JOIN op_names n
            LEFT JOIN counts c ON {same} AND c.op = n.value
            ORDER BY {by}, op""",
            cohort,
            run,
        )

    def grow_shrink_share(self, cohort: str | None = None, run: str | None = None, by_episode: bool = False) -> pl.DataFrame:
        """GROW_INTERNAL + SHRINK_INTERNAL as a share of chosen non-WAIT ops (seed 002 gate: >= 10%),
        and the WAIT share of all decisions."""
        by = by_keys(by_episode)
        return self._query(
            f"""
            SELECT {by}, count(*) AS decisions, count(*) FILTER (WHERE op = $grow) AS grow,
                   count(*) FILTER (WHERE op = $shrink) AS shrink, count(*) FILTER (WHERE op <> $wait) AS non_wait,
                   (grow + shrink) / nullif(non_wait, 0) AS grow_shrink_share, 1 - non_wait / count(*) AS wait_share
            FROM decisions WHERE {{where}} GROUP BY ALL ORDER BY {by}""",
            cohort,
            run,
            grow=int(Op.GROW_INTERNAL),
            shrink=int(Op.SHRINK_INTERNAL),
            wait=int(Op.WAIT),
        )

    def policy_entropy(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Each head's mean entropy per episode over the decisions where the head was used
        (`decisions`), and over those where it also had at least two legal choices (`open`),
        where an entropy near 0 means collapse rather than a forced choice. Learned policies only
        (baselines record no entropy), and only the heads that decided something that episode
        (a Tamiyo's Emrakul heads, or a scripted Tamiyo's beside a learned Emrakul, never do)."""
        parts = " UNION ALL ".join(
            f"SELECT cohort, run_id, episode, '{h}' AS head, count({h}_entropy) AS decisions, avg({h}_entropy) AS entropy, "
            f"count({h}_entropy) FILTER (WHERE len(list_filter({h}_mask, lambda x: x)) >= 2) AS open_decisions, "
            f"avg({h}_entropy) FILTER (WHERE len(list_filter({h}_mask, lambda x: x)) >= 2) AS open_entropy "
            f"FROM decisions WHERE {{where}} AND logp IS NOT NULL GROUP BY cohort, run_id, episode HAVING decisions > 0"
            for h in HEADS
        )
        order = ", ".join(f"'{h}'" for h in HEADS)
        return self._query(f"SELECT * FROM ({parts}) ORDER BY cohort, run_id, episode, list_position([{order}], head)", cohort, run)

    def invalid_action_rate(self, cohort: str | None = None, run: str | None = None, by_episode: bool = False) -> pl.DataFrame:
        """Share of decisions with masks where some head's sampled value is outside its mask."""
        by = by_keys(by_episode)
        return self._query(
            f"""
            SELECT {by}, count(sampled_legal) AS masked_decisions, count(*) FILTER (WHERE NOT sampled_legal) AS invalid,
                   invalid / nullif(masked_decisions, 0) AS invalid_action_rate
            FROM decisions WHERE {{where}} GROUP BY ALL ORDER BY {by}""",
            cohort,
            run,
        )

    def governor_counts(self, cohort: str | None = None, run: str | None = None, by_episode: bool = False) -> pl.DataFrame:
        """Governor vetoes (all, internal-grow, germinate, and of buds and consolidations for the
        budget or for ROI) and rollbacks, with the veto rate."""
        by = by_keys(by_episode)
        return self._query(
            f"""
            WITH s AS (SELECT {by}, count(*) AS steps, count(*) FILTER (WHERE veto) AS vetoes,
                              count(*) FILTER (WHERE rollback) AS rollbacks
                       FROM steps WHERE {{where}} GROUP BY ALL),
                 e AS (SELECT {by}, count(*) FILTER (WHERE name = $grow) AS grow_vetoes,
                              count(*) FILTER (WHERE name = $germinate) AS germinate_vetoes,
                              count(*) FILTER (WHERE name IN ($bud, $consolidate)) AS adjacency_budget_vetoes,
                              count(*) FILTER (WHERE name = $low_roi) AS roi_vetoes
                       FROM events WHERE kind = $veto AND {{where}} GROUP BY ALL)
            SELECT s.*, coalesce(e.grow_vetoes, 0) AS grow_vetoes, coalesce(e.germinate_vetoes, 0) AS germinate_vetoes,
                   coalesce(e.adjacency_budget_vetoes, 0) AS adjacency_budget_vetoes, coalesce(e.roi_vetoes, 0) AS roi_vetoes,
                   vetoes / steps AS veto_rate
            FROM s LEFT JOIN e USING ({by}) ORDER BY {by}""",
            cohort,
            run,
            grow=VETO_INTERNAL_GROW,
            germinate=VETO_GERMINATE,
            bud=VETO_BUD,
            consolidate=VETO_CONSOLIDATE,
            low_roi=VETO_LOW_ROI,
            veto=int(EventKind.VETO),
        )

    def cohort_behaviour(self, cohort: str | None = None, kind: str = RunKind.PPO) -> pl.DataFrame:
        """Per cohort, over its completed runs of `kind` (failed, killed and other kinds are not
        counted): how many runs; decisions (non-WAIT count, grow/shrink share, WAIT share);
        germinations and conv_heavy's share of them; op-head entropy in each run's first and last
        episode (averaged over runs); vetoes, rollbacks and the level-change rate."""
        return self._query(
            """
            WITH r AS (SELECT cohort, run FROM runs WHERE kind = $kind AND status = 'completed' AND {where}),
            d AS (SELECT decisions.* FROM decisions JOIN r USING (cohort, run)),
            s AS (SELECT steps.* FROM steps JOIN r USING (cohort, run)),
            runs_ AS (SELECT cohort, count(*) AS runs FROM r GROUP BY cohort),
            ops AS (
                SELECT cohort, count(*) FILTER (WHERE op <> $wait) AS non_wait, avg((op = $wait)::DOUBLE) AS wait_share,
                       count(*) FILTER (WHERE op IN ($grow, $shrink)) / nullif(non_wait, 0) AS grow_shrink_share,
                       count(*) FILTER (WHERE executed_op = $germinate) AS germinations,
                       count(*) FILTER (WHERE executed_op = $germinate AND resolved_blueprint = $conv_heavy)
                           / nullif(germinations, 0) AS conv_heavy_germination_share
                FROM d GROUP BY cohort),
            entropy AS (
                SELECT cohort, avg(first_entropy) AS op_entropy_first, avg(last_entropy) AS op_entropy_last
                FROM (SELECT cohort, run_id, arg_min(e, episode) AS first_entropy, arg_max(e, episode) AS last_entropy
                      FROM (SELECT cohort, run_id, episode, avg(op_entropy) AS e FROM d GROUP BY ALL)
                      GROUP BY cohort, run_id) GROUP BY cohort),
            governor AS (
                SELECT cohort, count(*) FILTER (WHERE veto) AS vetoes, count(*) FILTER (WHERE rollback) AS rollbacks,
                       avg(level_change_rate) AS level_change_rate
                FROM s GROUP BY cohort)
            SELECT * FROM runs_ LEFT JOIN ops USING (cohort) LEFT JOIN entropy USING (cohort)
                 LEFT JOIN governor USING (cohort) ORDER BY cohort""",
            cohort,
            None,
            kind=kind,
            wait=int(Op.WAIT),
            grow=int(Op.GROW_INTERNAL),
            shrink=int(Op.SHRINK_INTERNAL),
            germinate=int(Op.GERMINATE),
            conv_heavy=int(Blueprint.CONV_HEAVY),
        )

    def run_status_counts(self) -> pl.DataFrame:
        """Runs per (kind, status): the report shows failed, killed and running ones apart."""
        return self._query("SELECT kind, status, count(*) AS runs FROM runs WHERE {where} GROUP BY ALL ORDER BY kind, status", None, None)


# conv_heavy's share of in-forward seed params per step (summed over envs and slots), with the
# run's env-step counter; shared by the per-run and the per-cohort queries.
_CONV_HEAVY_SHARE = """
    SELECT cohort, run_id, episode, step,
           dense_rank() OVER (PARTITION BY cohort, run_id ORDER BY episode, step) AS run_step,
           coalesce(sum(seed_param_count_active) FILTER (WHERE in_forward = 1 AND blueprint = $conv_heavy)
                    / nullif(sum(seed_param_count_active) FILTER (WHERE in_forward = 1), 0), 0) AS conv_heavy_forward_param_share,
           coalesce(sum(seed_param_count_active) FILTER (WHERE in_forward = 1), 0)::BIGINT AS forward_seed_params
    FROM slots WHERE {where} GROUP BY cohort, run_id, episode, step"""


# Every finished episode of a completed run (of kind $kind, or any when it is NULL), read at its
# last step; shared by `episode_outcomes` and `arm_summary`.
_OUTCOMES = """
            WITH r AS (SELECT cohort, run, kind, arm, parent_run, task, seed, preset FROM runs
                       WHERE status = 'completed' AND {where} AND (CAST($kind AS VARCHAR) IS NULL OR kind = $kind)),
            e AS (SELECT cohort, run, run_id, env, episode, any_value(episode_seed) AS episode_seed, max(step) AS last_step,
                         arg_max(full_metric, step) AS final_metric, sum(reward_total) AS episode_return,
                         arg_max(test_metric, step) AS test_metric,
                         avg(test_metric) FILTER (WHERE NOT isnan(test_metric)) AS test_metric_mean, sum(train_flops) AS train_flops,
                         sum(reward_task) AS reward_task, sum(reward_rent) AS rent, sum(reward_churn) AS churn,
                         arg_max(forward_params, step) AS forward_params, avg(forward_params) AS forward_params_mean,
                         avg(incubating_params) AS incubating_params_mean, any_value(host_params) AS host_params,
                         avg(level_change_rate) AS level_change_rate,
                         count(*) FILTER (WHERE veto) AS vetoes, count(*) FILTER (WHERE rollback) AS rollbacks
                  FROM steps WHERE {where} GROUP BY cohort, run, run_id, env, episode HAVING bool_or(done)),
            h AS (SELECT cohort, run, env, episode,
                         coalesce(sum(s.seed_param_count_active) FILTER (WHERE s.in_forward = 1 AND s.blueprint = $conv_heavy), 0)::BIGINT
                             AS conv_heavy_params
                  FROM slots s JOIN e USING (cohort, run, env, episode)
                  WHERE s.step = e.last_step AND {where} GROUP BY ALL)
            SELECT r.kind, r.arm, r.parent_run, r.task, r.seed, r.preset, e.* EXCLUDE (run), coalesce(h.conv_heavy_params, 0) AS conv_heavy_params
            FROM e JOIN r USING (cohort, run) LEFT JOIN h USING (cohort, run, env, episode)"""


# Buds, consolidations and the governor's vetoes of them, counted over `events` rows (`{count}`:
# count(*), or count(name) where a left join leaves null rows); shared by `economy` (per step)
# and `adjacency_counts` (per episode), with their parameters.
_ADJACENCY_COUNTS = """{count} FILTER (WHERE kind = $adjacency AND name IN ($bud_next, $bud_prev)) AS buds,
    {count} FILTER (WHERE kind = $adjacency AND name = $consolidate_op) AS consolidations,
    {count} FILTER (WHERE kind = $veto AND name IN ($bud, $consolidate)) AS adjacency_budget_vetoes,
    {count} FILTER (WHERE kind = $veto AND name = $low_roi) AS roi_vetoes"""
_ADJACENCY_PARAMS = dict(
    adjacency=int(EventKind.ADJACENCY),
    veto=int(EventKind.VETO),
    bud=VETO_BUD,
    consolidate=VETO_CONSOLIDATE,
    low_roi=VETO_LOW_ROI,
    bud_next=Op.BUD_NEXT_SURFACE.name,
    bud_prev=Op.BUD_PREV_SURFACE.name,
    consolidate_op=Op.CONSOLIDATE_WITH_NEXT.name,
)
