"""Fixed growth schedules: a plan of germinations played blind, the non-RL control for a learned
growth policy (issue 25: random search over fixed schedules has matched learned architecture
controllers, Li & Talwalkar 2019, Sciuto et al. 2019).

A `Schedule` lists planned germinations (decision step, slot, blueprint and blending style, and
for a ladder the level to grow to). `SchedulePolicy` plays it like `OraclePolicy` plays its one
seed: germinate at the planned step, then advance as fast as the lifecycle allows and turn the
ladder dial up to its planned level; it never prunes or fossilises and never reads the metric.
`random_schedule` draws one from the space a run config allows (`experiments.search` searches it).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from esper_lab.config import RunConfig
from esper_lab.contracts import (
    INCUBATING_STAGES,
    LIVE_STAGES,
    Action,
    AlphaCurve,
    AlphaTarget,
    BlendAlgorithm,
    Blueprint,
    Op,
    Stage,
    StepResult,
    Tempo,
)
from esper_lab.env import build_host
from esper_lab.seeds import BLUEPRINTS, MAX_INTERNAL_LEVEL, fits
from esper_lab.seeds.ladders import START_LEVEL

_ENUMS = {"blueprint": Blueprint, "blend": BlendAlgorithm, "curve": AlphaCurve, "tempo": Tempo, "target": AlphaTarget}


def _member(cls: type[enum.IntEnum], value, name: str) -> enum.IntEnum:
    """An enum member from a member, its value or its name in any case (as JSON stores it)."""
    try:
        return cls[value.upper()] if isinstance(value, str) else cls(value)
    except (KeyError, ValueError):
        allowed = ", ".join(m.name.lower() for m in cls)
        raise ValueError(f"Germination.{name}={value!r} is not one of: {allowed}") from None


@dataclass(frozen=True)
class Germination:
    """One planned germination. `step` is the decision it is due at (0: the first, right after
    reset; OraclePolicy's "step 1"); `level` is the internal level a ladder grows its focused
    subtarget to (START_LEVEL: left as germinated), None for a module seed."""

    step: int
    slot: int
    blueprint: Blueprint
    blend: BlendAlgorithm = BlendAlgorithm.ADD
    curve: AlphaCurve = AlphaCurve.LINEAR
    tempo: Tempo = Tempo.FAST
    target: AlphaTarget = AlphaTarget.FULL
    level: int | None = None

    def __post_init__(self):
        for name, cls in _ENUMS.items():
            object.__setattr__(self, name, _member(cls, getattr(self, name), name))
        for name in ("step", "slot"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Germination.{name}={value!r} must be an integer >= 0")
        ladder = BLUEPRINTS[self.blueprint].is_ladder
        if not ladder and self.level is not None:
            raise ValueError(f"Germination.level={self.level!r}: {self.blueprint.name} is not a ladder (level None)")
        if ladder and not (isinstance(self.level, int) and START_LEVEL <= self.level <= MAX_INTERNAL_LEVEL):
            raise ValueError(f"Germination.level={self.level!r}: a ladder grows to a level in {START_LEVEL}..{MAX_INTERNAL_LEVEL}")

    def action(self) -> Action:
        return Action(Op.GERMINATE, self.slot, self.blueprint, self.blend, self.curve, self.tempo, self.target)


@dataclass(frozen=True)
class Schedule:
    """Planned germinations, kept in (step, slot) order so equal plans compare equal. A slot is
    planted at most once: nothing is ever pruned, so a second seed there could never germinate."""

    germinations: tuple[Germination, ...] = ()

    def __post_init__(self):
        germinations = tuple(sorted(self.germinations, key=lambda g: (g.step, g.slot)))
        slots = [g.slot for g in germinations]
        if len(set(slots)) != len(slots):
            raise ValueError(f"Schedule plants slots {slots}: each slot at most once")
        object.__setattr__(self, "germinations", germinations)

    def to_dict(self) -> dict:
        """JSON-able, enums by lower-case name (what a run manifest stores)."""
        rows = [{"step": g.step, "slot": g.slot, **{k: getattr(g, k).name.lower() for k in _ENUMS}, "level": g.level} for g in self.germinations]
        return {"germinations": rows}

    @classmethod
    def from_dict(cls, values: dict) -> Schedule:
        return cls(tuple(Germination(**row) for row in values["germinations"]))


@dataclass
class _Play:
    """How far one env has got through its schedule this episode."""

    tried: set[int] = field(default_factory=set)  # germinations played (or dropped by a veto)
    planted: set[int] = field(default_factory=set)  # ... whose germination the governor let through
    capped: set[int] = field(default_factory=set)  # ladders whose growth a veto stopped
    last: tuple[int, Op] | None = None  # the germination the last action served, and its op


class SchedulePolicy:
    """Plays a schedule in every env, or one schedule per env (a search plays a different
    candidate in each). Only legal actions, one a step, in this order:

    1. a due germination (its step reached, not yet played) whose slot and blueprint the masks
       allow now; one the masks refuse waits, and plays at the first later step they allow it (a
       slot still resetting after a rollback, say; never, when `max_seeds` stay occupied);
    2. ADVANCE a planted seed that can advance (GERMINATED, TRAINING, BLENDING at its target);
    3. GROW_INTERNAL a planted ladder below its planned level;
    4. WAIT.

    An op the governor vetoes (the parameter budget) is not retried: the germination is dropped,
    the ladder stays at the level it reached. The budget does not free itself without pruning, so
    a retry would be vetoed again, every step, ahead of the advances the rest of the plan needs.
    A seed a rollback removes is not regrown.
    """

    def __init__(self, schedule: Schedule | Sequence[Schedule]):
        self.schedules = [schedule] if isinstance(schedule, Schedule) else list(schedule)
        self.plays: list[_Play] = []

    def act(self, results: list[StepResult]) -> list[Action]:
        if len(self.schedules) not in (1, len(results)):
            raise ValueError(f"{len(self.schedules)} schedules for {len(results)} environments")
        if any(r.step == 0 for r in results) or len(self.plays) != len(results):
            self.plays = [_Play() for _ in results]
        schedules = self.schedules * len(results) if len(self.schedules) == 1 else self.schedules
        return [self._one(r, s, p) for r, s, p in zip(results, schedules, self.plays)]

    @staticmethod
    def _one(result: StepResult, schedule: Schedule, play: _Play) -> Action:
        masks, report, plan = result.masks, result.report, schedule.germinations
        if play.last is not None and result.metrics["veto"]:
            index, op = play.last
            if op is Op.GERMINATE:
                play.planted.discard(index)
            else:
                play.capped.add(index)
        play.last = None
        stages = report.column("stage").long().tolist()
        for i, g in enumerate(plan):
            if g.slot >= len(stages):
                raise ValueError(f"the schedule plants slot {g.slot}; this host has slots 0..{len(stages) - 1}")
            if i not in play.tried and g.step <= result.step and masks.op[g.slot, Op.GERMINATE] and masks.blueprint[g.slot, g.blueprint]:
                play.tried.add(i)
                play.planted.add(i)
                play.last = (i, Op.GERMINATE)
                return g.action()
        for i in sorted(play.planted):
            slot = plan[i].slot
            if Stage(stages[slot]) in (*INCUBATING_STAGES, Stage.BLENDING) and masks.op[slot, Op.ADVANCE]:
                return Action(Op.ADVANCE, slot)
        levels = report.column("internal_level").long().tolist()
        for i in sorted(play.planted - play.capped):
            g = plan[i]
            if g.level is not None and Stage(stages[g.slot]) in LIVE_STAGES and levels[g.slot] < g.level and masks.op[g.slot, Op.GROW_INTERNAL]:
                play.last = (i, Op.GROW_INTERNAL)
                return Action(Op.GROW_INTERNAL, g.slot)
        return Action(Op.WAIT)


def germinable(config: RunConfig) -> list[tuple[Blueprint, ...]]:
    """Per slot, the blueprints a schedule may plant there: the config's, less NOOP (a seed that
    does nothing but pay rent), that fit the surface; from a host built on the meta device."""
    with torch.device("meta"):
        specs = build_host(config, vocab_size=1).injection_specs()
    return [tuple(b for b in Blueprint if b in config.blueprints and b is not Blueprint.NOOP and fits(b, spec)) for spec in specs]


def _pick(options: Sequence, generator: torch.Generator):
    return options[int(torch.randint(len(options), (), generator=generator))]


def random_schedule(generator: torch.Generator, config: RunConfig, max_germinations: int, grow: bool = True) -> Schedule:
    """A schedule drawn from the space `config` allows, each factor uniform: 1..k germinations
    (k: `max_germinations`, `config.max_seeds` and the slots any blueprint fits, whichever is
    least), at distinct slots; each with a blueprint that fits its slot, a decision step in
    0..episode_length-1, and blend, curve, tempo and alpha target from their enums; a ladder's
    level in START_LEVEL..MAX_INTERNAL_LEVEL, or START_LEVEL without `grow` (where the policy it
    is compared with may not turn the dial)."""
    fitting = germinable(config)
    slots = [i for i, options in enumerate(fitting) if options]
    most = min(max_germinations, config.max_seeds, len(slots))
    if most < 1:
        raise ValueError(f"no schedule to draw: max_germinations={max_germinations}, max_seeds={config.max_seeds}, plantable slots {slots}")
    count = 1 + int(torch.randint(most, (), generator=generator))
    order = torch.randperm(len(slots), generator=generator)[:count].tolist()
    germinations = []
    for slot in (slots[i] for i in order):
        blueprint = _pick(fitting[slot], generator)
        step = int(torch.randint(config.episode_length, (), generator=generator))
        style = {name: _pick(list(cls), generator) for name, cls in _ENUMS.items() if name != "blueprint"}
        level = None
        if BLUEPRINTS[blueprint].is_ladder:
            level = START_LEVEL + int(torch.randint(MAX_INTERNAL_LEVEL - START_LEVEL + 1, (), generator=generator)) if grow else START_LEVEL
        germinations.append(Germination(step, slot, blueprint, level=level, **style))
    return Schedule(tuple(germinations))
