"""Policy measurements (not timed tests), printed as markdown tables:

    python -m benchmarks.policy_bench forward             # flat vs slot transformer at S = 8..256

`forward` times one batched decision (B environments) and measures its peak memory as the growth
of the process's peak RSS over a one-slot warm-up forward, in a fresh process per (encoder, S) so
one configuration's allocations cannot hide another's (page-granular: small values read as ~0).
(Comparing a trained policy with the baselines is the held-out evaluation's job:
`esper_lab.experiments.evaluation`.)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

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
        torch.zeros(BATCH, n_slots, dtype=torch.bool),  # no phage to sedate: a Tamiyo's decision
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
        "encoder": encoder,
        "slots": n_slots,
        "params": sum(p.numel() for p in agent.parameters()),
        "forward_ms": 1000 * statistics.median(times),
        "peak_mib": (peak - before) / 1024,
    }


def forward_table() -> None:
    print(f"| encoder | S | parameters | forward, B={BATCH} (ms, median of {REPEATS}) | forward peak RSS growth (MiB) |")
    print("|---|---|---|---|---|")
    for encoder in ("flat", "slot_transformer"):
        for n_slots in SLOT_COUNTS:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.policy_bench", "forward-one", encoder, str(n_slots)], capture_output=True, text=True, check=True
            )
            row = json.loads(out.stdout)
            print(f"| {encoder} | {n_slots} | {row['params']:,} | {row['forward_ms']:.2f} | {row['peak_mib']:.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.policy_bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("forward")
    one = commands.add_parser("forward-one")
    one.add_argument("encoder")
    one.add_argument("slots", type=int)
    args = parser.parse_args(argv)
    if args.command == "forward":
        forward_table()
    else:
        print(json.dumps(forward_one(args.encoder, args.slots)))


if __name__ == "__main__":
    main()
