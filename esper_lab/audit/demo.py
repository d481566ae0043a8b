"""A recorded run worth auditing: a scripted policy that grows a few seeds and prunes on the probe.

`ProbePrunePolicy` germinates a planned seed per slot, advances each into BLENDING as fast as
the lifecycle allows, and, once every planned seed is blending, prunes a seed in the forward path
as soon as the online counterfactual probe measures its contribution <= 0. That is a decision rule an audit can judge: did the probe
prune what exact Shapley credit says is worthless? The presets say how big the run and its audit
are: `smoke` (two seeds, two replicates: seconds, for nbval and tests) and `full` (three seeds,
three replicates: the note's audit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from esper_lab.config import RunConfig
from esper_lab.contracts import INCUBATING_STAGES, Action, AlphaTarget, Blueprint, Op, RunKind, Stage, StepResult, Tempo
from esper_lab.episodes import run_episodes
from esper_lab.telemetry import Recorder
from esper_lab.vecenv import VecEnv


class ProbePrunePolicy:
    """Germinate each planned (slot, blueprint) once, in plan order, then advance the seeds to
    BLENDING (fast tempo, full alpha), one action per step; then prune a seed in forward whose
    contribution was measured at <= 0 this step."""

    def __init__(self, plan: tuple[tuple[int, Blueprint], ...]):
        self.plan = tuple((slot, Blueprint(blueprint)) for slot, blueprint in plan)

    def act(self, results: list[StepResult]) -> list[Action]:
        return [self._one(r) for r in results]

    def _one(self, result: StepResult) -> Action:
        report, masks = result.report, result.masks
        stage = [Stage(int(s)) for s in report.column("stage").tolist()]
        legal = lambda op, slot: bool(masks.op[slot, op])
        for slot, blueprint in self.plan:
            if stage[slot] is Stage.DORMANT and report.column("germinations")[slot] == 0 and legal(Op.GERMINATE, slot):
                return Action(Op.GERMINATE, slot, blueprint, tempo=Tempo.FAST, target=AlphaTarget.FULL)
        for slot, _ in self.plan:
            if stage[slot] in INCUBATING_STAGES and legal(Op.ADVANCE, slot):
                return Action(Op.ADVANCE, slot)
        for slot, _ in self.plan:
            probed = report.column("contribution_measured")[slot] > 0 and report.column("in_forward")[slot] > 0
            if probed and report.column("contribution")[slot] <= 0 and legal(Op.PRUNE, slot):
                return Action(Op.PRUNE, slot)
        return Action(Op.WAIT)


@dataclass(frozen=True)
class DemoPreset:
    config: RunConfig
    plan: tuple[tuple[int, Blueprint], ...]
    step: int  # the audited step: the first probe with every planned seed blending (prunes follow it)
    replicates: int


# digits_cnn at density a1 has six surfaces; the plans use the deeper block's three (slots 3-5).
# A probe every 2 steps: the prune rule sees a fresh measurement soon after a seed blends in.
DEMO_PRESETS = {
    "smoke": DemoPreset(
        RunConfig(task="digits_cnn", density="a1", episode_length=8, batches_per_step=4, contribution_every=2),
        ((5, Blueprint.CONV_HEAVY), (3, Blueprint.NOOP)),
        step=6,
        replicates=2,
    ),
    "full": DemoPreset(
        RunConfig(task="digits_cnn", density="a1", episode_length=16, batches_per_step=8, contribution_every=2),
        ((5, Blueprint.CONV_HEAVY), (4, Blueprint.CONV_LIGHT), (3, Blueprint.NOOP)),
        step=10,
        replicates=3,
    ),
}


def demo_preset(name: str) -> DemoPreset:
    if name not in DEMO_PRESETS:
        raise ValueError(f"preset={name!r} is not one of: {', '.join(DEMO_PRESETS)}")
    return DEMO_PRESETS[name]


def record_demo_run(root: str | Path, preset: str = "smoke", seed: int = 0, cohort: str = "audit_demo") -> str:
    """Play one episode of the preset's scripted policy and record it; return the run id."""
    spec = demo_preset(preset)
    config = spec.config.replace(seed=seed)
    with VecEnv(config, 1) as vec, Recorder(root, cohort, config, kind=RunKind.PROBE_PRUNE, preset=preset) as recorder:
        run_episodes(vec, ProbePrunePolicy(spec.plan), recorder=recorder)
    return recorder.run_id
