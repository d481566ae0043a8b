"""Every shipped pack's smoke preset, run here, and the digests of what it recorded
(`Store.digests`): the check that a refactor changed no recorded number.

`python -m benchmarks.pack_digests OUT [--against OLD/digests.json] [--packs a,b]` runs each pack
into `OUT/<pack>/`, writes `OUT/digests.json` and prints one row per pack: the tables whose digests
match OLD's (run OLD from the other checkout first) and those that differ.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from esper_lab.experiments.packs import pack_names
from esper_lab.telemetry import Store


def run(out: Path, packs: list[str]) -> dict[str, dict[str, str]]:
    digests = {}
    for name in packs:
        folder, start = out / name, time.perf_counter()
        command = [sys.executable, "-m", "esper_lab.cli", "pack", "run", name, "--preset", "smoke", "--no-report", "--jobs", "1"]
        command += ["--telemetry", str(folder / "telemetry"), "--reports", str(folder / "reports")]
        subprocess.run(command, check=True, capture_output=True)
        store = Store(folder / "telemetry")
        digests[name] = store.digests()
        store.close()
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--against", type=Path, help="digests.json of another checkout's run")
    parser.add_argument("--packs", help="comma-separated pack names (default: every shipped pack)")
    args = parser.parse_args()
    digests = run(args.out, args.packs.split(",") if args.packs else pack_names())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "digests.json").write_text(json.dumps(digests, indent=1))
    old = json.loads(args.against.read_text()) if args.against else {}
    print("| pack | tables with the same digests | tables that differ |\n|---|---|---|")
    for name, tables in digests.items():
        same = [t for t, d in tables.items() if old.get(name, {}).get(t) == d]
        print(f"| {name} | {', '.join(same) or '–'} | {', '.join(t for t in tables if t not in same) or '–'} |")


if __name__ == "__main__":
    main()
