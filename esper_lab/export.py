"""Export-time compaction (seed 003 "Compacted", seed 000 Phase 4's merge plan): turn an organism,
a host and its `SeedPlane`, into a plain module that computes the same forward with no plane.

`compact` rules, slot by slot, from what the slot does to the forward:

- nothing (dormant, germinated, pruned, embargoed, resetting, a scar, a TRAINING seed whose
  straight-through output is exactly the host's, a seed at alpha 0, a phage gated to sedation 0,
  a noop seed, whose output is 0): the slot is gone;
- a seed whose contribution is a linear map of a projection's input (it has `weight_delta`: the
  LoRA ladder on an a2 projection) blended by ADD: merged into the projection's weight,
  `W + alpha * sedation * delta`; the projection is a plain linear layer again. MULTIPLY and GATE
  are not linear in the seed's output, so such a seed is inlined;
- anything else: inlined as a `FixedBlend` (the seed, its blend and its alpha times sedation, as
  numbers) called by the host at the same surface. A linear seed on the residual stream is inlined
  too: `I + alpha * delta` is no base weight of the host. An inlined ladder keeps its allocated
  capacity, masked as it was (trimming it to its active units is not done here).

A seed that is not fossilised is exported as it computes now: BLENDING and HOLDING at their
current alpha (what the organism at that step is), GERMINATED and TRAINING dropped (their output
does not reach the forward). `fossils_only=True` refuses any seed not fossilised, naming its
slot: for a final artifact, where a half-blended seed is a decision nobody took.

`export_run` rebuilds a recorded episode's organism at step N (the run's config and episode
seed, then the recorded actions, as `experiments.replay` does), compacts it, checks it against
the live organism on the whole validation split and writes it with `torch.save`: the whole
module, since its structure depends on which seeds were kept (a state_dict would need that recipe
beside it, and tracing would bake in one input shape). Classes are pickled by reference, so load it
with `torch.load(path, weights_only=False)` where `esper_lab` imports; its forward is `module(x)`.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from torch import nn

from esper_lab.contracts import SEED_STAGES, BlendAlgorithm, Blueprint, Stage
from esper_lab.env import MorphEnv
from esper_lab.experiments.replay import action_from_row, recorded_episode, recorded_threads
from esper_lab.hosts import ProjectionSurface
from esper_lab.plane import SeedPlane
from esper_lab.slot import blend
from esper_lab.telemetry import Store
from esper_lab.training import EVAL_BATCH

TOLERANCE = 1e-5  # max abs output difference an export may have from the live organism
LATENCY_REPEATS = 20  # timed forward pairs per model; the median resists a busy machine's spikes
WARMUP_CALLS = 2  # untimed forwards first (allocator, lazy init)


class FixedBlend(nn.Module):
    """A seed inlined at its surface: `blend(h, seed(x or h))` at a fixed alpha, as the slot did."""

    def __init__(self, seed: nn.Module, algorithm: BlendAlgorithm, alpha: float):
        super().__init__()
        self.seed, self.algorithm, self.alpha = seed, algorithm, alpha

    def forward(self, h: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return blend(self.algorithm, h, self.seed(h if x is None else x), self.alpha)


class Compacted(nn.Module):
    """The exported organism: the host with merged weights and its inlined seeds by surface."""

    def __init__(self, host: nn.Module, inlined: dict[int, FixedBlend]):
        super().__init__()
        self.host = host
        self.inlined = nn.ModuleDict({str(i): module for i, module in inlined.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.host(x, self._surface if len(self.inlined) else None)  # nothing inlined: the bare host

    def _surface(self, i: int, h: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """What the host calls at surface i, as it would call a plane."""
        key = str(i)
        return self.inlined[key](h, x) if key in self.inlined else h


@dataclass(frozen=True)
class SlotExport:
    """What became of one seed: `merged`, `inlined` or `dropped`, at which alpha times sedation."""

    slot: int
    stage: Stage
    blueprint: Blueprint
    fate: str
    alpha: float


@dataclass(frozen=True)
class Compaction:
    module: Compacted
    seeds: tuple[SlotExport, ...]  # every slot that held a seed, in slot order


def compact(host: nn.Module, plane: SeedPlane, fossils_only: bool = False) -> Compaction:
    """The organism (`host`, `plane`) as one plain module with the same forward (rules above).
    The live organism is left as it was."""
    if fossils_only:
        live = [
            f"slot {s.index} ({s.stage.name}, {s.blueprint.name})" for s in plane.slots if s.stage in SEED_STAGES and s.stage is not Stage.FOSSILIZED
        ]
        if live:
            raise ValueError(f"fossils_only: not fossilised: {', '.join(live)}")
    exported = copy.deepcopy(host)
    projections = {m.surface: m for m in exported.modules() if isinstance(m, ProjectionSurface) and m.surface is not None}
    inlined, seeds = {}, []
    for slot in plane.slots:
        if slot.stage not in SEED_STAGES:
            continue
        alpha = slot.alpha * slot.sedation  # the amplitude the slot blends with
        projection = projections.get(slot.index)
        if not slot.in_forward or slot.blueprint is Blueprint.NOOP:  # out of the forward, or a zero output (every blend of 0 is h)
            fate, alpha = "dropped", 0.0
        elif projection is not None and slot.blend_algorithm is BlendAlgorithm.ADD and hasattr(slot.seed, "weight_delta"):
            with torch.no_grad():
                weight = projection.linear.weight
                weight.copy_(weight.double() + alpha * slot.seed.weight_delta().double())
            fate = "merged"
        else:
            inlined[slot.index] = FixedBlend(copy.deepcopy(slot.seed), slot.blend_algorithm, alpha)
            fate = "inlined"
        seeds.append(SlotExport(slot.index, slot.stage, slot.blueprint, fate, alpha))
    for i, projection in projections.items():
        if i not in inlined:
            projection.surface = None  # a plain linear layer now
    module = Compacted(exported, inlined).eval()
    module.zero_grad(set_to_none=True)  # the live organism's last gradients are no part of an export
    return Compaction(module, tuple(seeds))


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class Check:
    """The export beside the live organism on the same inputs."""

    params_live: int  # host and every seed the plane holds (all allocated capacity)
    params_exported: int
    max_abs_diff: float
    rows: int  # inputs compared
    latency_live: float  # median seconds per forward of one batch
    latency_exported: float

    @property
    def latency_ratio(self) -> float:
        return self.latency_exported / self.latency_live

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= TOLERANCE


@torch.inference_mode()
def check(
    host: nn.Module,
    plane: SeedPlane,
    module: nn.Module,
    inputs: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    repeats: int = LATENCY_REPEATS,
) -> Check:
    """Compare `module` with the live organism over `inputs` (chunks of `EVAL_BATCH`, each through
    `prepare` when given, as `training.evaluate` reads a split) and time both on the first chunk,
    alternating which runs first so that neither gets a warmer cache."""
    host.eval()
    module.eval()
    live = lambda x: host(x, plane)
    diff = 0.0
    for start in range(0, len(inputs), EVAL_BATCH):
        chunk = inputs[start : start + EVAL_BATCH]
        chunk = chunk if prepare is None else prepare(chunk)
        diff = max(diff, float((live(chunk) - module(chunk)).abs().max()))
    batch = inputs[:EVAL_BATCH] if prepare is None else prepare(inputs[:EVAL_BATCH])
    for _ in range(WARMUP_CALLS):
        live(batch), module(batch)
    times = ([], [])  # live, exported
    for r in range(repeats):
        for k in (0, 1) if r % 2 == 0 else (1, 0):
            times[k].append(_seconds((live, module)[k], batch))
    return Check(
        param_count(host) + param_count(plane), param_count(module), diff, len(inputs), statistics.median(times[0]), statistics.median(times[1])
    )


def _seconds(model: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> float:
    cuda = batch.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(batch.device)
    start = time.perf_counter()
    model(batch)
    if cuda:
        torch.cuda.synchronize(batch.device)
    return time.perf_counter() - start


# --- a recorded run's organism ---------------------------------------------------------------------
@dataclass(frozen=True)
class Rebuilt:
    env: MorphEnv  # its host and plane are the organism after `step` steps
    run_id: str
    env_index: int
    episode: int
    step: int
    recorded_metric: float  # the task metric the run recorded at `step`
    metric: float  # what the rebuilt organism reads there: equal when the replay is exact


def rebuild(root: str | Path, run_id: str, step: int | None = None, env: int = 0, episode: int = 0) -> Rebuilt:
    """The organism of `run_id`'s env `env`, episode `episode` after `step` steps (default: its
    last): reset to the recorded episode seed, then the recorded actions, with the recorded torch
    thread count (it changes float reductions)."""
    store = Store(root)
    try:
        recorded = recorded_episode(store, run_id, env, episode, step)
        steps = store.rows("steps", run=run_id).filter((pl.col("env") == env) & (pl.col("episode") == episode))
    finally:
        store.close()
    step = recorded.step
    with recorded_threads(recorded.manifest["torch_threads"]):
        morph = MorphEnv(recorded.config, env)
        morph.reset(recorded.seed)
        for row in recorded.decisions.head(step).iter_rows(named=True):
            result = morph.step(action_from_row(row))
    recorded_metric = steps.filter(pl.col("step") == step)["metric"][0]
    return Rebuilt(morph, run_id, env, episode, step, recorded_metric, result.metrics["metric"])


@dataclass(frozen=True)
class RunExport:
    rebuilt: Rebuilt
    compaction: Compaction
    check: Check
    path: Path | None  # where the module was written; None when the check failed


def export_run(
    root: str | Path,
    run_id: str,
    path: str | Path,
    step: int | None = None,
    env: int = 0,
    episode: int = 0,
    fossils_only: bool = False,
    repeats: int = LATENCY_REPEATS,
) -> RunExport:
    """Rebuild the organism at `step`, compact it, check it on the whole validation split and,
    when it is within `TOLERANCE`, write it with `torch.save` to `path`: a .pt file, or a folder
    to write `<run>-env<E>-ep<K>-step<N>.pt` in."""
    rebuilt = rebuild(root, run_id, step, env, episode)
    path = Path(path)
    if path.suffix != ".pt":
        path = path / f"{run_id}-env{env}-ep{episode}-step{rebuilt.step}.pt"
    morph = rebuilt.env
    compaction = compact(morph.host, morph.plane, fossils_only)
    result = check(morph.host, morph.plane, compaction.module, morph.val_x, morph.prepare, repeats)
    if not result.ok:
        return RunExport(rebuilt, compaction, result, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(compaction.module, path)
    return RunExport(rebuilt, compaction, result, path)


def summary(export: RunExport) -> str:
    """The export as text: what became of each seed, then params, max abs diff and latency."""
    r, c = export.rebuilt, export.check
    lines = [
        f"export of run {r.run_id} (env {r.env_index}, episode {r.episode}) at step {r.step}: "
        f"rebuilt metric {r.metric:.6g}, recorded {r.recorded_metric:.6g}"
        + ("" if r.metric == r.recorded_metric else " (the replay differs from the recording)")
    ]
    lines.append(f"{'slot':>4}  {'stage':<10}  {'blueprint':<20}  {'export':<7}  alpha")
    lines += [f"{s.slot:>4}  {s.stage.name:<10}  {s.blueprint.name.lower():<20}  {s.fate:<7}  {s.alpha:.4g}" for s in export.compaction.seeds] or [
        "   -  no seeds: the export is the bare host"
    ]
    lines.append(f"\n{'params live':>12}  {'params exported':>15}  {'max abs diff (validation)':>25}  {'latency exported/live':>21}")
    lines.append(f"{c.params_live:>12}  {c.params_exported:>15}  {c.max_abs_diff:>17.3g} ({c.rows} rows)  {c.latency_ratio:>21.3f}")
    lines.append(f"written: {export.path}" if export.path is not None else f"not written: max abs diff {c.max_abs_diff:.3g} exceeds {TOLERANCE:g}")
    return "\n".join(lines)
