"""The slot and lifecycle half of `Store`'s named queries: level changes, oscillation, seed
contributions and audits, grow-then-improve lags, per-slot series and event logs, and
Emrakul's decay (probes, lyses, the immune ledger). Same rules as `queries`."""

from __future__ import annotations

import polars as pl

from esper_lab.config import DecayConfig
from esper_lab.contracts import (
    LYSIS_PHYSICAL,
    MODULE_STAGES,
    PROBE_CLEARED,
    PROBE_RESTORED,
    PROBE_STARTED,
    ROI_PARAMS,
    SCAR_EXPIRED,
    SCAR_REGROWN,
    EventKind,
    Op,
    SlotKind,
    Stage,
)
from esper_lab.telemetry.query_base import EPISODE_KEYS, STEP_KEYS, QueryBase, env_episode

LAGS = (1, 2, 3, 5)  # env steps after a grow over which the task improvement is summed


class SlotQueries(QueryBase):
    """Named queries over slots, lifecycle events and decay (mixed into `Store` via `Queries`)."""

    # --- ladders, lifecycle and credit --------------------------------------------------------
    def level_change(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """`level_change_rate` and `net_level_change` per step (mean over envs; seed 002 anti-thrash)."""
        return self._query(
            """
            SELECT cohort, run_id, episode, step, avg(level_change_rate) AS level_change_rate,
                   avg(net_level_change) AS net_level_change
            FROM steps WHERE {where} GROUP BY ALL ORDER BY cohort, run_id, episode, step""",
            cohort,
            run,
        )

    def oscillation(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Per finished (run, env, episode), the thrash seed 003 §5.1's churn is meant to price:
        `regerminations` (a slot germinated again after a prune in the same episode), `alpha_reversals`
        (a slot's alpha turning from rising to falling or back) and `level_flips` (a GROW followed by
        a SHRINK on the same slot, or the reverse)."""
        return self._query(
            f"""
            WITH ep AS (SELECT {EPISODE_KEYS} FROM finished_episodes WHERE {{where}}),
            g AS (SELECT {EPISODE_KEYS}, slot, step, value AS stage,
                         count(*) FILTER (WHERE value = $pruned) OVER w AS prunes_before
                  FROM events WHERE kind = $transition AND {{where}}
                  WINDOW w AS (PARTITION BY {EPISODE_KEYS}, slot ORDER BY step, seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)),
            regerm AS (SELECT {EPISODE_KEYS}, count(*) AS regerminations FROM g
                       WHERE stage = $germinated AND prunes_before > 0 GROUP BY ALL),
            a AS (SELECT {EPISODE_KEYS}, slot, step, sign(alpha - lag(alpha) OVER (PARTITION BY {EPISODE_KEYS}, slot ORDER BY step)) AS move
                  FROM slots WHERE {{where}}),
            moves AS (SELECT *, lag(move) OVER (PARTITION BY {EPISODE_KEYS}, slot ORDER BY step) AS previous FROM a WHERE move <> 0),
            rev AS (SELECT {EPISODE_KEYS}, count(*) FILTER (WHERE move * previous < 0) AS alpha_reversals FROM moves GROUP BY ALL),
            lv AS (SELECT {EPISODE_KEYS}, slot, name, lag(name) OVER (PARTITION BY {EPISODE_KEYS}, slot ORDER BY step, seq) AS previous
                   FROM events WHERE kind = $level_changed AND {{where}}),
            flips AS (SELECT {EPISODE_KEYS}, count(*) FILTER (WHERE name <> previous) AS level_flips FROM lv GROUP BY ALL)
            SELECT ep.*, coalesce(regerminations, 0) AS regerminations, coalesce(alpha_reversals, 0) AS alpha_reversals,
                   coalesce(level_flips, 0) AS level_flips
            FROM ep LEFT JOIN regerm USING ({EPISODE_KEYS}) LEFT JOIN rev USING ({EPISODE_KEYS}) LEFT JOIN flips USING ({EPISODE_KEYS})
            ORDER BY {EPISODE_KEYS}""",
            cohort,
            run,
            transition=int(EventKind.TRANSITION),
            level_changed=int(EventKind.LEVEL_CHANGED),
            pruned=int(Stage.PRUNED),
            germinated=int(Stage.GERMINATED),
        )

    def contributions(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Every measured counterfactual contribution (seed 003 §8.2): the metric as is minus the
        metric with that seed's alpha forced to 0, signed so helping is > 0, with the seed's
        in-forward params and ROI = contribution per 1,000 of them."""
        return self._query(
            f"""
            SELECT s.cohort, s.run_id, s.env, s.episode, s.step, s.slot, s.surface_uid, s.blueprint, b.name AS blueprint_name,
                   s.stage, s.alpha, s.internal_level, s.contribution::DOUBLE AS contribution, s.seed_param_count_active AS params,
                   {ROI_PARAMS} * s.contribution / nullif(s.seed_param_count_active, 0) AS roi_per_kparam
            FROM slots s LEFT JOIN blueprint_names b ON b.value = s.blueprint
            WHERE s.contribution_measured = 1 AND {{where}} ORDER BY {", ".join(f"s.{k}" for k in STEP_KEYS.split(", "))}, s.slot""",
            cohort,
            run,
        )

    def audits(self, cohort: str | None = None, run: str | None = None, audited_run: str | None = None) -> pl.DataFrame:
        """Every seed an audit credited (esper_lab.audit): exact Shapley `phi` with its 95% CI,
        leave-one-out, the audited run's online contribution and its fate (PRUNE, FOSSILIZE, or
        null: kept), v of every coalition, with names; `run` is an audit's id, `audited_run` the
        run it audited."""
        extra = " AND a.audited_run = $audited_run" if audited_run is not None else ""
        params = {"audited_run": audited_run} if audited_run is not None else {}
        return self._query(
            f"""
            SELECT a.cohort, a.* EXCLUDE (cohort, run), b.name AS blueprint_name, o.name AS fate_name
            FROM audits a LEFT JOIN blueprint_names b ON b.value = a.blueprint LEFT JOIN op_names o ON o.value = a.fate_op
            WHERE {{where}}{extra} ORDER BY a.cohort, a.audited_run, a.env, a.episode, a.step, a.run_id, a.slot""",
            cohort,
            run,
            **params,
        )

    def grow_lagged_correlation(self, cohort: str | None = None, run: str | None = None, lags: tuple[int, ...] = LAGS) -> pl.DataFrame:
        """Correlation between "a grow event (an executed GROW_INTERNAL) at step t" and the task
        improvement over steps t .. t+lag-1 (summed signed `metric_gain`), per run and lag; null
        without variance. Windows over `steps` alone, then a join with the few grow events."""
        if not lags or not all(isinstance(k, int) and k >= 1 for k in lags):
            raise ValueError(f"lags={lags!r} must be integers >= 1")
        window = f"OVER (PARTITION BY {EPISODE_KEYS} ORDER BY step)"
        leads = "".join(f", lead(metric_gain, {k}) {window} AS g{k}" for k in range(1, max(lags)))
        sums = ", ".join(f"metric_gain{''.join(f' + g{j}' for j in range(1, k))} AS f{k}" for k in lags)
        stats = ", ".join(
            f"count(f{k}) AS n{k}, sum(grew) FILTER (WHERE f{k} IS NOT NULL) AS grows{k}, "
            f"CASE WHEN var_pop(grew) FILTER (WHERE f{k} IS NOT NULL) > 0 AND var_pop(f{k}) > 0 "
            f"THEN corr(grew, f{k}) END AS c{k}"
            for k in lags
        )
        per_lag = " UNION ALL ".join(
            f"SELECT cohort, run_id, {k} AS lag, n{k} AS n, grows{k}::BIGINT AS grows, c{k} AS correlation FROM a" for k in lags
        )
        return self._query(
            f"""
            WITH g AS (SELECT DISTINCT {STEP_KEYS} FROM events WHERE kind = $level_changed AND name = $grow AND {{where}}),
                 s AS (SELECT {STEP_KEYS}, metric_gain{leads} FROM steps WHERE {{where}}),
                 f AS (SELECT cohort, run_id, (g.step IS NOT NULL)::DOUBLE AS grew, {sums} FROM s LEFT JOIN g USING ({STEP_KEYS})),
                 a AS MATERIALIZED (SELECT cohort, run_id, {stats} FROM f GROUP BY cohort, run_id)
            SELECT * FROM ({per_lag}) ORDER BY cohort, run_id, lag""",
            cohort,
            run,
            level_changed=int(EventKind.LEVEL_CHANGED),
            grow=Op.GROW_INTERNAL.name,
        )

    def delta_norm_by_level(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """`delta_l2_norm` distribution per ladder blueprint and internal level (ladder seeds whose
        module runs, so their sensors are live)."""
        stages = ", ".join(str(int(s)) for s in sorted(MODULE_STAGES))
        return self._query(
            f"""
            SELECT cohort, blueprint, any_value(b.name) AS blueprint_name, internal_level, count(*) AS n,
                   avg(delta) AS mean, quantile_cont(delta, 0.25) AS q25, median(delta) AS median,
                   quantile_cont(delta, 0.75) AS q75
            FROM (SELECT *, delta_l2_norm::DOUBLE AS delta FROM slots) JOIN blueprint_names b ON b.value = blueprint
            WHERE max_level > 0 AND stage IN ({stages}) AND {{where}}
            GROUP BY cohort, blueprint, internal_level ORDER BY cohort, blueprint, internal_level""",
            cohort,
            run,
        )

    def fossilisation_ratio(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Seeds fossilised per seed germinated (and pruned), from lifecycle transition events."""
        return self._query(
            """
            SELECT r.cohort, r.run_id,
                   count(e.value) FILTER (WHERE e.value = $germinated) AS germinated,
                   count(e.value) FILTER (WHERE e.value = $fossilized) AS fossilized,
                   count(e.value) FILTER (WHERE e.value = $pruned) AS pruned,
                   fossilized / nullif(germinated, 0) AS fossilisation_ratio
            FROM (SELECT cohort, run, run_id FROM runs WHERE {where}) r
            LEFT JOIN events e ON e.run = r.run AND e.cohort = r.cohort AND e.kind = $transition
            GROUP BY ALL ORDER BY r.cohort, r.run_id""",
            cohort,
            run,
            germinated=int(Stage.GERMINATED),
            fossilized=int(Stage.FOSSILIZED),
            pruned=int(Stage.PRUNED),
            transition=int(EventKind.TRANSITION),
        )

    # --- dashboards ---------------------------------------------------------------------------
    def slot_series(self, cohort: str | None = None, run: str | None = None, env: int | None = None, episode: int | None = None) -> pl.DataFrame:
        """Per step and slot, with names: stage, blueprint, alpha, ladder level, sensors, whether
        the seed is in forward, its contribution, the params/FLOPs rent is charged on, and the
        slot's kind (seed, phage, scar) with a phage's sedation."""
        extra, params = env_episode(env, episode)
        return self._query(
            f"""
            SELECT s.cohort, s.run_id, s.env, s.episode, s.step, s.slot, s.surface_uid,
                   concat_ws(' · ', 'slot ' || s.slot, si.name, CASE WHEN s.role <> 0 THEN ro.name END,
                             printf('depth %.2f', s.depth_norm)) AS surface,
                   s.stage, st.name AS stage_name, s.blueprint, b.name AS blueprint_name, s.alpha, s.alpha_target,
                   s.internal_level, s.max_level, s.delta_l2_norm, s.output_l2_norm, s.seed_param_count_active,
                   s.seed_flops_active_est, s.in_forward, s.contribution, s.germinations, s.slot_kind, s.sedation
            FROM slots s LEFT JOIN stage_names st ON st.value = s.stage  -- blueprint -1: no seed (null name)
                 LEFT JOIN blueprint_names b ON b.value = s.blueprint LEFT JOIN site_names si ON si.value = s.site
                 LEFT JOIN role_names ro ON ro.value = s.role
            WHERE {{where}}{extra} ORDER BY s.cohort, s.run_id, s.env, s.episode, s.step, s.slot""",
            cohort,
            run,
            **params,
        )

    def event_log(self, cohort: str | None = None, run: str | None = None, env: int | None = None, episode: int | None = None) -> pl.DataFrame:
        """Events in order with their kind's name (lifecycle transitions, level changes, vetoes...)."""
        extra, params = env_episode(env, episode)
        return self._query(
            f"""
            SELECT e.cohort, e.run_id, e.env, e.episode, e.step, e.seq, e.slot, e.surface_uid,
                   k.name AS kind_name, e.name, e.value
            FROM events e JOIN event_kind_names k ON k.value = e.kind
            WHERE {{where}}{extra} ORDER BY e.cohort, e.run_id, e.env, e.episode, e.step, e.seq""",
            cohort,
            run,
            **params,
        )

    # --- pack reports (esper_lab.experiments.report) ------------------------------------------
    # --- decay (Emrakul) ---------------------------------------------------------------------------
    def decay_counts(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Per finished (run, env, episode): Emrakul's sedation probes started, restored (they
        hurt) and cleared, the phages physically lysed, and the scars regrown or expired."""
        counts = {
            "probes": PROBE_STARTED,
            "restored": PROBE_RESTORED,
            "cleared": PROBE_CLEARED,
            "lyses": LYSIS_PHYSICAL,
            "regrown": SCAR_REGROWN,
            "expired": SCAR_EXPIRED,
        }
        columns = ", ".join(f"count(name) FILTER (WHERE name = ${key}) AS {key}" for key in counts)
        return self._query(
            f"""
            WITH ep AS (SELECT {EPISODE_KEYS} FROM finished_episodes WHERE {{where}}),
            ev AS (SELECT {EPISODE_KEYS}, name FROM events WHERE kind IN ($probe, $lysis) AND {{where}})
            SELECT ep.*, {columns} FROM ep LEFT JOIN ev USING ({EPISODE_KEYS}) GROUP BY ALL ORDER BY {EPISODE_KEYS}""",
            cohort,
            run,
            probe=int(EventKind.PROBE),
            lysis=int(EventKind.LYSIS),
            **counts,
        )

    def probes(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """One row per judged sedation probe: the phage's slot, the steps it started and was
        judged, its baseline metric, the drop while gated, whether it was `restored` (it hurt) or
        cleared, the run's `decay.harm_tolerance`, `decay.lock_steps` and `decay.watch_steps`
        (the default for runs recorded before it), and `recovery_steps`: steps after the judgement
        until the step metric was back within the tolerance of the baseline (null: not within
        the episode), the measure of a permanent loss spike."""
        return self._query(
            f"""
            WITH st AS (SELECT {EPISODE_KEYS}, slot, step AS started, value AS baseline FROM events
                        WHERE kind = $probe AND name = $started AND {{where}}),
            ju AS (SELECT {EPISODE_KEYS}, slot, step AS judged, name = $restored AS restored, value AS drop FROM events
                   WHERE kind = $probe AND name IN ($restored, $cleared) AND {{where}}),
            tol AS (SELECT run_id, CAST(json_extract(config_json, '$.decay.harm_tolerance') AS DOUBLE) AS tolerance,
                           CAST(json_extract(config_json, '$.decay.lock_steps') AS INTEGER) AS lock_steps,
                           COALESCE(CAST(json_extract(config_json, '$.decay.watch_steps') AS INTEGER), {DecayConfig.watch_steps})
                               AS watch_steps
                    FROM runs WHERE {{where}}),
            m AS (SELECT {EPISODE_KEYS}, step, metric FROM steps WHERE {{where}}),
            p AS (SELECT ju.cohort, ju.run_id, ju.env, ju.episode, ju.slot, st.started, ju.judged, st.baseline, ju.drop,
                         ju.restored, tol.tolerance, tol.lock_steps, tol.watch_steps
                  FROM ju ASOF JOIN st ON ju.cohort = st.cohort AND ju.run_id = st.run_id AND ju.env = st.env
                       AND ju.episode = st.episode AND ju.slot = st.slot AND ju.judged >= st.started
                  JOIN tol ON tol.run_id = ju.run_id),
            rec AS (SELECT p.cohort, p.run_id, p.env, p.episode, p.judged, min(m.step) - p.judged AS recovery_steps
                    FROM p JOIN m ON m.cohort = p.cohort AND m.run_id = p.run_id AND m.env = p.env AND m.episode = p.episode
                    WHERE m.step > p.judged AND m.metric >= p.baseline - p.tolerance
                    GROUP BY p.cohort, p.run_id, p.env, p.episode, p.judged)
            SELECT p.*, rec.recovery_steps FROM p LEFT JOIN rec USING (cohort, run_id, env, episode, judged)
            ORDER BY cohort, run_id, env, episode, judged""",
            cohort,
            run,
            probe=int(EventKind.PROBE),
            started=PROBE_STARTED,
            restored=PROBE_RESTORED,
            cleared=PROBE_CLEARED,
        )

    def immune_ledger(self, cohort: str | None = None, run: str | None = None, env: int | None = None, episode: int | None = None) -> pl.DataFrame:
        """Per step and slot that is a phage or a scar (seed 004 Stage 2): its kind, sedation
        mask, Emrakul's ledger (debt in reward units, antibodies, lock left), the blueprint there
        (or, for a scar, the one removed), its age as a scar and its last contribution; `phage`
        labels the slot and its blueprint for plots."""
        extra, params = env_episode(env, episode)
        return self._query(
            f"""
            SELECT s.cohort, s.run_id, s.env, s.episode, s.step, s.slot, s.surface_uid, s.slot_kind,
                   CASE s.slot_kind WHEN $phage THEN 'PHAGE' ELSE 'SCAR' END AS kind_name, s.sedation, s.debt, s.antibodies,
                   s.lock_remaining, coalesce(b.name, r.name) AS blueprint_name, s.scar_age, s.contribution, s.scar_contribution,
                   'slot ' || s.slot || ' ' || lower(coalesce(b.name, r.name)) AS phage
            FROM (SELECT * FROM slots WHERE slot_kind IN ($phage, $scar) AND {{where}}{extra}) s
            LEFT JOIN blueprint_names b ON b.value = s.blueprint LEFT JOIN blueprint_names r ON r.value = s.scar_blueprint
            ORDER BY {", ".join(f"s.{k}" for k in STEP_KEYS.split(", "))}, s.slot""",
            cohort,
            run,
            phage=int(SlotKind.PHAGE),
            scar=int(SlotKind.SCAR),
            **params,
        )
