"""`esper-lab` command line: the headless entry points to what the notebooks do interactively."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _tour(args: argparse.Namespace) -> int:
    """Execute the organism tour notebook headlessly (papermill) into reports/."""
    import papermill

    source = REPO_ROOT / "notebooks" / "00_organism_tour.ipynb"
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(source), str(output), parameters={"preset": args.preset}, kernel_name="python3", progress_bar=False
    )
    print(f"organism tour executed: {output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esper-lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    tour = commands.add_parser("tour", help="run the organism tour notebook headlessly")
    tour.add_argument("--preset", choices=("smoke", "full"), default="full")
    tour.add_argument("--output", default=str(REPO_ROOT / "reports" / "00_organism_tour.ipynb"))
    tour.set_defaults(handler=_tour)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
