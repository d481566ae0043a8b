"""Baseline policies every cohort is compared with: the static host (always WAIT), masked uniform
random and a rule-based one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from esper_lab.contracts import (
    BLENDED_STAGES,
    INCUBATING_STAGES,
    LIVE_STAGES,
    SEED_STAGES,
    Action,
    AlphaCurve,
    AlphaTarget,
    BlendAlgorithm,
    Blueprint,
    Decay,
    Op,
    SlotKind,
    Stage,
    StepResult,
    Stream,
    Tempo,
    stream_seed,
)


class StaticPolicy:
    """Always WAIT: the static host, the control every learned policy is compared with."""

    def act(self, results: list[StepResult]) -> list[Action]:
        return [Action(Op.WAIT) for _ in results]


class OraclePolicy:
    """A scripted schedule: germinate `blueprint` at `slot` (default the deepest surface) on the
    first step, advance it as fast as the lifecycle allows (fast tempo, full alpha) into HOLDING,
    where it keeps learning, and grow a ladder to its top level; then WAIT. It never fossilises
    (that freezes a seed barely trained) and knows nothing of the metric: it shows what growth can
    buy in a setup, so a learned policy has a target."""

    def __init__(self, blueprint: Blueprint = Blueprint.CONV_HEAVY, slot: int | None = None):
        self.blueprint, self.slot = Blueprint(blueprint), slot

    def act(self, results: list[StepResult]) -> list[Action]:
        return [self._one(r) for r in results]

    def _one(self, result: StepResult) -> Action:
        slot = len(result.report.values) - 1 if self.slot is None else self.slot
        legal = lambda op: bool(result.masks.op[slot, op])
        stage = Stage(int(result.report.column("stage")[slot]))
        if stage is Stage.DORMANT and legal(Op.GERMINATE) and result.masks.blueprint[slot, self.blueprint]:
            return Action(Op.GERMINATE, slot, self.blueprint, tempo=Tempo.FAST, target=AlphaTarget.FULL)
        if stage in INCUBATING_STAGES or (stage is Stage.BLENDING and legal(Op.ADVANCE)):
            return Action(Op.ADVANCE, slot)
        if stage in BLENDED_STAGES and legal(Op.GROW_INTERNAL):
            return Action(Op.GROW_INTERNAL, slot)
        return Action(Op.WAIT)


class PlanterPolicy:
    """Plants redundancy for the decay studies (seed 004 Stages 2 and 3): germinate `blueprint`
    at each of `slots` (default: every surface it fits), one a step, advance each as fast as the
    lifecycle allows and fossilise it once it holds, so every seed ends in Emrakul's custody;
    then WAIT. With `regrow`, germinate the blueprint again in each scar its quarantine releases
    (Tamiyo heals what Emrakul cut); without, scars stay dormant (is the identity enough?)."""

    def __init__(self, blueprint: Blueprint = Blueprint.CONV_HEAVY, slots: tuple[int, ...] | None = None, regrow: bool = False):
        self.blueprint, self.slots, self.regrow = Blueprint(blueprint), slots, regrow

    def act(self, results: list[StepResult]) -> list[Action]:
        return [self._one(r) for r in results]

    def _one(self, result: StepResult) -> Action:
        report, masks = result.report, result.masks
        slots = range(len(report.values)) if self.slots is None else self.slots
        stages = [Stage(int(s)) for s in report.column("stage").tolist()]
        kinds, germinations = report.column("slot_kind").tolist(), report.column("germinations").tolist()
        for slot in slots:  # bring planted seeds home first: advance, then fossilise
            if stages[slot] in INCUBATING_STAGES or (stages[slot] is Stage.BLENDING and masks.op[slot, Op.ADVANCE]):
                return Action(Op.ADVANCE, slot)
            if stages[slot] is Stage.HOLDING:
                return Action(Op.FOSSILIZE, slot)
        for slot in slots:
            fresh = germinations[slot] == 0 or (self.regrow and kinds[slot] == SlotKind.SCAR)
            if fresh and masks.op[slot, Op.GERMINATE] and masks.blueprint[slot, self.blueprint]:
                return Action(Op.GERMINATE, slot, self.blueprint, tempo=Tempo.FAST, target=AlphaTarget.FULL)
        return Action(Op.WAIT)


class RandomPolicy:
    """Uniform over legal choices: op among legal ops, then slot, blueprint and style; and, when
    a learned Emrakul's mask offers phages, HOLD or SEDATE, then the phage (no draw otherwise, so
    without a learned Emrakul its draws are the Tamiyo-only ones)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.generators: list[torch.Generator] = []

    def act(self, results: list[StepResult]) -> list[Action]:
        while len(self.generators) < len(results):
            self.generators.append(torch.Generator().manual_seed(stream_seed(self.seed, len(self.generators), Stream.RANDOM_POLICY)))
        return [self._one(r, g) for r, g in zip(results, self.generators)]

    @staticmethod
    def _pick(mask: torch.Tensor, generator: torch.Generator) -> int:
        legal = mask.nonzero().flatten()
        return int(legal[torch.randint(len(legal), (), generator=generator)])

    def _one(self, result: StepResult, generator: torch.Generator) -> Action:
        tamiyo = self._tamiyo(result, generator)
        phages = result.masks.phage
        if not phages.any() or not torch.randint(len(Decay), (), generator=generator):
            return tamiyo
        return dataclasses.replace(tamiyo, decay=Decay.SEDATE, phage=self._pick(phages, generator))

    def _tamiyo(self, result: StepResult, generator: torch.Generator) -> Action:
        op_mask = result.masks.op
        op = Op(self._pick(op_mask.any(0), generator))
        if op is Op.WAIT:
            return Action(Op.WAIT)
        slot = self._pick(op_mask[:, op], generator)
        return Action(
            op,
            slot,
            Blueprint(self._pick(result.masks.blueprint[slot], generator)),
            BlendAlgorithm(int(torch.randint(len(BlendAlgorithm), (), generator=generator))),
            AlphaCurve(int(torch.randint(len(AlphaCurve), (), generator=generator))),
            Tempo(int(torch.randint(len(Tempo), (), generator=generator))),
            AlphaTarget(int(torch.randint(len(AlphaTarget), (), generator=generator))),
        )


# Rule thresholds. Metric gains are in the task metric's own units, signed so up is good.
PLATEAU_GAIN = 0.01  # a step that gains less than this is a plateau: time for another seed
TRAINING_STEPS = 1  # incubate a seed one step: in short episodes, blending early is what pays
HOLDING_STEPS = 2  # watch a blended seed this long before fossilising or pruning it
HARM_TOLERANCE = 0.02  # prune a seed whose blending lost more metric than this since germination
# Preference when germinating: cheap dials first, then the heavy module seeds.
PREFERENCE = (
    Blueprint.CONV_CHANNEL_LADDER,
    Blueprint.LORA_PROJ_LADDER,
    Blueprint.LORA_RANK_LADDER,
    Blueprint.CONV_MULTI_LADDER,
    Blueprint.LORA_MULTI_LADDER,
    Blueprint.CONV_HEAVY,
    Blueprint.MLP,
    Blueprint.LORA_LARGE,
    Blueprint.CONV_LIGHT,
    Blueprint.LORA,
    Blueprint.ATTENTION,
)


@dataclass
class _Memory:
    """What the heuristic remembers about one environment's slots."""

    entered: dict[int, int] = field(default_factory=dict)  # slot -> step it entered its stage
    stage: dict[int, int] = field(default_factory=dict)
    metric_at_germination: dict[int, float] = field(default_factory=dict)
    last_delta: dict[int, float] = field(default_factory=dict)


class HeuristicPolicy:
    """Keep one seed growing (germinate when nothing is, and again on a plateau), advance when
    healthy, prune when harmful, and turn ladder dials: grow while the seed's delta norm and the
    metric both improve, shrink when they stop."""

    def __init__(self):
        self.memory: list[_Memory] = []

    def act(self, results: list[StepResult]) -> list[Action]:
        if any(r.step == 0 for r in results) or len(self.memory) != len(results):
            self.memory = [_Memory() for _ in results]
        return [self._one(r, m) for r, m in zip(results, self.memory)]

    def _one(self, result: StepResult, memory: _Memory) -> Action:
        report, op_mask, step = result.report, result.masks.op, result.step
        stages = report.column("stage").long().tolist()
        deltas = report.column("delta_l2_norm").tolist()
        metric, gain = result.metrics["metric_since_start"], result.metrics["metric_gain"]
        for slot, stage in enumerate(stages):
            if memory.stage.get(slot) != stage:
                memory.stage[slot], memory.entered[slot] = stage, step
        legal = lambda op, slot: bool(op_mask[slot, op])

        for slot, stage in enumerate(map(Stage, stages)):
            age = step - memory.entered[slot]
            since = metric - memory.metric_at_germination.get(slot, metric)
            if stage in BLENDED_STAGES and since < -HARM_TOLERANCE and legal(Op.PRUNE, slot):
                return Action(Op.PRUNE, slot)
            if stage is Stage.GERMINATED or (stage is Stage.TRAINING and age >= TRAINING_STEPS):
                return Action(Op.ADVANCE, slot)
            if stage is Stage.BLENDING and legal(Op.ADVANCE, slot):
                return Action(Op.ADVANCE, slot)
            if stage is Stage.HOLDING and age >= HOLDING_STEPS:
                return Action(Op.FOSSILIZE if since >= 0 else Op.PRUNE, slot)
            if stage in LIVE_STAGES:
                rising = deltas[slot] > memory.last_delta.get(slot, 0.0)
                memory.last_delta[slot] = deltas[slot]
                if rising and gain > 0 and legal(Op.GROW_INTERNAL, slot):
                    return Action(Op.GROW_INTERNAL, slot)
                if gain <= 0 and not rising and legal(Op.SHRINK_INTERNAL, slot) and report.column("internal_level")[slot] > 1:
                    return Action(Op.SHRINK_INTERNAL, slot)

        nothing_growing = not any(Stage(s) in SEED_STAGES for s in stages)
        if nothing_growing or gain < PLATEAU_GAIN:
            for slot in reversed(range(len(stages))):  # deepest surface first: closest to the task
                if legal(Op.GERMINATE, slot):
                    fitting = result.masks.blueprint[slot]
                    blueprint = next((b for b in PREFERENCE if fitting[b]), None)
                    if blueprint is not None:
                        memory.metric_at_germination[slot] = metric
                        return Action(Op.GERMINATE, slot, blueprint, tempo=Tempo.FAST)
        return Action(Op.WAIT)
