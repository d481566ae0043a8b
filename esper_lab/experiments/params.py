"""Notebook parameters as papermill delivers them: `papermill -p cohorts a0_only` passes a string
(and `-p slot_counts 8` a number) where the notebook's default is a list."""

from __future__ import annotations


def as_list(name: str, value) -> list:
    """A list parameter as a list: one string or number is a one-item list (a string is never
    iterated letter by letter); anything else must already be a list or tuple."""
    if isinstance(value, str | int | float):
        return [value]
    if isinstance(value, list | tuple):
        return list(value)
    raise ValueError(f"{name}={value!r} must be a list (or a single value)")
