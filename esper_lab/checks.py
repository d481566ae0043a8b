"""One validation layer for every knob: a value's type first, then its range, one line per error.

Every config (`RunConfig`, its economy and decay tables, `PPOConfig`, `PolicyConfig`), the
settings, the pack files and the CLI check their values with these functions, so the same rules
hold everywhere: numbers are finite and never bools, bools are only `true`/`false` (never a
string or a number), integers are whole and fit the 63 bits the seed streams use, tables are
tables and names are names. An error is a `ConfigError` (a `ValueError`): one line naming the
key, the value and what is allowed; the CLI prints it as `esper-lab: error: ...` and exits 2.

Why hand-written, not pydantic: the configs are frozen dataclasses whose rules are mostly about
one another (a task's densities and blueprints, the arms a budget plays, the roles a decay
setting implies); values arrive from TOML, papermill and JSON with enums as names and tuples as
lists. These few functions give the strict, finite types the rules need without a second model
of every config to keep in step.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

MAX_INT = 2**63 - 1  # seeds and counts go through 64-bit streams (`contracts.stream_seed`) and torch
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
NAME_HELP = "1 to 128 letters, digits, '_', '-' or '.', starting with a letter or digit"


class ConfigError(ValueError):
    """Bad input, found before anything is computed or written: one line for the user."""


def integer(key: str, value: Any, low: int | None = None, high: int = MAX_INT) -> int:
    """A whole number (not a bool) in [low, high]."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not whole or (low is not None and value < low) or value > high:
        raise ConfigError(f"{key}={value!r} must be an integer{_range(low, high)}")
    return value


def number(key: str, value: Any, low: float | None = None, high: float | None = None, *, above: float | None = None) -> float:
    """A finite number (an int or a float, not a bool): >= low (or > above) and <= high."""
    finite = not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)))
    if not finite or (low is not None and value < low) or (above is not None and value <= above) or (high is not None and value > high):
        raise ConfigError(f"{key}={value!r} must be a finite number{_bounds(low, high, above)}")
    return float(value) if isinstance(value, float) else value


def flag(key: str, value: Any) -> bool:
    """true or false, nothing else ('yes', 1 and 'true' as a string are refused)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    return value


def choice(key: str, value: Any, allowed) -> str:
    """One of `allowed` (strings)."""
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(allowed)}")
    return value


def table(key: str, value: Any) -> dict:
    """A table (a dict with string keys), as a TOML inline table `{a = 1}` gives it."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key}={value!r} must be a table, e.g. {key}={{name = value}}")
    return value


def fields(key: str, value: Any, cls: type) -> dict:
    """A table of the dataclass `cls`'s fields and no other keys (`economy`, `ppo`, ...)."""
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(table(key, value)) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown keys {[f'{key}.{k}' for k in unknown]} (allowed: {', '.join(f'{key}.{f}' for f in allowed)})")
    return value


def items(key: str, value: Any) -> list | tuple:
    """A list (or tuple), never a string."""
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"{key}={value!r} must be a list, e.g. {key}=[...]")
    return value


def name(key: str, value: Any) -> str:
    """A cohort, pack or run name: plain data that is safe as a folder name and never a pattern."""
    if not isinstance(value, str) or not NAME_RULE.fullmatch(value):
        raise ConfigError(f"{key}={value!r} is not a name ({NAME_HELP})")
    return value


def _range(low, high) -> str:
    if low is None:
        return "" if high == MAX_INT else f" <= {high}"
    return f" >= {low}" if high == MAX_INT else f" in [{low}, {high}]"


def _bounds(low, high, above) -> str:
    parts = [f">= {low}" if low is not None else "", f"> {above}" if above is not None else "", f"<= {high}" if high is not None else ""]
    text = " and ".join(p for p in parts if p)
    return f" {text}" if text else ""
