"""The environment (Tolaria): one host training run; one step = one decision + one host epoch.

`reset(episode_seed)` builds host, plane, optimizer and data order from that episode's seed;
`step(action)` checks the action against the plane's rules (an illegal one raises), lets the
governor veto it, applies it, trains one epoch, evaluates, measures seed contributions every few
steps, and prices the result. Every random stream derives from the episode seed, so an episode
replays exactly on the same machine; training episodes get a new seed each, held-out evaluation
episodes get seeds from a disjoint range (`contracts.eval_episode_seed`).

Per step the task metric is read on a fixed, seeded validation subsample (the reward uses it);
at the episode's last step, on the whole validation split (`full_metric`). The test split is read
only for what reports state (`test_metric`, every `test_every` steps and at the last): nothing the
policy observes or is rewarded for reads it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING

import torch

from esper_lab import checks, economy
from esper_lab.config import RunConfig
from esper_lab.contracts import (
    MODULE_STAGES,
    SEED_STAGES,
    STRUCTURAL_OPS,
    Action,
    ActionMasks,
    Decay,
    Event,
    EventKind,
    HostKind,
    RewardParts,
    StepResult,
    Stream,
    stream_seed,
    training_episode_seed,
)
from esper_lab.data import CharCorpus, Split, lm_batches, load_cifar10, load_digits, load_pydoc_corpus
from esper_lab.decay import Emrakul
from esper_lab.economy import Ledger
from esper_lab.governor import Governor
from esper_lab.hosts import CNNConfig, CNNHost, TransformerConfig, TransformerHost
from esper_lab.plane import IllegalAction, SeedPlane
from esper_lab.training import Evaluation, evaluate, train_epoch
from esper_lab.twin import StaticTwin

if TYPE_CHECKING:
    from esper_lab.distributed import World

LM_BATCHES_PER_STEP = 40  # an LM "epoch" has no natural end: this many random windows per step
# A training sample's backward costs about twice its forward (gradients for inputs and for weights):
# forward + backward = 3 x forward FLOPs (Kaplan et al. 2020, "6N" per token = 3 x "2N"). A frozen
# fossil still passes gradients down to the host, so it is counted the same (an upper bound).
TRAIN_FLOPS_PER_FORWARD = 3.0


@functools.cache
def _images(data: str, seed: int, cifar_folder: str | None, device: str) -> Split:
    """One copy of a task's images per process and device, shared by every env in it (the
    validation rows depend on the run seed; CIFAR-10's test split is the official test batch)."""
    split = load_digits(seed=seed) if data == "digits" else load_cifar10(cifar_folder, seed=seed)
    return split if device == "cpu" else split.to(device)


@functools.cache
def _corpus() -> CharCorpus:
    return load_pydoc_corpus()


@functools.cache
def _corpus_on(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    corpus = _corpus()
    return corpus.train_ids.to(device), corpus.val_ids.to(device), corpus.test_ids.to(device)


def build_host(config: RunConfig, vocab_size: int | None = None) -> torch.nn.Module:
    """The task's host with the config's overrides (weights from the global RNG: seed it first).
    A Transformer needs the corpus's vocabulary size; its surfaces do not depend on it."""
    if config.spec.host_kind is HostKind.CNN:
        return CNNHost(CNNConfig(**config.host_config()))
    return TransformerHost(TransformerConfig(vocab_size=vocab_size or _corpus().vocab_size, **config.host_config()))


def slot_count(config: RunConfig) -> int:
    """Slots per env, from the config alone: a host built on the meta device (no data, no memory)."""
    with torch.device("meta"):
        return len(build_host(config, vocab_size=1).injection_specs())


def _subsample(n: int, keep: int | None, seed: int) -> torch.Tensor | None:
    """A fixed, seeded choice of `keep` of n validation rows (None: keep them all)."""
    if keep is None or keep >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep].sort().values


class MorphEnv:
    def __init__(self, config: RunConfig, env_index: int = 0, world: World | None = None):
        """`world` makes this env one data-parallel replica (see `esper_lab.distributed`)."""
        self.config = config
        self.env_index = env_index
        self.world = world
        self.step_count = 0
        self.kept_rows = self._train_rows()  # a data fraction that keeps too little fails here, before any step

    # --- construction -------------------------------------------------------------------------
    def _seed(self, stream: Stream) -> int:
        return stream_seed(self.episode_seed, 0, stream)

    def _train_rows(self) -> int:
        """The training rows (characters, for the LM) the data fraction keeps: at least one batch
        (two context windows), or the run would train on nothing real."""
        config = self.config
        if config.spec.data == "pydoc":
            rows, least, what = len(_corpus_on(config.device)[0]), 2 * self._context, "two context windows of characters"
        else:
            rows, least = len(_images(config.spec.data, config.seed, config.cifar_folder, config.device).train_y), config.batch_size
            what = f"one batch (batch_size={config.batch_size})"
        keep = int(rows * config.data_fraction)
        if keep < least:
            raise checks.ConfigError(f"data_fraction={config.data_fraction!r} keeps {keep} of the {rows} training rows, fewer than {what}")
        return keep

    def _load_data(self) -> None:
        """Point at the process's one copy of the task's data: training rows (a data-fraction
        share, in an order from the episode seed), the validation split (its inputs, targets and
        `prepare`, which turns raw pixels into host inputs chunk by chunk), and the subsample
        every step reads, kept ready as host inputs."""
        config, task = self.config, self.config.spec
        # the validation subsample is fixed for the run (its seed, not the episode's): every
        # episode and every arm of an evaluation reads the same rows
        val_seed = stream_seed(config.seed, 0, Stream.VALIDATION)
        if task.data == "pydoc":
            train_ids, val_ids, test_ids = _corpus_on(config.device)
            self.vocab_size = _corpus().vocab_size
            self.train_ids = train_ids[: self.kept_rows]
            (self.val_x, self.val_y), (self.test_x, self.test_y) = self._windows(val_ids), self._windows(test_ids)
            self.prepare = None
        else:
            self.split = split = _images(task.data, config.seed, config.cifar_folder, config.device)
            order = torch.randperm(len(split.train_y), generator=torch.Generator().manual_seed(self._seed(Stream.DATA)))[: self.kept_rows]
            self.train_rows = order.to(config.device)
            self.val_x, self.val_y, self.prepare = split.val_pixels, split.val_y, split.standardise
            self.test_x, self.test_y = split.test_pixels, split.test_y
        rows = _subsample(len(self.val_y), config.val_samples or task.val_samples, val_seed)
        self.probe_x, self.probe_y = self.val_x, self.val_y
        if rows is not None:
            rows = rows.to(self.val_y.device)
            self.probe_x, self.probe_y = self.val_x[rows], self.val_y[rows]
        if self.prepare is not None:
            self.probe_x = self.prepare(self.probe_x)

    def _windows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Consecutive, non-overlapping context windows of `ids` and their next-token targets."""
        n = (len(ids) - 1) // self._context * self._context
        return ids[:n].view(-1, self._context), ids[1 : n + 1].view(-1, self._context)

    @property
    def _context(self) -> int:
        return self.config.host_config().get("context", TransformerConfig.__dataclass_fields__["context"].default)

    def reset(self, episode_seed: int | None = None) -> StepResult:
        """Start an episode; its randomness comes from `episode_seed` (default: training episode 0
        of this env)."""
        config = self.config
        self.episode_seed = training_episode_seed(config.seed, self.env_index, 0) if episode_seed is None else episode_seed
        self._load_data()
        with torch.random.fork_rng():
            torch.manual_seed(self._seed(Stream.HOST))
            self.host = build_host(config, getattr(self, "vocab_size", None)).to(config.device)
        plane = SeedPlane(self.host, run_seed=self._seed(Stream.PLANE), allowed_blueprints=config.blueprints, max_seeds=config.max_seeds)
        self.plane = plane.to(config.device)
        # fused: one kernel per step for all params; ~20% off a digits_cnn epoch (see benchmarks)
        self.optimizer = torch.optim.Adam(
            [{"params": list(self.host.parameters()), "name": "host"}, {"params": [], "name": "seeds"}], lr=config.lr, fused=True
        )
        self.data_order = torch.Generator().manual_seed(self._seed(Stream.DATA))
        self.param_budget = int(config.param_budget * self.plane.host_param_count)
        self.flops_budget = config.param_budget * self.plane.host_flops
        self.governor = Governor(self.param_budget, agree=None if self.world is None else self.world.sum)
        self.governor.remember(self.host, self.plane, self.optimizer)
        self.ledger = Ledger(config.economy)
        self.emrakul = Emrakul(config.decay, config.economy.task_scale) if config.decay.enabled else None
        self.twin: StaticTwin | None = None  # started when the first seed reaches the forward path
        self.step_count = 0
        evaluation = self._evaluate()
        self.metric = self.first_metric = self._metric(evaluation)
        self.gain_over_static = 0.0
        metrics = self._metrics(train_loss=math.nan, evaluation=evaluation, gain=0.0, veto=False, rollback=False)
        zero = RewardParts(task=0.0, rent=0.0, churn=0.0, intervention=0.0, total=0.0)
        return StepResult(0, self.plane.report(), self._masks(), metrics, zero, [], False, self.episode_seed)

    # --- one step -----------------------------------------------------------------------------
    def step(self, action: Action) -> StepResult:
        if self.step_count >= self.config.episode_length:
            raise RuntimeError(f"episode is over after {self.config.episode_length} steps; call reset()")
        plane, events = self.plane, []
        plane.check(action)  # the plane's masks are the rules; an illegal action is a caller bug
        sedate = action.decay is Decay.SEDATE
        if sedate and not (action.phage < len(self.masks.phage) and self.masks.phage[action.phage]):
            raise IllegalAction(f"SEDATE phage {action.phage}: not a phage Emrakul may sedate now (the step's phage mask)")
        veto = self.governor.veto(plane, action)
        if veto is not None:
            events.append(Event(EventKind.VETO, action.slot, plane.specs[action.slot].surface_uid, veto, float(action.op)))
            plane.note_veto(action.slot)
        else:
            events += plane.apply(action)
            if action.op in STRUCTURAL_OPS:
                plane.sync_optimizer(self.optimizer)
        events += plane.tick()
        if self.world is not None:  # ranks agree on the action and the plane before the step's collectives
            self.world.check(plane, self.step_count + 1, action=action)
        if self.twin is None and self.config.economy.reward_signal == "gain_over_static" and plane.forward_slots():
            self.twin = StaticTwin(self.host, self.optimizer)  # the host is still the static one: copy it now

        running = sum(slot.flops_active() for slot in plane.slots if slot.stage in MODULE_STAGES and slot.sedation > 0)
        train_flops = TRAIN_FLOPS_PER_FORWARD * self._samples_per_step() * (plane.host_flops + running)
        train_loss = self._train()
        rollback = self.governor.diverged(train_loss)
        if rollback:  # the ROLLBACK event, then the culprit's removal (e.g. BLENDING->PRUNED)
            events += self.governor.rollback(self.host, plane, self.optimizer, train_loss)
        else:
            self.governor.healthy(train_loss, self.host, plane, self.optimizer)

        self.step_count += 1
        done = self.step_count >= self.config.episode_length
        evaluation = self._evaluate()
        metric = self._metric(evaluation)
        gain = self._signed(metric - self.metric)
        self.metric = metric
        income = self._probe_contributions(metric) if self._probe_due(done) else 0.0
        prices = self.config.economy
        # what each slot pays for: alpha (times a phage's sedation mask), active params, occupancy
        paying = (
            torch.tensor([slot.alpha * slot.sedation for slot in plane.slots]),
            torch.tensor([slot.param_count_active() for slot in plane.slots]),
            torch.tensor([slot.stage in SEED_STAGES for slot in plane.slots]),
            plane.host_param_count,
            prices.max_rent,
        )
        rent = economy.rent_cost(*paying)
        if self.emrakul is not None:
            rents = (prices.rent_weight * economy.slot_rents(*paying)).tolist()
            events += self.emrakul.step(
                plane, self._signed(metric), rents, self.config.episode_length - self.step_count, order=action.phage if sedate else None
            )
        report = plane.report()
        self.ledger.record(action.op, veto is not None, report.column("alpha"))
        static = self._metric(self.twin.evaluate(self.probe_x, self.probe_y)) if self.twin is not None else metric
        over = self._signed(metric - static)
        signal = {"metric_gain": gain, "contribution": income, "gain_over_static": over - self.gain_over_static}[prices.reward_signal]
        self.gain_over_static = over
        reward = economy.reward(prices, signal, rent, self.ledger.churn_cost(), action.op, veto is not None)
        metrics = self._metrics(
            train_loss,
            evaluation,
            gain,
            veto is not None,
            rollback,
            full=self._full_metric() if done else math.nan,
            static=static if prices.reward_signal == "gain_over_static" else math.nan,
            test=self.test_metric() if self._test_due(done) else math.nan,
            train_flops=train_flops,
        )
        return StepResult(self.step_count, report, self._masks(), metrics, reward, events, done, self.episode_seed)

    def _masks(self) -> ActionMasks:
        """The plane's masks, and the phages a learned Emrakul may sedate at the next step; kept,
        so that the next step can check the order it gets against what the policy was shown."""
        masks = self.plane.action_masks()
        if self.emrakul is not None:
            steps_left = self.config.episode_length - self.step_count
            masks = dataclasses.replace(masks, phage=self.emrakul.phage_mask(len(self.plane.slots), steps_left))
        self.masks = masks
        return masks

    def _samples_per_step(self) -> int:
        """Training samples (images, or windows of `context` tokens) one step's epoch trains on."""
        config = self.config
        if config.spec.data == "pydoc":
            return (config.batches_per_step or LM_BATCHES_PER_STEP) * config.batch_size
        rows = len(self.train_rows)
        return rows if config.batches_per_step is None else min(rows, config.batches_per_step * config.batch_size)

    def _train(self) -> float:
        """One epoch; the mean training loss (averaged over ranks when data-parallel)."""
        config, world = self.config, self.world
        if config.spec.data == "pydoc":
            count = config.batches_per_step or LM_BATCHES_PER_STEP
            batches = lm_batches(self.train_ids, self._context, config.batch_size, self.data_order, count)
        else:
            batches = self.split.batches(self.train_rows, config.batch_size, self.data_order, config.batches_per_step)
        if self.twin is not None:
            batches = list(batches)  # the twin trains on the very same batches
        if world is None:
            loss = train_epoch(self.host, self.plane, batches, self.optimizer)
            if self.twin is not None:
                self.twin.train(batches)
            return float(loss)
        average = world.average_gradients(lambda: [*self.host.parameters(), *self.plane.trainable_parameters()])
        loss = world.mean(float(train_epoch(self.host, self.plane, world.shard(batches), self.optimizer, average)))
        if self.twin is not None:
            self.twin.train(world.shard(batches), world.average_gradients(lambda: list(self.twin.host.parameters())))
        return loss

    # --- reading the task metric --------------------------------------------------------------
    def _evaluate(self) -> Evaluation:
        """The validation subsample, as every step reads it."""
        return evaluate(self.host, self.plane, self.probe_x, self.probe_y)

    def full_evaluation(self) -> Evaluation:
        """The whole validation split, as every reported outcome reads it."""
        return evaluate(self.host, self.plane, self.val_x, self.val_y, self.prepare)

    def _full_metric(self) -> float:
        return self._metric(self.full_evaluation())

    def test_metric(self) -> float:
        """The task metric on the whole test split: what reports state, never what the policy sees."""
        return self._metric(evaluate(self.host, self.plane, self.test_x, self.test_y, self.prepare))

    def _test_due(self, done: bool) -> bool:
        every = self.config.test_every
        return done or (bool(every) and self.step_count % every == 0)

    def _metric(self, evaluation: Evaluation) -> float:
        return evaluation.accuracy if self.config.spec.metric == "accuracy" else evaluation.loss

    def _signed(self, change: float) -> float:
        """A metric change signed so that up is good (accuracy up, or validation loss down)."""
        return change if self.config.spec.metric == "accuracy" else -change

    def _probe_due(self, done: bool) -> bool:
        """Every `contribution_every` steps and at the episode's end; every step when the reward
        pays for contributions."""
        if self.config.economy.reward_signal == "contribution":
            return True
        every = self.config.contribution_every
        return bool(every) and (self.step_count % every == 0 or done)

    def contribution(self, slot: int, metric: float | None = None) -> float:
        """Slot `slot`'s seed's counterfactual contribution (seed 003 §8.2): the subsample metric as
        is (`metric`, when already read) minus the metric with that seed's alpha forced to 0,
        signed so that helping is > 0."""
        metric = self._metric(self._evaluate()) if metric is None else metric
        with self.plane.ablation(slot):
            without = self._metric(self._evaluate())
        return self._signed(metric - without)

    def _probe_contributions(self, metric: float) -> float:
        """Measure and note every in-forward seed's contribution; return their sum."""
        total = 0.0
        for i in self.plane.forward_slots():
            value = self.contribution(i, metric)
            self.plane.note_contribution(i, value)
            total += value
        return total

    def _metrics(
        self,
        train_loss: float,
        evaluation: Evaluation,
        gain: float,
        veto: bool,
        rollback: bool,
        full: float = math.nan,
        static: float = math.nan,
        test: float = math.nan,
        train_flops: float = 0.0,
    ) -> dict[str, float]:
        plane = self.plane
        forward = [slot.in_forward for slot in plane.slots]
        params = [slot.param_count_active() for slot in plane.slots]
        flops = [slot.flops_active() for slot in plane.slots]
        forward_params = sum(p for p, f in zip(params, forward) if f)
        forward_flops = sum(x for x, f in zip(flops, forward) if f)
        metric = self._metric(evaluation)
        return {
            "progress": self.step_count / self.config.episode_length,
            "train_loss": train_loss,
            "val_loss": evaluation.loss,
            "val_accuracy": evaluation.accuracy,
            "metric": metric,
            "metric_gain": gain,
            "metric_since_start": self._signed(metric - self.first_metric),
            "full_metric": full,
            "test_metric": test,
            "static_metric": static,
            "host_params": plane.host_param_count,
            "forward_params": forward_params,
            "incubating_params": sum(params) - forward_params,
            "forward_flops": forward_flops,
            "incubating_flops": sum(flops) - forward_flops,
            "train_flops": train_flops,
            # the budget holds every allocated seed, in forward or not (it bounds memory)
            "active_param_budget_util": sum(params) / self.param_budget,
            "active_flops_budget_util": sum(flops) / self.flops_budget,
            "occupied_slots": sum(slot.stage in SEED_STAGES for slot in plane.slots),
            "n_slots": len(plane),
            "veto": float(veto),
            "rollback": float(rollback),
            "level_change_rate": self.ledger.level_change_rate(),
            "net_level_change": float(self.ledger.net_level_change()),
        }
