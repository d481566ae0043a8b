"""Run the benchmarks, the scale sweep and the CIFAR-10 loop, write `benchmarks/RESULTS.md`:
`python -m benchmarks [name ...]`.

Not part of the test suite: speed is measured here, as ratios taken side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks import cifar
from benchmarks.cases import CASES, Row
from benchmarks.sweep import sweep

RESULTS = Path(__file__).with_name("RESULTS.md")


def table(rows: list[Row]) -> str:
    lines = [
        "| benchmark | ratio (median, p10–p90) | goal | met | measured | A / B median seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r.pairing
        lines.append(
            f"| {r.name} | {p.ratio:.3f} ({p.ratio_low:.3f}–{p.ratio_high:.3f}) | {r.goal} | "
            f"{'yes' if r.met else '**no**'} | {r.measured} | {p.a_seconds:.4f} / {p.b_seconds:.4f} ({p.pairs} pairs) |"
        )
    return "\n".join(lines)


def main() -> int:
    names = [case.__name__ for case in CASES] + ["sweep", "cifar"]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("cases", nargs="*", help=f"run only these (default: all): {', '.join(names)}")
    args = parser.parse_args()
    unknown = sorted(set(args.cases) - set(names))
    if unknown:
        parser.error(f"unknown benchmarks {unknown} (choose from {', '.join(names)})")
    torch.set_num_threads(int(os.environ.get("ESPER_LAB_THREADS", "1")))
    started = time.time()
    rows = []
    for case in CASES:
        if args.cases and case.__name__ not in args.cases:
            continue
        row = case()
        print(f"{row.name}: {row.pairing.ratio:.3f} (goal {row.goal}, {'met' if row.met else 'NOT met'})", flush=True)
        rows.append(row)
    sections = [run() for name, run in (("sweep", sweep), ("cifar", cifar.section)) if not args.cases or name in args.cases]
    section = "\n".join(sections)
    if section:
        print(section, flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    text = (
        f"# Benchmark results\n\n{time.strftime('%Y-%m-%d')} on {machine}; `python -m benchmarks` took "
        f"{time.time() - started:.0f} s.\n\n{table(rows)}\n\n{section}"
    )
    if not args.cases:
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
