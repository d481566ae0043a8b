"""Experiment packs as data: cohorts x seeds under one shared preset (seed 000 "experiment pack").

A pack file (TOML, in `packs/`) names its notebook, its control cohort, its presets (one per size:
"smoke", "full") and its cohorts. A preset holds the budget every cohort shares (`rounds`, `envs`,
`workers`, `eval_episodes`, `seeds`, episode shape, PPO settings); a cohort holds what the study
varies (task, surface density, blueprints, economy weights...). Both take any key of
`experiments.settings` (a `RunConfig` field, `economy.*`, `ppo.*`, `policy.*`, a loop key), as
tables for the dotted ones; a cohort's value wins over its preset's, and `--set` wins over both.
Everything is validated on load, before any kernel starts, by building the settings of every
(cohort, seed, preset).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper_lab import checks
from esper_lab.config import RunConfig
from esper_lab.experiments.settings import Settings, merge
from esper_lab.experiments.stats import MIN_SEEDS
from esper_lab.studies import pack_files, study_names, study_of

REQUIRED_KEYS = ("name", "title", "notebook", "seeds", "control", "presets", "cohorts")
OPTIONAL_KEYS = ("description", "study")  # markdown the member notebook shows first; the study outside esper_lab/studies/


@dataclass(frozen=True)
class Pack:
    name: str
    title: str
    notebook: str
    seeds: tuple[int, ...]  # the default; a preset may set its own `seeds`
    control: str
    presets: dict[str, dict[str, Any]]
    cohorts: dict[str, dict[str, Any]]
    path: Path  # the TOML it was loaded from: members load this file, not a shipped pack of the same name
    study: str = "seed002"  # whose exit gates the report judges (`esper_lab.studies`)
    description: str = ""  # markdown: the pack's question and cohorts, which its member notebook shows first

    @property
    def reference(self) -> str:
        """What a member loads this pack by: a shipped pack's name (found in the package wherever
        it is installed), else its file (which every worker must see at that path)."""
        shipped = pack_files().get(self.name)
        return self.name if shipped is not None and self.path.resolve() == shipped.resolve() else str(self.path)

    def preset_seeds(self, preset: str) -> tuple[int, ...]:
        self._check(preset=preset)
        return tuple(self.presets[preset].get("seeds", self.seeds))

    def values(self, cohort: str, seed: int, preset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The nested settings of one (cohort, seed) under a preset: preset, then cohort, then
        `overrides` (e.g. `--set`), the seed last."""
        self._check(cohort=cohort, preset=preset)
        budget = {k: v for k, v in self.presets[preset].items() if k != "seeds"}
        return merge(budget, self.cohorts[cohort], overrides or {}, {"seed": seed})

    def settings(self, cohort: str, seed: int, preset: str, overrides: dict[str, Any] | None = None) -> Settings:
        return Settings.build(self.values(cohort, seed, preset, overrides))

    def run_config(self, cohort: str, seed: int, preset: str) -> RunConfig:
        """The validated run config of one (cohort, seed) under a preset."""
        return self.settings(cohort, seed, preset).run

    def _check(self, cohort: str | None = None, preset: str | None = None) -> None:
        if cohort is not None and cohort not in self.cohorts:
            raise checks.ConfigError(f"cohort={cohort!r} is not in pack {self.name!r} (cohorts: {', '.join(self.cohorts)})")
        if preset is not None and preset not in self.presets:
            raise checks.ConfigError(f"preset={preset!r} is not in pack {self.name!r} (presets: {', '.join(self.presets)})")


def _seeds(key: str, value: Any) -> list[int]:
    """A non-empty list of run seeds (integers >= 0)."""
    if not checks.items(key, value):
        raise checks.ConfigError(f"{key}=[] must list at least one seed")
    return [checks.integer(f"{key}[{i}]", seed, low=0) for i, seed in enumerate(value)]


def pack_names() -> list[str]:
    return sorted(pack_files())


def load_pack(name_or_path: str | Path) -> Pack:
    """Load and validate a pack by name (`pack0`) or by path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = pack_files().get(str(name_or_path))
        if path is None:
            raise checks.ConfigError(f"pack {name_or_path!r} not found (packs: {', '.join(pack_names())})")
    elif not path.is_file():
        raise checks.ConfigError(f"pack file {path} does not exist")
    where = f"pack file {path}"
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise checks.ConfigError(f"{where}: not valid TOML: {error}") from None
    try:
        for key in REQUIRED_KEYS:
            if key not in data:
                raise checks.ConfigError(f"missing key {key!r}")
        unknown = set(data) - {*REQUIRED_KEYS, *OPTIONAL_KEYS}
        if unknown:
            raise checks.ConfigError(f"unknown key {sorted(unknown)[0]!r} (a pack file has: {', '.join((*REQUIRED_KEYS, *OPTIONAL_KEYS))})")
        for key in ("title", "notebook", "description"):
            if not isinstance(data.get(key, ""), str):
                raise checks.ConfigError(f"{key}={data[key]!r} must be a string")
        cohorts = checks.table("cohorts", data["cohorts"])
        presets = checks.table("presets", data["presets"])
        for cohort, values in cohorts.items():
            checks.table(f"cohorts.{checks.name('cohort', cohort)}", values)
        for preset, values in presets.items():
            checks.table(f"presets.{checks.name('preset', preset)}", values)
        if not isinstance(data["control"], str) or data["control"] not in cohorts:
            raise checks.ConfigError(f"control={data['control']!r} is not a cohort (cohorts: {', '.join(cohorts)})")
        study = study_of(path) or checks.choice("study", data.get("study", "seed002"), study_names())  # a shipped pack's: its folder
        pack = Pack(
            name=checks.name("name", data["name"]),
            title=data["title"],
            notebook=data["notebook"],
            seeds=tuple(_seeds("seeds", data["seeds"])),
            control=data["control"],
            presets=dict(presets),
            cohorts=dict(cohorts),
            path=path.resolve(),
            study=study,
            description=data.get("description", ""),
        )
        for preset in pack.presets:
            seeds = _seeds(f"presets.{preset}.seeds", pack.preset_seeds(preset))
            if preset == "full" and len(seeds) < MIN_SEEDS:
                raise checks.ConfigError(f"preset 'full' has {len(seeds)} seeds; a verdict needs at least {MIN_SEEDS}")
            for cohort in pack.cohorts:  # every (cohort, seed, preset) must be a valid run before anything runs
                for seed in seeds:
                    try:
                        pack.settings(cohort, seed, preset)
                    except ValueError as error:
                        raise checks.ConfigError(f"cohort {cohort!r}, preset {preset!r}: {error}") from None
    except checks.ConfigError as error:
        raise checks.ConfigError(f"{where}: {error}") from None
    return pack
