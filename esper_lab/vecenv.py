"""N environments stepped in lockstep, in this process or spread over worker processes.

The worker protocol is explicit: a worker answers `ready` once its envs are built, then runs
`reset`, `check`, `step` and `close` commands and nothing else (an unknown command is an error
it reports).
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import traceback
from collections.abc import Sequence
from typing import NoReturn

import torch

from esper_lab.config import RunConfig
from esper_lab.contracts import Action, StepResult, training_episode_seed
from esper_lab.env import MorphEnv, slot_count


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
            try:
                for worker in self._workers:
                    worker.receive()  # its envs are built: an error building them is raised here, before any step
            except BaseException:
                self.close()
                raise

    def __len__(self) -> int:
        return self.n_envs

    def slot_count(self) -> int:
        """Slots per env (every env has the same host), from the config alone."""
        return slot_count(self.config)

    def episode_seeds(self, episode: int) -> list[int]:
        """Each env's seed for training episode `episode` of this run."""
        return [training_episode_seed(self.config.seed, i, episode) for i in range(self.n_envs)]

    def reset(self, episode: int = 0, seeds: Sequence[int] | None = None) -> list[StepResult]:
        """Start training episode `episode` in every env, or the episodes of explicit `seeds`
        (one per env, e.g. held-out evaluation seeds)."""
        seeds = self.episode_seeds(episode) if seeds is None else list(seeds)
        if len(seeds) != self.n_envs:
            raise ValueError(f"got {len(seeds)} episode seeds for {self.n_envs} environments")
        if not self._workers:
            return [env.reset(seed) for env, seed in zip(self.envs, seeds)]
        return self._gather("reset", [[seeds[i] for i in worker.indices] for worker in self._workers])

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
            try:
                self._conn.send_bytes(pickle.dumps(("close", None)))
            except OSError:  # it is already on its way out (it failed to build its envs)
                pass
            self._process.join(timeout=10)
        self._conn.close()


def _serve(conn, config: RunConfig, indices: list[int], threads: int) -> None:
    """A worker's loop: build its envs, then answer reset/step until told to close.

    An exception in an env (an illegal action, say) goes back to the caller and the worker
    keeps serving, as an in-process env would."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it closes us): no traceback here
    torch.set_num_threads(threads)
    try:
        envs = [MorphEnv(config, i) for i in indices]
    except Exception as error:  # noqa: BLE001 - a bad data fraction, say: the parent raises it
        conn.send_bytes(pickle.dumps((False, error)))
        return
    conn.send_bytes(pickle.dumps((True, None)))  # ready: VecEnv waits for this before it returns
    while True:
        try:
            command, payload = pickle.loads(conn.recv_bytes())
        except EOFError:  # the parent is gone
            return
        if command == "close":
            return
        try:
            if command == "reset":
                answer = (True, [env.reset(seed) for env, seed in zip(envs, payload)])
            elif command == "check":
                answer = (True, [env.plane.check(action) for env, action in zip(envs, payload)])
            elif command == "step":
                answer = (True, [env.step(action) for env, action in zip(envs, payload)])
            else:
                raise ValueError(f"env worker: unknown command {command!r}")
        except Exception as error:  # noqa: BLE001 - handed to the caller, who raises it
            answer = (False, error)
        try:
            message = pickle.dumps(answer)
        except Exception:  # noqa: BLE001 - an unpicklable error still reaches the caller as text
            message = pickle.dumps((False, RuntimeError(traceback.format_exc())))
        conn.send_bytes(message)
