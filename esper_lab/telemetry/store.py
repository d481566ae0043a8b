"""The telemetry store: DuckDB views over a telemetry root and the named queries dashboards use.

Every number a dashboard or report shows comes from one of the query methods here (DESIGN rule
5), so the SQL lives in this one module. Each view reads
`<root>/cohort=*/run=*/<table>/*.parquet` with hive partitioning, so `cohort` and `run` (the
folder names) are columns and filters on them skip whole runs without opening their files.
Enum columns hold integers; `<enum>_names(value, name)` tables give the names (`op_names`,
`stage_names`, `blueprint_names`, ... for every enum in `schema.ENUMS`).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from esper_lab.contracts import Blueprint, EventKind, Op, Stage
from esper_lab.governor import VETO_GERMINATE, VETO_INTERNAL_GROW
from esper_lab.telemetry.schema import ENUMS, HEADS, SCHEMAS, TABLES

LAGS = (1, 2, 3, 5)  # env steps after a grow over which the task improvement is summed
SEED_IN_FORWARD = (Stage.TRAINING, Stage.BLENDING, Stage.HOLDING, Stage.FOSSILIZED)  # sensors are live
_KEYS = "cohort, run_id, env, episode, step"


class CorruptPart(ValueError):
    """A part file that cannot be read; the message names the file."""


class Store:
    """An in-memory DuckDB connection with one view per telemetry table under `root`."""

    def __init__(self, root: str | Path, validate: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"telemetry root {self.root} is not a folder")
        self.con = duckdb.connect()
        for name, cls in ENUMS.items():
            self.con.register(f"{name}_names", pa.table({"value": [int(m) for m in cls], "name": [m.name for m in cls]}))
        if validate:
            self.validate()
        self.refresh()

    def parts(self, table: str | None = None) -> list[Path]:
        """Visible parts (hidden temporary files and compaction folders are not parts)."""
        return sorted(p for t in ([table] if table else TABLES) for p in self.root.glob(f"cohort=*/run=*/{t}/*.parquet"))

    def validate(self) -> int:
        """Open every part's footer; raise `CorruptPart` naming the first unreadable file."""
        parts = self.parts()
        for path in parts:
            try:
                pq.read_metadata(path)
            except (pa.ArrowException, OSError) as error:
                raise CorruptPart(f"corrupt telemetry part {path}: {error}") from error
        return len(parts)

    def refresh(self) -> None:
        """(Re)create the views; a table with no parts yet gets an empty view with its schema."""
        for table in TABLES:
            if self.parts(table):
                pattern = str(self.root / "cohort=*" / "run=*" / table / "*.parquet").replace("'", "''")
                source = (f"read_parquet('{pattern}', hive_partitioning = true, union_by_name = true, "
                          "hive_types = {'cohort': VARCHAR, 'run': VARCHAR})")  # fmt: skip
            else:
                empty = SCHEMAS[table].append(pa.field("cohort", pa.string())).append(pa.field("run", pa.string()))
                source = f"_empty_{table}"
                self.con.register(source, empty.empty_table())
            self.con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {source}")

    def sql(self, query: str, **params) -> pl.DataFrame:
        """Run one query; a DuckDB error caused by a bad part is re-raised naming the file."""
        try:
            return self.con.sql(query, params=params or None).pl()
        except duckdb.Error:
            self.validate()
            raise

    def _query(self, query: str, cohort: str | None, run: str | None, **params) -> pl.DataFrame:
        """Fill `{where}` with the cohort/run filter (hive columns, so whole runs are skipped)."""
        where = ["true"]
        if cohort is not None:
            where.append("cohort = $cohort")
            params["cohort"] = cohort
        if run is not None:
            where.append("run = $run")
            params["run"] = run
        return self.sql(query.format(where=" AND ".join(where)), **params)

    # --- raw rows -----------------------------------------------------------------------------
    def runs(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """The run manifests: config, versions, lineage and status."""
        return self._query("SELECT * EXCLUDE (run) FROM runs WHERE {where} ORDER BY started_at, run_id", cohort, run)

    def rows(self, table: str, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """One table's rows in key order (what replay compares)."""
        if table not in TABLES[1:]:
            raise ValueError(f"table={table!r} is not one of: {', '.join(TABLES[1:])}")
        order = {"slots": ", slot", "events": ", seq"}.get(table, "")
        keys = "cohort, run_id, update" if table == "updates" else _KEYS
        return self._query(f"SELECT * EXCLUDE (run) FROM {table} WHERE {{where}} ORDER BY {keys}{order}", cohort, run)

    # --- economy ------------------------------------------------------------------------------
    def rent_churn(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Per step (mean over envs): C_rent, C_churn, total reward, active seed params and FLOPs."""
        return self._query("""
            SELECT cohort, run_id, episode, step, avg(reward_rent) AS rent, avg(reward_churn) AS churn,
                   avg(reward_total) AS reward, avg(active_params) AS active_params,
                   avg(active_flops) AS active_flops, count(*) AS envs
            FROM steps WHERE {where} GROUP BY ALL ORDER BY cohort, run_id, episode, step""", cohort, run)

    def conv_heavy_share(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """`conv_heavy_active_param_share` per step: conv_heavy's share of active seed parameters
        summed over envs and slots (0 when no seed holds parameters). `run_step` counts env steps
        from the run's start (episodes, then steps), so seeds of one preset line up."""
        return self._query(_CONV_HEAVY_SHARE + " ORDER BY cohort, run_id, episode, step", cohort, run,
                           conv_heavy=int(Blueprint.CONV_HEAVY))  # fmt: skip

    def cohort_summary(self, cohort: str | None = None) -> pl.DataFrame:
        """Per cohort, across runs (seeds): median and q25 of final metric, return and ROI."""
        stats = ", ".join(
            f"median({c}) AS {c}_median, quantile_cont({c}, 0.25) AS {c}_q25"
            for c in ("final_metric", "episode_return", "roi")
        )
        return self._query(f"WITH outcomes AS ({_RUN_OUTCOMES}) SELECT cohort, count(*) AS runs, {stats} "
                           "FROM outcomes GROUP BY cohort ORDER BY cohort", cohort, None)  # fmt: skip

    def run_outcomes(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Per run, the last completed episode averaged over envs: final task metric, return, and
        ROI = return per mean active seed parameter (seed 000: reward per active param)."""
        return self._query(_RUN_OUTCOMES + " ORDER BY cohort, run_id", cohort, run)

    # --- decisions ----------------------------------------------------------------------------
    def lifecycle_op_counts(self, cohort: str | None = None, run: str | None = None, by_episode: bool = False) -> pl.DataFrame:
        """Every op (GROW/SHRINK/FOCUS included, zeros too): times chosen and times executed."""
        by = _by(by_episode)
        same = " AND ".join(f"c.{k} = k.{k}" for k in by.split(", "))
        return self._query(f"""
            WITH counts AS (
                SELECT {by}, op, count(*) AS chosen, count(*) FILTER (WHERE NOT vetoed) AS executed
                FROM decisions WHERE {{where}} GROUP BY ALL)
            SELECT k.*, n.value AS op, n.name AS op_name,
                   coalesce(c.chosen, 0) AS chosen, coalesce(c.executed, 0) AS executed
            FROM (SELECT DISTINCT {by} FROM counts) k CROSS JOIN op_names n
            LEFT JOIN counts c ON {same} AND c.op = n.value
            ORDER BY {by}, op""", cohort, run)  # fmt: skip

    def grow_shrink_share(self, cohort: str | None = None, run: str | None = None, by_episode: bool = False) -> pl.DataFrame:
        """GROW_INTERNAL + SHRINK_INTERNAL as a share of chosen non-WAIT ops (seed 002 gate: >= 10%)."""
        by = _by(by_episode)
        return self._query(f"""
            SELECT {by}, count(*) FILTER (WHERE op = $grow) AS grow, count(*) FILTER (WHERE op = $shrink) AS shrink,
                   count(*) FILTER (WHERE op <> $wait) AS non_wait, (grow + shrink) / nullif(non_wait, 0) AS grow_shrink_share
            FROM decisions WHERE {{where}} GROUP BY ALL ORDER BY {by}""",
            cohort, run, grow=int(Op.GROW_INTERNAL), shrink=int(Op.SHRINK_INTERNAL), wait=int(Op.WAIT))  # fmt: skip

    def policy_entropy(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Mean entropy of each head per episode (learned policies only: baselines record none)."""
        means = ", ".join(f"avg({h}_entropy) AS {h}" for h in HEADS)
        return self._query(f"""
            WITH e AS (SELECT cohort, run_id, episode, count(op_entropy) AS decisions, {means}
                       FROM decisions WHERE {{where}} GROUP BY ALL)
            SELECT cohort, run_id, episode, head, entropy, decisions
            FROM (UNPIVOT e ON {", ".join(HEADS)} INTO NAME head VALUE entropy)
            ORDER BY cohort, run_id, episode, head""", cohort, run)  # fmt: skip

    def invalid_action_rate(self, cohort: str | None = None, run: str | None = None, by_episode: bool = False) -> pl.DataFrame:
        """Share of decisions with masks where some head's sampled value is outside its mask."""
        by = _by(by_episode)
        return self._query(f"""
            SELECT {by}, count(sampled_legal) AS masked_decisions, count(*) FILTER (WHERE NOT sampled_legal) AS invalid,
                   invalid / nullif(masked_decisions, 0) AS invalid_action_rate
            FROM decisions WHERE {{where}} GROUP BY ALL ORDER BY {by}""", cohort, run)  # fmt: skip

    def governor_counts(self, cohort: str | None = None, run: str | None = None, by_episode: bool = False) -> pl.DataFrame:
        """Governor vetoes (all, internal-grow, germinate) and rollbacks, with the veto rate."""
        by = _by(by_episode)
        return self._query(f"""
            WITH s AS (SELECT {by}, count(*) AS steps, count(*) FILTER (WHERE veto) AS vetoes,
                              count(*) FILTER (WHERE rollback) AS rollbacks
                       FROM steps WHERE {{where}} GROUP BY ALL),
                 e AS (SELECT {by}, count(*) FILTER (WHERE name = $grow) AS grow_vetoes,
                              count(*) FILTER (WHERE name = $germinate) AS germinate_vetoes
                       FROM events WHERE kind = $veto AND {{where}} GROUP BY ALL)
            SELECT s.*, coalesce(e.grow_vetoes, 0) AS grow_vetoes, coalesce(e.germinate_vetoes, 0) AS germinate_vetoes,
                   vetoes / steps AS veto_rate
            FROM s LEFT JOIN e USING ({by}) ORDER BY {by}""",
            cohort, run, grow=VETO_INTERNAL_GROW, germinate=VETO_GERMINATE, veto=int(EventKind.VETO))  # fmt: skip

    # --- ladders and lifecycle ----------------------------------------------------------------
    def level_change(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """`level_change_rate` and `net_level_change` per step (mean over envs; seed 002 anti-thrash)."""
        return self._query("""
            SELECT cohort, run_id, episode, step, avg(level_change_rate) AS level_change_rate,
                   avg(net_level_change) AS net_level_change
            FROM steps WHERE {where} GROUP BY ALL ORDER BY cohort, run_id, episode, step""", cohort, run)

    def grow_lagged_correlation(self, cohort: str | None = None, run: str | None = None, lags: tuple[int, ...] = LAGS) -> pl.DataFrame:
        """Correlation between "a grow event (an executed GROW_INTERNAL) at step t" and the task
        improvement over steps t .. t+lag-1 (summed signed `metric_gain`), per run and lag; null
        without variance. Windows over `steps` alone, then a join with the few grow events."""
        if not lags or not all(isinstance(k, int) and k >= 1 for k in lags):
            raise ValueError(f"lags={lags!r} must be integers >= 1")
        window = "OVER (PARTITION BY cohort, run_id, env, episode ORDER BY step)"
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
        return self._query(f"""
            WITH g AS (SELECT DISTINCT {_KEYS} FROM events WHERE kind = $level_changed AND name = $grow AND {{where}}),
                 s AS (SELECT {_KEYS}, metric_gain{leads} FROM steps WHERE {{where}}),
                 f AS (SELECT cohort, run_id, (g.step IS NOT NULL)::DOUBLE AS grew, {sums} FROM s LEFT JOIN g USING ({_KEYS})),
                 a AS MATERIALIZED (SELECT cohort, run_id, {stats} FROM f GROUP BY cohort, run_id)
            SELECT * FROM ({per_lag}) ORDER BY cohort, run_id, lag""",
            cohort, run, level_changed=int(EventKind.LEVEL_CHANGED), grow=Op.GROW_INTERNAL.name)  # fmt: skip

    def delta_norm_by_level(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """`delta_l2_norm` distribution per ladder blueprint and internal level (live ladder slots)."""
        stages = ", ".join(str(int(s)) for s in SEED_IN_FORWARD)
        return self._query(f"""
            SELECT cohort, blueprint, any_value(b.name) AS blueprint_name, internal_level, count(*) AS n,
                   avg(delta) AS mean, quantile_cont(delta, 0.25) AS q25, median(delta) AS median,
                   quantile_cont(delta, 0.75) AS q75
            FROM (SELECT *, delta_l2_norm::DOUBLE AS delta FROM slots) JOIN blueprint_names b ON b.value = blueprint
            WHERE max_level > 0 AND stage IN ({stages}) AND {{where}}
            GROUP BY cohort, blueprint, internal_level ORDER BY cohort, blueprint, internal_level""", cohort, run)  # fmt: skip

    def fossilisation_ratio(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Seeds fossilised per seed germinated (and pruned), from lifecycle transition events."""
        return self._query("""
            SELECT r.cohort, r.run_id,
                   count(e.value) FILTER (WHERE e.value = $germinated) AS germinated,
                   count(e.value) FILTER (WHERE e.value = $fossilized) AS fossilized,
                   count(e.value) FILTER (WHERE e.value = $pruned) AS pruned,
                   fossilized / nullif(germinated, 0) AS fossilisation_ratio
            FROM (SELECT cohort, run, run_id FROM runs WHERE {where}) r
            LEFT JOIN events e ON e.run = r.run AND e.cohort = r.cohort AND e.kind = $transition
            GROUP BY ALL ORDER BY r.cohort, r.run_id""",
            cohort, run, germinated=int(Stage.GERMINATED), fossilized=int(Stage.FOSSILIZED),
            pruned=int(Stage.PRUNED), transition=int(EventKind.TRANSITION))  # fmt: skip


    # --- dashboards (esper_lab.dashboards) ----------------------------------------------------
    def close(self) -> None:
        """Close and drop the connection: a store still referenced at interpreter exit (a served
        dashboard session's) otherwise makes DuckDB's bindings report leaked objects."""
        self.con.close()
        self.con = None

    def conv_heavy_share_bands(self, cohort: str | None = None) -> pl.DataFrame:
        """Per cohort and `run_step`, across its runs (seeds): median, q25 and q75 of
        `conv_heavy_active_param_share`: reliability across seeds, not the lucky run (seed 003)."""
        return self._query(f"""
            SELECT cohort, run_step, min(episode) AS episode, min(step) AS step, count(*) AS runs,
                   median(conv_heavy_active_param_share) AS median,
                   quantile_cont(conv_heavy_active_param_share, 0.25) AS q25,
                   quantile_cont(conv_heavy_active_param_share, 0.75) AS q75
            FROM ({_CONV_HEAVY_SHARE}) GROUP BY cohort, run_step ORDER BY cohort, run_step""",
            cohort, None, conv_heavy=int(Blueprint.CONV_HEAVY))  # fmt: skip

    def episodes(self, cohort: str | None = None, run: str | None = None) -> pl.DataFrame:
        """Each run's (env, episode) pairs, their recorded steps and whether the episode finished."""
        return self._query("""
            SELECT cohort, run_id, env, episode, count(*) AS steps, bool_or(done) AS done
            FROM steps WHERE {where} GROUP BY ALL ORDER BY cohort, run_id, env, episode""", cohort, run)  # fmt: skip

    def slot_series(self, cohort: str | None = None, run: str | None = None, env: int | None = None,
                    episode: int | None = None) -> pl.DataFrame:  # fmt: skip
        """Per step and slot, with names: stage, blueprint, alpha, ladder level, sensors and the
        active params/FLOPs that rent is charged on (the swimlane and the slot inspector)."""
        extra, params = _env_episode(env, episode)
        return self._query(f"""
            SELECT s.cohort, s.run_id, s.env, s.episode, s.step, s.slot, s.surface_uid,
                   concat_ws(' · ', 'slot ' || s.slot, si.name, CASE WHEN s.role <> 0 THEN ro.name END,
                             printf('depth %.2f', s.depth_norm)) AS surface,
                   s.stage, st.name AS stage_name, s.blueprint, b.name AS blueprint_name, s.alpha, s.alpha_target,
                   s.internal_level, s.max_level, s.delta_l2_norm, s.output_l2_norm, s.seed_param_count_active,
                   s.seed_flops_active_est, s.germinations
            FROM slots s LEFT JOIN stage_names st ON st.value = s.stage  -- blueprint -1: no seed (null name)
                 LEFT JOIN blueprint_names b ON b.value = s.blueprint LEFT JOIN site_names si ON si.value = s.site
                 LEFT JOIN role_names ro ON ro.value = s.role
            WHERE {{where}}{extra} ORDER BY s.cohort, s.run_id, s.env, s.episode, s.step, s.slot""",
            cohort, run, **params)  # fmt: skip

    def event_log(self, cohort: str | None = None, run: str | None = None, env: int | None = None,
                  episode: int | None = None) -> pl.DataFrame:  # fmt: skip
        """Events in order with their kind's name (lifecycle transitions, level changes, vetoes...)."""
        extra, params = _env_episode(env, episode)
        return self._query(f"""
            SELECT e.cohort, e.run_id, e.env, e.episode, e.step, e.seq, e.slot, e.surface_uid,
                   k.name AS kind_name, e.name, e.value
            FROM events e JOIN event_kind_names k ON k.value = e.kind
            WHERE {{where}}{extra} ORDER BY e.cohort, e.run_id, e.env, e.episode, e.step, e.seq""", cohort, run, **params)  # fmt: skip

    # --- pack reports (esper_lab.experiments.report) ------------------------------------------
    def cohort_report(self, cohort: str | None = None) -> pl.DataFrame:
        """One row per cohort: the numbers the pack report shows and judges seed 002's gates on.

        Outcomes: median and q25 across runs (seeds). conv_heavy share: the median across runs of
        each run's mean per-step share; germination share: conv_heavy's share of executed
        germinations. Op counts and per-head entropies pool the cohort's decisions. Op-head entropy
        first/last: each run's first and last episode, averaged over runs. level_change_rate: mean over steps; net_level_change:
        mean at episode ends."""
        return self._query(f"""
            WITH outcomes AS ({_RUN_OUTCOMES}),
            summary AS (
                SELECT cohort, count(*) AS runs,
                       median(final_metric) AS final_metric_median, quantile_cont(final_metric, 0.25) AS final_metric_q25,
                       median(episode_return) AS return_median, quantile_cont(episode_return, 0.25) AS return_q25,
                       median(roi) AS roi_median, quantile_cont(roi, 0.25) AS roi_q25
                FROM outcomes GROUP BY cohort),
            share AS (
                SELECT cohort, median(run_share) AS conv_heavy_share
                FROM (SELECT cohort, run_id, avg(conv_heavy_active_param_share) AS run_share
                      FROM ({_CONV_HEAVY_SHARE}) GROUP BY cohort, run_id) GROUP BY cohort),
            ops AS (
                SELECT cohort, count(*) FILTER (WHERE op <> $wait) AS non_wait,
                       count(*) FILTER (WHERE op IN ($grow, $shrink)) / nullif(non_wait, 0) AS grow_shrink_share,
                       count(*) FILTER (WHERE executed_op = $germinate) AS germinations,
                       count(*) FILTER (WHERE executed_op = $germinate AND resolved_blueprint = $conv_heavy)
                           / nullif(germinations, 0) AS conv_heavy_germination_share,
                       {", ".join(f"avg({h}_entropy) AS entropy_{h}" for h in HEADS)}
                FROM decisions WHERE {{where}} GROUP BY cohort),
            entropy AS (
                SELECT cohort, avg(first_entropy) AS op_entropy_first, avg(last_entropy) AS op_entropy_last
                FROM (SELECT cohort, run_id, arg_min(e, episode) AS first_entropy, arg_max(e, episode) AS last_entropy
                      FROM (SELECT cohort, run_id, episode, avg(op_entropy) AS e FROM decisions WHERE {{where}} GROUP BY ALL)
                      GROUP BY cohort, run_id) GROUP BY cohort),
            governor AS (
                SELECT cohort, count(*) FILTER (WHERE veto) AS vetoes, count(*) FILTER (WHERE rollback) AS rollbacks,
                       avg(level_change_rate) AS level_change_rate,
                       avg(net_level_change) FILTER (WHERE done) AS net_level_change
                FROM steps WHERE {{where}} GROUP BY cohort)
            SELECT * FROM summary LEFT JOIN share USING (cohort) LEFT JOIN ops USING (cohort)
                 LEFT JOIN entropy USING (cohort) LEFT JOIN governor USING (cohort) ORDER BY cohort""",
            cohort, None, wait=int(Op.WAIT), grow=int(Op.GROW_INTERNAL), shrink=int(Op.SHRINK_INTERNAL),
            germinate=int(Op.GERMINATE), conv_heavy=int(Blueprint.CONV_HEAVY))  # fmt: skip


def _by(by_episode: bool) -> str:
    return "cohort, run_id, episode" if by_episode else "cohort, run_id"


def _env_episode(env: int | None, episode: int | None) -> tuple[str, dict]:
    """Extra `AND` filters (and their parameters) for one env and/or episode of a run."""
    pairs = {k: int(v) for k, v in (("env", env), ("episode", episode)) if v is not None}
    return "".join(f" AND {k} = ${k}" for k in pairs), pairs


# The last completed episode of each run, averaged over its envs.
_RUN_OUTCOMES = """
    WITH episodes AS (
        SELECT cohort, run_id, env, episode, arg_max(metric, step) AS final_metric,
               sum(reward_total) AS episode_return, avg(active_params) AS mean_active_params
        FROM steps WHERE {where} GROUP BY ALL HAVING bool_or(done)),
    last AS (SELECT * FROM episodes QUALIFY episode = max(episode) OVER (PARTITION BY cohort, run_id))
    SELECT cohort, run_id, count(*) AS envs, avg(final_metric) AS final_metric, avg(episode_return) AS episode_return,
           avg(episode_return / nullif(mean_active_params, 0)) AS roi
    FROM last GROUP BY cohort, run_id"""


# conv_heavy's share of active seed parameters per step (summed over envs and slots), with the
# run's env-step counter; shared by the per-run and the per-cohort queries.
_CONV_HEAVY_SHARE = """
    SELECT cohort, run_id, episode, step,
           dense_rank() OVER (PARTITION BY cohort, run_id ORDER BY episode, step) AS run_step,
           coalesce(sum(seed_param_count_active) FILTER (WHERE blueprint = $conv_heavy)
                    / nullif(sum(seed_param_count_active), 0), 0) AS conv_heavy_active_param_share,
           sum(seed_param_count_active)::BIGINT AS active_seed_params
    FROM slots WHERE {where} GROUP BY cohort, run_id, episode, step"""
