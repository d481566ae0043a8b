"""Past one process: data-parallel host training where lifecycle decisions are made once.

Every rank builds the same organism from the same seed. Each minibatch is split across ranks
and gradients are averaged with one all-reduce per step of the optimizer: the arithmetic of
DistributedDataParallel, done explicitly because DDP's reducer is built once over a fixed set of
parameters while seeds join the optimizer at germination and leave it at prune or fossilise.
Rank 0's policy chooses each action and broadcasts it; every rank applies it. Ranks then
compare fingerprints twice a step and a mismatch stops every rank with a `DesyncError` naming
the rank, the slot and the field: after applying the action and before training (the action
itself and every slot, so a rank that applied another action stops before the gradient
all-reduce, whose sizes would no longer match), and after the step (every slot, and the host
every `HOST_CHECK_EVERY` steps).

Launch with `torchrun --standalone --nproc_per_node=2 -m esper_lab.distributed --task digits_cnn`
(gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from esper_lab.config import RunConfig
from esper_lab.contracts import Action, StepResult
from esper_lab.env import MorphEnv
from esper_lab.plane import SeedPlane
from esper_lab.slot import field_text, slot_fields, tensor_digest

# The host is hashed every this many steps (and at the first and last): hashing copies every host
# tensor to the CPU for SHA-256 (~1.6 GB/s here). That is ~0.1% of a digits_cnn or pydoc_lm step,
# but a GPU-sized host (20M parameters: ~50 ms) would pay it every step. A host desync persists
# (ranks apply the same averaged gradients), so it is still caught within this many steps.
HOST_CHECK_EVERY = 4


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

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    def check(self, plane: SeedPlane, step: int, action: Action | None = None, host: nn.Module | None = None) -> None:
        """Compare the action (when given), every slot's fields and the host's tensors (when
        given) across ranks; on any difference every rank raises the same `DesyncError`."""
        mine = {
            "action": None if action is None else {f.name: field_text(getattr(action, f.name)) for f in dataclasses.fields(action)},
            "slots": [slot_fields(slot) for slot in plane.slots],
            "host": None if host is None else {name: tensor_digest(t) for name, t in host.state_dict().items()},
        }
        everyone: list[dict | None] = [None] * self.size
        dist.all_gather_object(everyone, mine)
        for rank, theirs in enumerate(everyone):
            if theirs != everyone[0]:
                where = _first_difference(theirs, everyone[0], plane)
                raise DesyncError(f"desync at step {step}: rank {rank} {where} differs from rank 0")


def _first_difference(theirs: dict, ours: dict, plane: SeedPlane) -> str:
    """Where two ranks' fingerprints first differ, as "slot S (...) field F (a vs b)"."""
    if theirs["action"] != ours["action"]:
        name = next(k for k in ours["action"] if theirs["action"][k] != ours["action"][k])
        slot = ours["action"]["slot"]
        return f"action slot {slot} field {name} ({theirs['action'][name]} vs {ours['action'][name]})"
    for index, (a, b) in enumerate(zip(theirs["slots"], ours["slots"])):
        if a != b:
            name = next(k for k in [*b, *a] if a.get(k) != b.get(k))  # lifecycle fields first
            return f"slot {index} (surface_uid {plane.specs[index].surface_uid}) field {name} ({a.get(name)} vs {b.get(name)})"
    name = next(k for k in ours["host"] if theirs["host"][k] != ours["host"][k])
    return f"host (no slot) field {name} ({theirs['host'][name]} vs {ours['host'][name]})"


@contextmanager
def process_group(backend: str, **init):
    """Join the process group; leave it in order, so that no gloo thread outlives it.

    A gloo worker thread that drops a finished collective's tensors after the interpreter has
    begun to exit aborts the process ("terminate called without an active exception"). Three
    things prevent it: `torch.distributed.nn.functional` is imported first, because it binds
    `group.WORLD` as default arguments at import (torch 2.13; the first optimizer imports it
    through dynamo) and would otherwise keep the group, and its threads, alive after destroy; a
    barrier, so every rank has finished its collectives; destroy, which then joins the group's
    threads, even after an error."""
    import torch.distributed.nn.functional  # noqa: F401 - binds None, not this group (see above)

    dist.init_process_group(backend, **init)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run(
    config: RunConfig,
    choose: Callable[[StepResult], Action],
    steps: int,
    before_check: Callable[[int, MorphEnv], None] | None = None,
) -> list[str]:
    """Play `steps` steps on this rank; rank 0's `choose` decides. Returns plane fingerprints.

    `before_check(step, env)` runs on every rank before the after-step check (tests use it to
    force a desync)."""
    world = World()
    env = MorphEnv(config, env_index=0, world=world)
    result = env.reset()
    world.check(env.plane, 0, host=env.host)
    fingerprints = [env.plane.fingerprint()]
    for step in range(1, steps + 1):
        action = world.broadcast(choose(result) if world.rank == 0 else None)
        result = env.step(action)  # checks the action and the plane before training
        if before_check is not None:
            before_check(step, env)
        host_due = step % HOST_CHECK_EVERY == 0 or step == steps
        world.check(env.plane, step, host=env.host if host_due else None)
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
    with process_group("nccl" if torch.cuda.is_available() else "gloo"):
        config = RunConfig(task=args.task, seed=args.seed, episode_length=args.steps)
        policy = HeuristicPolicy()
        fingerprints = run(config, lambda result: policy.act([result])[0], args.steps)
        if dist.get_rank() == 0:
            print(f"{args.steps} steps on {dist.get_world_size()} ranks, planes in sync: {fingerprints[-1][:16]}")


if __name__ == "__main__":
    main()
