"""A synthetic environment with the plane's real action space and a known best return.

A real `SeedPlane` over a real small CNN host supplies the real masks, lifecycle and `apply`
(an illegal action raises, as in `MorphEnv`); no host is trained, so an env step costs about a
millisecond (mostly the plane's own mask computation). The reward is potential-based shaping (Ng et al. 1999), r_t = P(s_t) - P(s_t-1),
so an episode's undiscounted return is P of its final state and the best return is max P:

    P = STAGE_CREDIT[stage] + alpha * level_value(level)   for the one paying seed: blueprint
                                                           PAYING_BLUEPRINT on the paying slot
        - WRONG_RENT per other occupied slot
    level_value(level) = 1 - |level - BEST_LEVEL| / BEST_LEVEL   (GROW pays until BEST_LEVEL)

so `OPTIMAL_RETURN` = max STAGE_CREDIT + 1, reached by germinating the paying seed with a full
alpha target, advancing it into BLENDING, growing it to BEST_LEVEL and letting alpha reach 1
(`optimal_actions` spells that out; it fits in `MIN_EPISODE_LENGTH` steps).
"""

from __future__ import annotations

import dataclasses

import torch

from esper_lab.config import DecayConfig
from esper_lab.contracts import SEED_STAGES, Action, AlphaTarget, Blueprint, Decay, Op, RewardParts, Stage, StepResult, SurfaceDensity, Tempo
from esper_lab.decay import Emrakul
from esper_lab.hosts import CNNConfig, CNNHost
from esper_lab.plane import IllegalAction, SeedPlane

PAYING_BLUEPRINT = Blueprint.CONV_CHANNEL_LADDER  # a ladder, so GROW/SHRINK are live choices
BEST_LEVEL = 3  # of the ladder's 4: growing past it costs
STAGE_CREDIT = {Stage.GERMINATED: 0.1, Stage.TRAINING: 0.2, Stage.BLENDING: 0.2, Stage.HOLDING: 0.2, Stage.FOSSILIZED: 0.2}
WRONG_RENT = 0.01  # per other occupied slot: exploring costs a little, and a prune refunds it
OPTIMAL_RETURN = max(STAGE_CREDIT.values()) + 1.0
# germinate, advance, advance (alpha ramps over Tempo.FAST's 3 ticks), grow, grow: alpha is 1 at step 5
MIN_EPISODE_LENGTH = 5
EPISODE_LENGTH = 8  # the optimum plus 3 steps of slack: a near-optimal policy can still reach it
MAX_SEEDS = 3  # room for a couple of exploratory wrong seeds next to the paying one
# Emrakul's task (`ImmuneAnswerEnv`): a host-sized metric drop without the needed phage, 10x as
# costly a step as a phage's rent, so probing it is a mistake and lysing the idle one pays.
NEEDED_SLOT, IDLE_SLOT = 0, 1
NEEDED_DROP = 0.05
METRIC_SCALE = 20.0
PHAGE_RENT = 0.1
IMMUNE_EPISODE_LENGTH = 12


def level_value(level: torch.Tensor) -> torch.Tensor:
    return 1 - (level - BEST_LEVEL).abs() / BEST_LEVEL


class KnownAnswerEnv:
    """N planes stepped in lockstep; `reset`/`step` return `StepResult`s like `VecEnv`. The
    default host is digits_cnn's (widths 8, 16) at density a1: 6 surfaces, 8 fitting blueprints."""

    def __init__(
        self,
        n_envs: int,
        episode_length: int = EPISODE_LENGTH,
        density: SurfaceDensity = SurfaceDensity.A1,
        widths: tuple[int, ...] = (8, 16),
        max_seeds: int = MAX_SEEDS,
    ):
        if episode_length < MIN_EPISODE_LENGTH:
            raise ValueError(f"episode_length={episode_length} < {MIN_EPISODE_LENGTH}: the optimum would not fit")
        with torch.random.fork_rng():  # host weights are never used; keep the global RNG untouched
            torch.manual_seed(0)
            self.host = CNNHost(CNNConfig(widths=widths, density=density))
        self.n_envs, self.episode_length, self.max_seeds = n_envs, episode_length, max_seeds
        self.paying_slot = len(self.host.injection_specs()) - 1  # the deepest surface
        self.host_params, self.host_flops = self.host.param_count(), self.host.flops()

    def __len__(self) -> int:
        return self.n_envs

    def reset(self, episode: int = 0, seeds=None) -> list[StepResult]:
        """Every episode is the same task (nothing random in it): `episode` and `seeds` are
        accepted as `VecEnv.reset` takes them, and ignored."""
        self.planes = [SeedPlane(self.host, run_seed=i, max_seeds=self.max_seeds) for i in range(self.n_envs)]
        self.steps, self.previous = 0, [0.0] * self.n_envs
        return [self._result(i, plane.report(), 0.0, []) for i, plane in enumerate(self.planes)]

    def step(self, actions: list[Action]) -> list[StepResult]:
        if self.steps >= self.episode_length:
            raise RuntimeError(f"episode is over after {self.episode_length} steps; call reset()")
        self.steps += 1
        results = []
        for i, (plane, action) in enumerate(zip(self.planes, actions)):
            events = plane.apply(action) + plane.tick()
            report = plane.report()
            value = self.potential(report)
            results.append(self._result(i, report, value - self.previous[i], events))
            self.previous[i] = value
        return results

    def potential(self, report) -> float:
        stage = [Stage(s) for s in report.column("stage").long().tolist()]
        occupied = sum(s in SEED_STAGES for s in stage)
        k = self.paying_slot
        if int(report.column("blueprint")[k]) != PAYING_BLUEPRINT:
            return -WRONG_RENT * occupied
        blended = float(report.column("alpha")[k] * level_value(report.column("internal_level")[k]))
        return STAGE_CREDIT[stage[k]] + blended - WRONG_RENT * (occupied - 1)

    def optimal_actions(self) -> list[Action]:
        """A best episode's opening moves (then WAIT): it earns `OPTIMAL_RETURN`."""
        slot = self.paying_slot
        germinate = Action(Op.GERMINATE, slot, PAYING_BLUEPRINT, tempo=Tempo.FAST, target=AlphaTarget.FULL)
        return [germinate, Action(Op.ADVANCE, slot), Action(Op.ADVANCE, slot)] + [Action(Op.GROW_INTERNAL, slot)] * (BEST_LEVEL - 1)

    def _result(self, i: int, report, reward: float, events, masks=None) -> StepResult:
        plane = self.planes[i]
        stage = report.column("stage").long().tolist()
        active_params = plane.active_param_count()
        active_flops = float(report.column("seed_flops_active_est").sum())
        value = self.previous[i] + reward
        forward = int(sum(slot.param_count_active() for slot in plane.slots if slot.in_forward))
        metrics = {
            "progress": self.steps / self.episode_length,
            "train_loss": 0.0,
            "val_loss": 0.0,
            "val_accuracy": 0.0,
            "metric": value,
            "metric_gain": reward,
            "metric_since_start": value,
            "full_metric": value,
            "static_metric": 0.0,
            "host_params": self.host_params,
            "forward_params": forward,
            "incubating_params": active_params - forward,
            "forward_flops": 0.0,
            "incubating_flops": active_flops,
            "active_param_budget_util": active_params / self.host_params,
            "active_flops_budget_util": active_flops / self.host_flops,
            "occupied_slots": sum(Stage(s) in SEED_STAGES for s in stage),
            "n_slots": len(plane),
            "veto": 0.0,
            "rollback": 0.0,
            "level_change_rate": 0.0,
            "net_level_change": 0.0,
        }
        parts = RewardParts(task=reward, rent=0.0, churn=0.0, intervention=0.0, total=reward)
        masks = plane.action_masks() if masks is None else masks
        return StepResult(self.steps, report, masks, metrics, parts, events, self.steps >= self.episode_length, 0)


class ImmuneAnswerEnv(KnownAnswerEnv):
    """Emrakul's known-answer task: two phages on real planes with a real, learned `Emrakul`, one
    the host needs (`NEEDED_SLOT`: the metric falls by `NEEDED_DROP` as it is sedated) and one it
    does not (`IDLE_SLOT`), each paying `PHAGE_RENT` a step times its sedation mask. The reward
    is `METRIC_SCALE` x (metric - its start) - rent: every step's metric counts, so a probe of
    the needed phage costs while it lasts. Their last contributions are noted as a real probe
    would (a reason to tell them apart). Best: sedate the idle phage at the first step the mask
    allows it (it lyses, its rent stops) and never the needed one (`optimal_orders`). Tamiyo's
    fields of an action are not applied: this task is Emrakul's alone."""

    def __init__(self, n_envs: int, episode_length: int = IMMUNE_EPISODE_LENGTH):
        super().__init__(n_envs, episode_length=episode_length)
        self.config = DecayConfig(enabled=True, learned=True, probe_steps=2, settle_steps=2, baseline_steps=2, harm_tolerance=0.01, watch_steps=1)

    def reset(self, episode: int = 0, seeds=None) -> list[StepResult]:
        self.planes = [SeedPlane(self.host, run_seed=i) for i in range(self.n_envs)]
        for plane in self.planes:
            for slot, contribution in ((NEEDED_SLOT, NEEDED_DROP), (IDLE_SLOT, 0.0)):
                plane.apply(Action(Op.GERMINATE, slot, Blueprint.CONV_LIGHT, tempo=Tempo.FAST))
                plane.apply(Action(Op.ADVANCE, slot))  # TRAINING
                plane.apply(Action(Op.ADVANCE, slot))  # BLENDING: alpha ramps to 1 over the tempo's ticks
                while plane.slots[slot].alpha < 1:
                    plane.tick()
                plane.apply(Action(Op.ADVANCE, slot))  # HOLDING
                plane.apply(Action(Op.FOSSILIZE, slot))  # a phage, in Emrakul's custody
                plane.note_contribution(slot, contribution)
        self.emrakuls = [Emrakul(self.config, task_scale=METRIC_SCALE) for _ in self.planes]
        self.steps, self.previous, self.masks = 0, [0.0] * self.n_envs, [None] * self.n_envs
        return [self._immune_result(i, 0.0, []) for i in range(self.n_envs)]

    def step(self, actions: list[Action]) -> list[StepResult]:
        if self.steps >= self.episode_length:
            raise RuntimeError(f"episode is over after {self.episode_length} steps; call reset()")
        self.steps += 1
        results = []
        for i, (plane, emrakul, action) in enumerate(zip(self.planes, self.emrakuls, actions)):
            sedate = action.decay is Decay.SEDATE
            if sedate and not self.masks[i][action.phage]:
                raise IllegalAction(f"SEDATE phage {action.phage}: not in the step's phage mask")
            events = plane.tick()  # the step boundary: fades and lyses, then the step is read
            metric = self.metric(plane)
            rents = self.rents(plane)
            events += emrakul.step(plane, metric, rents, self.episode_length - self.steps, action.phage if sedate else None)
            reward = METRIC_SCALE * (metric - 1.0) - sum(rents)
            self.previous[i] += reward
            results.append(self._immune_result(i, reward, events))
        return results

    @staticmethod
    def metric(plane: SeedPlane) -> float:
        needed = plane.slots[NEEDED_SLOT]
        return 1.0 - NEEDED_DROP * (1.0 - needed.sedation if needed.stage is Stage.FOSSILIZED else 1.0)

    @staticmethod
    def rents(plane: SeedPlane) -> list[float]:
        return [PHAGE_RENT * slot.sedation if slot.stage is Stage.FOSSILIZED else 0.0 for slot in plane.slots]

    def optimal_orders(self, results: list[StepResult]) -> list[Action]:
        """The best decisions: sedate the idle phage whenever the mask allows it, else HOLD."""
        return [Action(Op.WAIT, decay=Decay.SEDATE, phage=IDLE_SLOT) if r.masks.phage[IDLE_SLOT] else Action(Op.WAIT) for r in results]

    def _immune_result(self, i: int, reward: float, events) -> StepResult:
        plane = self.planes[i]
        self.masks[i] = self.emrakuls[i].phage_mask(len(plane), self.episode_length - self.steps)
        masks = dataclasses.replace(plane.action_masks(), phage=self.masks[i])
        return self._result(i, plane.report(), reward, events, masks)
