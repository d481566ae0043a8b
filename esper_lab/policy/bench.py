"""Policy measurements (not timed tests), printed as markdown tables:

    python -m esper_lab.policy.bench forward             # flat vs slot transformer at S = 8..256
    python -m esper_lab.policy.bench compare CKPT --task digits_cnn --envs 8

`forward` times one batched decision (B environments) and measures its peak memory as the growth
of the process's peak RSS over a one-slot warm-up forward, in a fresh process per (encoder, S) so
one configuration's allocations cannot hide another's (page-granular: small values read as ~0).
`compare` plays one episode per environment with a trained checkpoint (greedy and sampled) and
with the heuristic and random baselines, on the same environment seeds.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter

import torch

SLOT_COUNTS = (8, 32, 128, 256)  # the scaling points (seed 000 Phase 3: ~64 is the flat limit)
BATCH = 8  # environments per decision, as in `esper-lab train --envs 8`
REPEATS = 50  # timed forwards per configuration; the median is reported


def observation(n_slots: int, generator: torch.Generator):
    from esper_lab.contracts import Blueprint, Op
    from esper_lab.policy.features import GLOBAL_FIELDS, SLOT_FIELDS, SLOT_ID_FIELDS, Observation

    op_mask = torch.rand(BATCH, n_slots, len(Op), generator=generator) < 0.3
    op_mask[..., Op.WAIT] = True
    return Observation(
        torch.randn(BATCH, len(GLOBAL_FIELDS), generator=generator),
        torch.randn(BATCH, n_slots, len(SLOT_FIELDS), generator=generator),
        torch.zeros(BATCH, n_slots, len(SLOT_ID_FIELDS), dtype=torch.long),
        torch.ones(BATCH, n_slots, dtype=torch.bool),
        op_mask,
        torch.ones(BATCH, n_slots, len(Blueprint), dtype=torch.bool),
    )


def forward_one(encoder: str, n_slots: int) -> dict:
    """Measure one configuration in this process: parameters, median forward ms, peak MiB."""
    from esper_lab.policy.agent import Agent, PolicyConfig
    from esper_lab.policy.heads import noise_sizes

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)

    def build(slots: int):
        noise = {h: torch.rand(BATCH, size, generator=generator) for h, size in noise_sizes(slots).items()}
        return Agent(PolicyConfig(encoder=encoder, max_slots=slots)), observation(slots, generator), noise

    with torch.no_grad():
        warm, warm_obs, warm_noise = build(1)  # one-slot forward first: library and allocator start-up
        warm(warm_obs, noise=warm_noise)
        agent, obs, noise = build(n_slots)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        agent(obs, noise=noise)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            agent(obs, noise=noise)
            times.append(time.perf_counter() - start)
    return {
        "encoder": encoder, "slots": n_slots, "params": sum(p.numel() for p in agent.parameters()),
        "forward_ms": 1000 * statistics.median(times), "peak_mib": (peak - before) / 1024,
    }  # fmt: skip


def forward_table() -> None:
    print(f"| encoder | S | parameters | forward, B={BATCH} (ms, median of {REPEATS}) | forward peak RSS growth (MiB) |")
    print("|---|---|---|---|---|")
    for encoder in ("flat", "slot_transformer"):
        for n_slots in SLOT_COUNTS:
            out = subprocess.run([sys.executable, "-m", "esper_lab.policy.bench", "forward-one", encoder, str(n_slots)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            row = json.loads(out.stdout)
            print(f"| {encoder} | {n_slots} | {row['params']:,} | {row['forward_ms']:.2f} | {row['peak_mib']:.1f} |")


def compare(checkpoint: str, task: str, envs: int, seed: int, episode_length: int | None) -> None:
    from esper_lab.config import RunConfig
    from esper_lab.env import VecEnv
    from esper_lab.episodes import run_episodes
    from esper_lab.policy import HeuristicPolicy, PPOPolicy, RandomPolicy
    from esper_lab.policy.agent import Agent, PolicyConfig

    torch.set_num_threads(1)
    payload = torch.load(checkpoint, weights_only=True)
    agent = Agent(PolicyConfig(**payload["policy_config"]))
    agent.load_state_dict(payload["agent"])
    overrides = {} if episode_length is None else {"episode_length": episode_length}
    vec = VecEnv(RunConfig(task=task, seed=seed, **overrides), envs)
    policies = {
        f"ppo greedy (round {payload['round']})": PPOPolicy(agent, greedy=True),
        f"ppo sampled (round {payload['round']})": PPOPolicy(agent, seed=seed + 1),
        "heuristic": HeuristicPolicy(),
        "random": RandomPolicy(seed=seed),
    }
    print(f"| policy ({task}, {envs} envs, seed {seed}) | mean return | min | max | mean final metric | mean active params | "
          "ops executed, all envs | wall (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, policy in policies.items():
        start = time.perf_counter()
        runs = run_episodes(vec, policy)
        wall = time.perf_counter() - start
        returns = [r.episode_return for r in runs]
        metric = statistics.mean(r.final_metric for r in runs)
        params = statistics.mean(r.active_params for r in runs)
        ops = sum((Counter(r.ops) for r in runs), Counter())
        ops_text = " ".join(f"{op.lower()}={n}" for op, n in sorted(ops.items()))
        print(f"| {name} | {statistics.mean(returns):.2f} | {min(returns):.2f} | {max(returns):.2f} | {metric:.4f} | "
              f"{params:.0f} | {ops_text} | {wall:.0f} |", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m esper_lab.policy.bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("forward")
    one = commands.add_parser("forward-one")
    one.add_argument("encoder")
    one.add_argument("slots", type=int)
    versus = commands.add_parser("compare")
    versus.add_argument("checkpoint")
    versus.add_argument("--task", default="digits_cnn")
    versus.add_argument("--envs", type=int, default=8)
    versus.add_argument("--seed", type=int, default=0)
    versus.add_argument("--episode-length", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "forward":
        forward_table()
    elif args.command == "forward-one":
        print(json.dumps(forward_one(args.encoder, args.slots)))
    else:
        compare(args.checkpoint, args.task, args.envs, args.seed, args.episode_length)


if __name__ == "__main__":
    main()
