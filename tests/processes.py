"""Helpers the tests that drive real processes share (the pack runner's faults, the Dask cluster)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from esper_lab.telemetry import Store


def wait_for(condition, timeout: float, what: str):
    """Poll `condition` until it returns something truthy, and return that; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return value


def assert_every_row_once(root: Path) -> None:
    """No (run, env, episode, step) of the steps or decisions tables was written twice."""
    store = Store(root)
    for table in ("steps", "decisions"):
        twice = store.sql(f"SELECT run_id, env, episode, step, count(*) AS n FROM {table} GROUP BY ALL HAVING n > 1")
        assert twice.is_empty(), f"{table} rows written twice: {twice}"
    store.close()
