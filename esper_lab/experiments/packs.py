"""Experiment packs as data: cohorts x seeds under one shared preset (seed 000 "experiment pack").

A pack file (TOML, in `packs/`) names its notebook, its seeds, its control cohort, one preset
per size ("smoke", "full": the environment-step budget and PPO settings every cohort shares) and
its cohorts (task, surface density, allowed blueprints). Everything is validated on load, before
any kernel starts, by building the `RunConfig` of every (cohort, seed).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from esper_lab.config import RunConfig

PACKS_DIR = Path(__file__).parent / "packs"
PRESET_KEYS = ("rounds", "envs", "episode_length", "batches_per_step", "data_fraction")
COHORT_KEYS = ("task", "density", "blueprints", "host", "param_budget", "max_seeds")


@dataclass(frozen=True)
class Preset:
    rounds: int  # PPO rounds: each plays one episode in every environment, then updates
    envs: int
    episode_length: int
    batches_per_step: int
    data_fraction: float

    @property
    def env_steps(self) -> int:
        """The environment-step budget every cohort of the pack gets."""
        return self.rounds * self.envs * self.episode_length


@dataclass(frozen=True)
class Pack:
    name: str
    path: Path  # the TOML it was loaded from: members load this file, not a shipped pack of the same name
    title: str
    notebook: str
    seeds: tuple[int, ...]
    control: str
    presets: dict[str, Preset]
    cohorts: dict[str, dict]

    def run_config(self, cohort: str, seed: int, preset: str) -> RunConfig:
        """The validated config of one (cohort, seed) under a preset."""
        if cohort not in self.cohorts:
            raise ValueError(f"cohort={cohort!r} is not in pack {self.name!r} (cohorts: {', '.join(self.cohorts)})")
        if preset not in self.presets:
            raise ValueError(f"preset={preset!r} is not in pack {self.name!r} (presets: {', '.join(self.presets)})")
        p = self.presets[preset]
        return RunConfig(
            seed=seed,
            episode_length=p.episode_length,
            batches_per_step=p.batches_per_step,
            data_fraction=p.data_fraction,
            **self.cohorts[cohort],
        )


def pack_names() -> list[str]:
    return sorted(path.stem for path in PACKS_DIR.glob("*.toml"))


def load_pack(name_or_path: str | Path) -> Pack:
    """Load and validate a pack by name (`pack0`) or by path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PACKS_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ValueError(f"pack {name_or_path!r} not found (packs: {', '.join(pack_names())})")
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    where = f"pack file {path}"
    for key in ("name", "title", "notebook", "seeds", "control", "presets", "cohorts"):
        if key not in data:
            raise ValueError(f"{where}: missing key {key!r}")
    presets = {}
    for name, values in data["presets"].items():
        unknown = set(values) - set(PRESET_KEYS)
        missing = set(PRESET_KEYS) - set(values)
        if unknown or missing:
            raise ValueError(f"{where}: preset {name!r} has unknown keys {sorted(unknown)} / lacks {sorted(missing)}")
        presets[name] = Preset(**values)
    for name, values in data["cohorts"].items():
        unknown = set(values) - set(COHORT_KEYS)
        if unknown:
            raise ValueError(f"{where}: cohort {name!r} has unknown keys {sorted(unknown)} (allowed: {', '.join(COHORT_KEYS)})")
    if data["control"] not in data["cohorts"]:
        raise ValueError(f"{where}: control {data['control']!r} is not a cohort")
    if not (isinstance(data["seeds"], list) and data["seeds"] and all(isinstance(s, int) for s in data["seeds"])):
        raise ValueError(f"{where}: seeds must be a non-empty list of integers")
    pack = Pack(
        name=data["name"],
        path=path.resolve(),
        title=data["title"],
        notebook=data["notebook"],
        seeds=tuple(data["seeds"]),
        control=data["control"],
        presets=presets,
        cohorts=dict(data["cohorts"]),
    )
    for preset in presets:  # every (cohort, seed, preset) must be a valid run before anything runs
        for cohort in pack.cohorts:
            for seed in pack.seeds:
                try:
                    pack.run_config(cohort, seed, preset)
                except ValueError as error:
                    raise ValueError(f"{where}: cohort {cohort!r}, preset {preset!r}: {error}") from None
    return pack
