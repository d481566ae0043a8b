"""What every query mixin of `Store` shares: the key columns, the filters, and `_query`."""

from __future__ import annotations

import polars as pl

STEP_KEYS = "cohort, run_id, env, episode, step"
EPISODE_KEYS = "cohort, run_id, env, episode"
# A finished episode (its last step recorded `done`), with its seed and last step: a view in every
# scope of the store (`finished_episodes`), defined here once.
FINISHED_EPISODES = """SELECT cohort, run, run_id, env, episode, any_value(episode_seed) AS episode_seed, max(step) AS last_step
    FROM {schema}.steps GROUP BY ALL HAVING bool_or(done)"""


class QueryBase:
    def _query(self, query: str, cohort: str | None, run: str | None, **params) -> pl.DataFrame:  # pragma: no cover
        raise NotImplementedError  # supplied by Store


def by_keys(by_episode: bool) -> str:
    return "cohort, run_id, episode" if by_episode else "cohort, run_id"


def env_episode(env: int | None, episode: int | None) -> tuple[str, dict]:
    """Extra `AND` filters (and their parameters) for one env and/or episode of a run."""
    pairs = {k: int(v) for k, v in (("env", env), ("episode", episode)) if v is not None}
    return "".join(f" AND {k} = ${k}" for k in pairs), pairs
