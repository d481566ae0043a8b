"""The environment (Tolaria): one host training run; one step = one decision + one host epoch.

`reset()` builds host, plane, optimizer and data from the run seed; `step(action)` checks the
action against the plane's rules (an illegal one raises), lets the governor veto it, applies it,
trains one epoch, evaluates, and prices the result. Every random stream (host init, data order,
seed init) derives from (run seed, env index), so a run replays exactly on the same machine.
"""

from __future__ import annotations

import functools
import multiprocessing
import pickle
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import torch

from esper_lab import economy
from esper_lab.config import RunConfig
from esper_lab.contracts import Action, Event, EventKind, HostKind, Op
from esper_lab.data import CharCorpus, Split, classification_batches, lm_batches, load_cifar10, load_digits, load_pydoc_corpus
from esper_lab.economy import OCCUPIED, Ledger, RewardParts
from esper_lab.governor import Governor
from esper_lab.hosts import CNNConfig, CNNHost, TransformerConfig, TransformerHost
from esper_lab.plane import ActionMasks, PlaneReport, SeedPlane
from esper_lab.training import evaluate, train_epoch

if TYPE_CHECKING:
    from esper_lab.distributed import World

LM_BATCHES_PER_STEP = 40  # an LM "epoch" has no natural end: this many random windows per step
LM_EVAL_WINDOWS = 64  # fixed validation windows: enough for a stable loss, cheap on 2 cores
STRUCTURAL_OPS = frozenset({Op.GERMINATE, Op.PRUNE, Op.FOSSILIZE})  # change what the optimizer holds

# Stream ids: each random consumer gets its own stream derived from (seed, env index, stream).
_HOST_STREAM, _DATA_STREAM, _PLANE_STREAM = 1, 2, 3


def stream_seed(seed: int, env_index: int, stream: int) -> int:
    """A distinct, deterministic 62-bit seed per (run seed, env, stream) (no `hash()`)."""
    return (seed * 1_000_003 + env_index * 7_919 + stream * 104_729) % (2**62)


@functools.cache
def _digits(seed: int) -> Split:
    return load_digits(seed=seed)


@functools.cache
def _corpus() -> CharCorpus:
    return load_pydoc_corpus()


@dataclass(frozen=True)
class StepResult:
    """What one step returns: the observation parts, the reward with its parts, and events."""

    step: int
    report: PlaneReport
    masks: ActionMasks
    metrics: dict[str, float]  # global, per-step numbers (the `steps` table and global features)
    reward: RewardParts
    events: list[Event]
    done: bool


class MorphEnv:
    def __init__(self, config: RunConfig, env_index: int = 0, world: World | None = None):
        """`world` makes this env one data-parallel replica (see `esper_lab.distributed`)."""
        self.config = config
        self.env_index = env_index
        self.world = world
        self.step_count = 0

    # --- construction -------------------------------------------------------------------------
    def _seed(self, stream: int) -> int:
        return stream_seed(self.config.seed, self.env_index, stream)

    def _load_data(self) -> None:
        config, task = self.config, self.config.spec
        if task.data == "pydoc":
            corpus = _corpus()
            self.vocab_size = corpus.vocab_size
            self.train_ids = corpus.train_ids[: max(int(len(corpus.train_ids) * config.data_fraction), 2 * self._context)]
            windows = corpus.val_ids[: LM_EVAL_WINDOWS * self._context + 1]
            n = (len(windows) - 1) // self._context * self._context
            self.val_x, self.val_y = windows[:n].view(-1, self._context), windows[1 : n + 1].view(-1, self._context)
            return
        split = _digits(config.seed) if task.data == "digits" else load_cifar10(config.cifar_folder, seed=config.seed)
        keep = max(int(len(split.train_x) * config.data_fraction), config.batch_size)
        order = torch.randperm(len(split.train_x), generator=torch.Generator().manual_seed(self._seed(_DATA_STREAM)))[:keep]
        self.train_x, self.train_y = split.train_x[order], split.train_y[order]
        self.val_x, self.val_y = split.val_x, split.val_y
        self.num_classes, self.input_shape = split.num_classes, split.input_shape

    @property
    def _context(self) -> int:
        return self.config.host_config().get("context", TransformerConfig.__dataclass_fields__["context"].default)

    def _build_host(self) -> torch.nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(self._seed(_HOST_STREAM))
            if self.config.spec.host_kind is HostKind.CNN:
                return CNNHost(CNNConfig(**self.config.host_config()))
            return TransformerHost(TransformerConfig(vocab_size=self.vocab_size, **self.config.host_config()))

    def reset(self) -> StepResult:
        config = self.config
        self._load_data()
        self.host = self._build_host()
        self.plane = SeedPlane(self.host, run_seed=self._seed(_PLANE_STREAM), allowed_blueprints=config.blueprints, max_seeds=config.max_seeds)
        # fused: one kernel per step for all params; ~20% off a digits_cnn epoch (see benchmarks)
        self.optimizer = torch.optim.Adam(
            [{"params": list(self.host.parameters()), "name": "host"}, {"params": [], "name": "seeds"}], lr=config.lr, fused=True
        )
        self.data_order = torch.Generator().manual_seed(self._seed(_DATA_STREAM))
        self.param_budget = int(config.param_budget * self.plane.host_param_count)
        self.flops_budget = config.param_budget * self.plane.host_flops
        self.governor = Governor(self.param_budget, agree=None if self.world is None else self.world.sum)
        self.governor.remember(self.host, self.plane, self.optimizer)
        self.ledger = Ledger(config.economy)
        self.step_count = 0
        evaluation = evaluate(self.host, self.plane, self.val_x, self.val_y)
        self.metric = self._metric(evaluation)
        self.first_metric = self.metric
        metrics = self._metrics(train_loss=float("nan"), evaluation=evaluation, gain=0.0, veto=False, rollback=False)
        zero = RewardParts(task=0.0, rent=0.0, churn=0.0, intervention=0.0, total=0.0)
        return StepResult(0, self.plane.report(), self.plane.action_masks(), metrics, zero, [], False)

    # --- one step -----------------------------------------------------------------------------
    def step(self, action: Action) -> StepResult:
        if self.step_count >= self.config.episode_length:
            raise RuntimeError(f"episode is over after {self.config.episode_length} steps; call reset()")
        plane, events = self.plane, []
        plane.check(action)  # the plane's masks are the rules; an illegal action is a caller bug
        veto = self.governor.veto(plane, action)
        if veto is not None:
            events.append(Event(EventKind.VETO, action.slot, plane.specs[action.slot].surface_uid, veto, float(action.op)))
        else:
            events += plane.apply(action)
            if action.op in STRUCTURAL_OPS:
                plane.sync_optimizer(self.optimizer)
        events += plane.tick()
        if self.world is not None:  # ranks agree on the action and the plane before the step's collectives
            self.world.check(plane, self.step_count + 1, action=action)

        train_loss = self._train()
        rollback = self.governor.diverged(train_loss)
        if rollback:  # the ROLLBACK event, then the culprit's removal (e.g. BLENDING->PRUNED)
            events += self.governor.rollback(self.host, plane, self.optimizer, train_loss)
        else:
            self.governor.healthy(train_loss, self.host, plane, self.optimizer)

        evaluation = evaluate(self.host, plane, self.val_x, self.val_y)
        metric = self._metric(evaluation)
        higher_is_better = self.config.spec.metric == "accuracy"
        gain = (metric - self.metric) if higher_is_better else (self.metric - metric)
        self.metric = metric
        report = plane.report()
        self.ledger.record(action.op, veto is not None, report.column("alpha"))
        rent = economy.rent_cost(
            report.column("alpha"),
            report.column("seed_param_count_active"),
            torch.tensor([int(s) in OCCUPIED for s in report.column("stage").tolist()]),
            plane.host_param_count,
        )
        reward = economy.reward(self.config.economy, gain, rent, self.ledger.churn_cost(), action.op, veto is not None)
        self.step_count += 1
        metrics = self._metrics(train_loss, evaluation, gain, veto is not None, rollback)
        done = self.step_count >= self.config.episode_length
        return StepResult(self.step_count, report, plane.action_masks(), metrics, reward, events, done)

    def _train(self) -> float:
        """One epoch; the mean training loss (averaged over ranks when data-parallel)."""
        config, world = self.config, self.world
        if config.spec.data == "pydoc":
            count = config.batches_per_step or LM_BATCHES_PER_STEP
            batches = lm_batches(self.train_ids, self._context, config.batch_size, self.data_order, count)
        else:
            batches = classification_batches(self.train_x, self.train_y, config.batch_size, self.data_order, config.batches_per_step)
        if world is None:
            return float(train_epoch(self.host, self.plane, batches, self.optimizer))
        average = world.average_gradients(lambda: [*self.host.parameters(), *self.plane.trainable_parameters()])
        return world.mean(float(train_epoch(self.host, self.plane, world.shard(batches), self.optimizer, average)))

    def _metric(self, evaluation) -> float:
        return evaluation.accuracy if self.config.spec.metric == "accuracy" else evaluation.loss

    def _metrics(self, train_loss: float, evaluation, gain: float, veto: bool, rollback: bool) -> dict[str, float]:
        plane = self.plane
        active_params = plane.active_param_count()
        active_flops = sum(slot.flops_active() for slot in plane.slots)
        occupied = sum(slot.stage in OCCUPIED for slot in plane.slots)
        return {
            "progress": self.step_count / self.config.episode_length,
            "train_loss": train_loss,
            "val_loss": evaluation.loss,
            "val_accuracy": evaluation.accuracy,
            "metric": self._metric(evaluation),
            "metric_gain": gain,
            "metric_since_start": self._metric(evaluation) - self.first_metric,
            "host_params": plane.host_param_count,
            "active_params": active_params,
            "active_flops": active_flops,
            "active_param_budget_util": active_params / self.param_budget,
            "active_flops_budget_util": active_flops / self.flops_budget,
            "occupied_slots": occupied,
            "n_slots": len(plane),
            "veto": float(veto),
            "rollback": float(rollback),
            "roi_params": gain / active_params if active_params else 0.0,
            "roi_flops": gain / active_flops if active_flops else 0.0,
            "level_change_rate": self.ledger.level_change_rate(),
            "net_level_change": float(self.ledger.net_level_change()),
        }


class VecEnv:
    """N environments stepped in lockstep, so a policy acts on all of them in one call.

    `workers=0` steps the envs one after another in this process. `workers=k` spreads them in
    contiguous blocks over k worker processes that step in parallel (one per core pays on CPU);
    env i computes exactly what it would in-process, because it is built from the same
    (run seed, env index) and each worker uses this process's torch thread count.
    """

    def __init__(self, config: RunConfig, n_envs: int, workers: int = 0):
        if not (isinstance(n_envs, int) and n_envs >= 1):
            raise ValueError(f"n_envs={n_envs!r} must be an integer >= 1")
        if not (isinstance(workers, int) and 0 <= workers <= n_envs):
            raise ValueError(f"workers={workers!r} must be an integer in [0, n_envs={n_envs}]")
        self.config = config
        self.n_envs = n_envs
        if workers == 0:
            self.envs = [MorphEnv(config, i) for i in range(n_envs)]  # in-process only: empty with workers
            self._workers = []
        else:
            self.envs = []
            bounds = [n_envs * w // workers for w in range(workers + 1)]
            self._workers = [_Worker(config, list(range(bounds[w], bounds[w + 1]))) for w in range(workers)]

    def __len__(self) -> int:
        return self.n_envs

    def slot_count(self) -> int:
        """Slots per env (every env has the same host), from a throwaway env in this process."""
        return len(MorphEnv(self.config).reset().report.values)

    def reset(self) -> list[StepResult]:
        if not self._workers:
            return [env.reset() for env in self.envs]
        return self._gather("reset", [None] * len(self._workers))

    def step(self, actions: list[Action]) -> list[StepResult]:
        if len(actions) != self.n_envs:
            raise ValueError(f"got {len(actions)} actions for {self.n_envs} environments")
        if not self._workers:
            for env, action in zip(self.envs, actions):
                env.plane.check(action)  # every action is checked before any env moves
            return [env.step(action) for env, action in zip(self.envs, actions)]
        blocks = [[actions[i] for i in worker.indices] for worker in self._workers]
        self._gather("check", blocks)
        return self._gather("step", blocks)

    def _gather(self, command: str, payloads: list) -> list:
        for worker, payload in zip(self._workers, payloads):
            worker.send(command, payload)  # all workers start before any answer is awaited
        answers = [worker.receive() for worker in self._workers]
        return [result for answer in answers for result in answer]

    def close(self) -> None:
        """Stop the worker processes (they also stop by themselves when this process ends)."""
        for worker in self._workers:
            worker.close()
        self._workers = []

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Worker:
    """One worker process owning the envs `indices`; commands and results travel pickled."""

    def __init__(self, config: RunConfig, indices: list[int]):
        self.indices = indices
        context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has threads
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, config, indices, torch.get_num_threads()), daemon=True, name=f"env-worker-{indices[0]}"
        )
        self._process.start()
        child.close()

    def send(self, command: str, payload) -> None:
        try:
            self._conn.send_bytes(pickle.dumps((command, payload)))
        except OSError:
            self._died()

    def receive(self) -> list:
        try:
            ok, answer = pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            self._died()
        if not ok:
            raise answer
        return answer

    def _died(self) -> NoReturn:
        self._process.join(timeout=1)
        raise RuntimeError(f"env worker for envs {self.indices} died (exit code {self._process.exitcode})")

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send_bytes(pickle.dumps(("close", None)))
            self._process.join(timeout=10)
        self._conn.close()


def _serve(conn, config: RunConfig, indices: list[int], threads: int) -> None:
    """A worker's loop: build its envs, then answer reset/step until told to close.

    An exception in an env (an illegal action, say) goes back to the caller and the worker
    keeps serving, as an in-process env would."""
    torch.set_num_threads(threads)
    envs = [MorphEnv(config, i) for i in indices]
    while True:
        try:
            command, payload = pickle.loads(conn.recv_bytes())
        except EOFError:  # the parent is gone
            return
        if command == "close":
            return
        try:
            if command == "reset":
                answer = (True, [env.reset() for env in envs])
            elif command == "check":
                answer = (True, [env.plane.check(action) for env, action in zip(envs, payload)])
            else:
                answer = (True, [env.step(action) for env, action in zip(envs, payload)])
        except Exception as error:  # noqa: BLE001 - handed to the caller, who raises it
            answer = (False, error)
        try:
            message = pickle.dumps(answer)
        except Exception:  # noqa: BLE001 - an unpicklable error still reaches the caller as text
            message = pickle.dumps((False, RuntimeError(traceback.format_exc())))
        conn.send_bytes(message)
