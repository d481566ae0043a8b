"""Past one process: data-parallel host training where lifecycle decisions are made once.

Every rank builds the same organism from the same seed. Each minibatch is split across ranks
and gradients are averaged with one all-reduce per step of the optimizer: the arithmetic of
DistributedDataParallel, done explicitly because DDP's reducer is built once over a fixed set of
parameters while seeds join the optimizer at germination and leave it at prune or fossilise.
Rank 0's policy chooses each action and broadcasts it; every rank applies it; then every rank
fingerprints its plane and a mismatch stops the run naming the rank and the slot.

Launch with `torchrun --standalone --nproc_per_node=2 -m esper_lab.distributed --task digits_cnn`
(gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist

from esper_lab.config import RunConfig
from esper_lab.contracts import Action, StepResult
from esper_lab.env import MorphEnv
from esper_lab.plane import SeedPlane, slot_fingerprint


class DesyncError(RuntimeError):
    """Ranks disagree about the plane: continuing would train different organisms."""


class World:
    """This process's place in the process group, and the collectives the env needs."""

    def __init__(self):
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()

    def shard(self, batches: Iterator) -> Iterator:
        """This rank's share of every minibatch (all ranks draw the same order)."""
        for inputs, target in batches:
            yield inputs[self.rank :: self.size], target[self.rank :: self.size]

    def average_gradients(self, parameters: Callable[[], list[torch.nn.Parameter]]) -> Callable[[], None]:
        def average() -> None:
            grads = [p.grad for p in parameters() if p.grad is not None]
            flat = torch.cat([g.flatten() for g in grads])
            dist.all_reduce(flat)
            flat /= self.size
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

        return average

    def mean(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor) / self.size

    def broadcast(self, action: Action | None) -> Action:
        box = [action]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_plane(self, plane: SeedPlane, step: int) -> None:
        """Compare every rank's per-slot fingerprints; raise naming the first differing rank and slot."""
        mine = [slot_fingerprint(slot) for slot in plane.slots]
        everyone: list[list[str] | None] = [None] * self.size
        dist.all_gather_object(everyone, mine)
        for rank, theirs in enumerate(everyone):
            for slot, (a, b) in enumerate(zip(everyone[0], theirs)):
                if a != b:
                    raise DesyncError(
                        f"plane desync at step {step}: rank {rank} slot {slot} "
                        f"(surface_uid {plane.specs[slot].surface_uid}) differs from rank 0"
                    )


def run(
    config: RunConfig,
    choose: Callable[[StepResult], Action],
    steps: int,
    before_check: Callable[[int, MorphEnv], None] | None = None,
) -> list[str]:
    """Play `steps` steps on this rank; rank 0's `choose` decides. Returns plane fingerprints.

    `before_check(step, env)` runs on every rank before the fingerprint check (tests use it to
    force a desync)."""
    world = World()
    env = MorphEnv(config, env_index=0, world=world)
    result = env.reset()
    world.check_plane(env.plane, 0)
    fingerprints = [env.plane.fingerprint()]
    for step in range(1, steps + 1):
        action = world.broadcast(choose(result) if world.rank == 0 else None)
        result = env.step(action)
        if before_check is not None:
            before_check(step, env)
        world.check_plane(env.plane, step)
        fingerprints.append(env.plane.fingerprint())
    return fingerprints


def main() -> None:
    from esper_lab.policy import HeuristicPolicy

    parser = argparse.ArgumentParser(description="data-parallel esper_lab episode under torchrun")
    parser.add_argument("--task", default="digits_cnn")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", 1))))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    config = RunConfig(task=args.task, seed=args.seed, episode_length=args.steps)
    policy = HeuristicPolicy()
    fingerprints = run(config, lambda result: policy.act([result])[0], args.steps)
    if dist.get_rank() == 0:
        print(f"{args.steps} steps on {dist.get_world_size()} ranks, planes in sync: {fingerprints[-1][:16]}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
