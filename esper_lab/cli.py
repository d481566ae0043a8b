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


def _run(args: argparse.Namespace) -> int:
    """Play baseline-policy episodes on a task and print a short summary per environment."""
    from tqdm import tqdm

    from esper_lab.config import RunConfig
    from esper_lab.env import VecEnv
    from esper_lab.episodes import run_episodes
    from esper_lab.policy import HeuristicPolicy, RandomPolicy

    overrides = {k: v for k, v in (("episode_length", args.episode_length), ("cifar_folder", args.cifar_folder)) if v is not None}
    config = RunConfig(task=args.task, density=args.density, seed=args.seed, **overrides)
    policy = HeuristicPolicy() if args.policy == "heuristic" else RandomPolicy(seed=args.seed)
    vec = VecEnv(config, args.envs)
    with tqdm(total=args.episodes * config.episode_length, desc=f"{args.task} {args.policy}", unit="step") as bar:
        summaries = run_episodes(vec, policy, args.episodes, on_step=lambda *_: bar.update(1))
    metric = config.spec.metric
    for s in summaries:
        parts = " ".join(f"{k}={v:.3f}" for k, v in s.reward_parts.items())
        ops = " ".join(f"{k.lower()}={v}" for k, v in sorted(s.ops.items()))
        print(f"episode {s.episode} env {s.env}: {metric}={s.final_metric:.4f} return={s.episode_return:.2f} "
              f"active_params={s.active_params} vetoes={s.vetoes} rollbacks={s.rollbacks}")  # fmt: skip
        print(f"  reward parts: {parts}\n  ops: {ops}\n  germinated: {s.germinated or '-'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esper-lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    tour = commands.add_parser("tour", help="run the organism tour notebook headlessly")
    tour.add_argument("--preset", choices=("smoke", "full"), default="full")
    tour.add_argument("--output", default=str(REPO_ROOT / "reports" / "00_organism_tour.ipynb"))
    tour.set_defaults(handler=_tour)

    run = commands.add_parser("run", help="play episodes with a baseline policy (heuristic or random)")
    run.add_argument("--task", default="digits_cnn")
    run.add_argument("--density", default="a0")
    run.add_argument("--policy", choices=("heuristic", "random"), default="heuristic")
    run.add_argument("--episodes", type=int, default=1)
    run.add_argument("--envs", type=int, default=1)
    run.add_argument("--episode-length", type=int, default=None)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--cifar-folder", default=None)
    run.set_defaults(handler=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:  # bad input: one clear line, no traceback
        print(f"esper-lab: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
