"""Experiment packs (TOML cohorts x seeds), their papermill runner, members and reports."""
