"""`esper-lab` command line: the headless entry points to what the notebooks do interactively."""

from __future__ import annotations

import argparse
import collections
import sys
import warnings
from pathlib import Path

from esper_lab.checks import ConfigError
from esper_lab.contracts import CONTROL, GREEDY, MemberStatus


def _tour(args: argparse.Namespace) -> int:
    """Execute the organism tour notebook headlessly (papermill) into reports/."""
    import papermill

    from esper_lab.experiments.runner import REPORTS_DIR
    from esper_lab.experiments.workers import NOTEBOOKS_DIR

    source = NOTEBOOKS_DIR / "00_organism_tour.ipynb"
    output = Path(args.output or REPORTS_DIR / source.name)
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(source), str(output), parameters={"preset": args.preset}, kernel_name="python3", progress_bar=False)
    print(f"organism tour executed: {output}")
    return 0


def _notebooks(args: argparse.Namespace) -> int:
    """Copy the curated notebooks into a folder of the user's, for JupyterLab; never over an edit."""
    import shutil

    from esper_lab.experiments.workers import NOTEBOOKS_DIR

    destination = Path(args.destination)
    if destination.exists() and not destination.is_dir():
        raise ConfigError(f"{destination} is not a folder: name a folder to copy the notebooks into")
    sources = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    edited = [s.name for s in sources if (destination / s.name).is_file() and (destination / s.name).read_bytes() != s.read_bytes()]
    if edited and not args.force:
        raise ConfigError(f"{destination} already holds other versions of {', '.join(edited)}: move them, or pass --force to replace them")
    destination.mkdir(parents=True, exist_ok=True)
    for source in sources:
        target = destination / source.name
        if target.is_symlink():  # replace the link itself, never what it points to outside DEST
            target.unlink()
        shutil.copyfile(source, target)
    print(f"{len(sources)} notebooks in {destination}; open them with: jupyter lab {destination}")
    return 0


WORKERS_HELP = "worker processes stepping the envs in parallel (default: one per core, at most one per env; 0: in this process)"
SET_HELP = (
    "set any study knob, repeatable: a RunConfig field (batch_size=32), economy.*, ppo.*, policy.* "
    "(economy.rent_weight=0.5, ppo.lr=1e-3, policy.encoder=slot_transformer) or rounds/envs/workers/eval_episodes"
)
# One intra-op thread is fastest for these tiny models; two on a busy 2-core machine spin-wait
# (a `run --envs 4` took 696 s with torch's default of 2 against 73 s with 1).
DEVICE_HELP = "where hosts, seeds and data live: cpu (default), cuda or cuda:N (the policy stays on the CPU)"
THREADS_HELP = "torch threads for this process and its env workers (default 1: fastest for these tiny models)"
EPISODE_LENGTH_HELP = "env steps (host epochs) per episode (default: the RunConfig's)"
SEED_HELP = "run seed: host init, data order, policy init and sampling (default 0)"
CIFAR_HELP = "folder holding the CIFAR-10 python batches (data_batch_1..5, test_batch) for the cifar10_cnn task"
ENV_HELP, EPISODE_HELP = "which env of the run (default 0)", "which episode of that env (default 0)"


def _at_least(minimum: int):
    """An argparse type: an integer >= `minimum`, so a count that would run nothing (or fail late)
    is refused before anything is built."""

    def integer(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return integer


def _seed_list(text: str) -> list[int]:
    """An argparse type: comma-separated episode seeds (integers), at least one."""
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None


def _set_threads(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)  # env workers start with this count (VecEnv passes it on)


def _settings(args: argparse.Namespace, **loop):
    """The settings `run` and `train` share: the flags, then every `--set` (which wins)."""
    from esper_lab.experiments.settings import Settings, merge, parse_assignments

    flags = {
        "task": args.task,
        "density": args.density,
        "seed": args.seed,
        "episode_length": args.episode_length,
        "cifar_folder": args.cifar_folder,
        "device": args.device,
        "envs": args.envs,
        "workers": args.workers,
        **loop,
    }
    return Settings.build(merge({k: v for k, v in flags.items() if v is not None}, parse_assignments(args.set)))


def _run(args: argparse.Namespace) -> int:
    """Play baseline-policy episodes on a task and print a short summary per environment."""
    from tqdm import tqdm

    from esper_lab.episodes import run_episodes
    from esper_lab.policy import HeuristicPolicy, RandomPolicy, StaticPolicy
    from esper_lab.telemetry import Recorder
    from esper_lab.vecenv import VecEnv

    _set_threads(args)
    settings = _settings(args)
    config = settings.run
    policy = {"heuristic": HeuristicPolicy, "random": lambda: RandomPolicy(seed=config.seed), "static": StaticPolicy}[args.policy]()
    with VecEnv(config, settings.envs, settings.workers) as vec, Recorder(args.telemetry, args.cohort, config, kind=args.policy) as recorder:
        with tqdm(total=args.episodes * config.episode_length, desc=f"{config.task} {args.policy}", unit="step") as bar:
            summaries = run_episodes(vec, policy, args.episodes, on_step=lambda *_: bar.update(1), recorder=recorder)
    metric = config.spec.metric
    for s in summaries:
        parts = " ".join(f"{k}={v:.3f}" for k, v in s.reward_parts.items())
        ops = " ".join(f"{k.lower()}={v}" for k, v in sorted(s.ops.items()))
        print(
            f"episode {s.episode} env {s.env}: {metric}={s.final_metric:.4f} return={s.episode_return:.2f} "
            f"forward_params={s.forward_params} vetoes={s.vetoes} rollbacks={s.rollbacks}"
        )
        print(f"  reward parts: {parts}\n  ops: {ops}\n  germinated: {s.germinated or '-'}")
    print(f"telemetry written to {recorder.folder}")
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train the PPO policy on a task (a progress bar per round, one summary line per update),
    then, with eval_episodes > 0, play the held-out episodes with every arm."""
    from tqdm import tqdm

    from esper_lab.experiments.evaluation import evaluate_arms
    from esper_lab.experiments.train import train_and_record
    from esper_lab.telemetry.recorder import mark_stale_runs

    if args.resume and not args.checkpoint:
        raise ConfigError("--resume needs --checkpoint PATH")
    if args.checkpoint and Path(args.checkpoint).exists() and not args.resume:
        raise ConfigError(f"checkpoint {args.checkpoint} exists: pass --resume to continue it, or another path")
    _set_threads(args)
    policy = {"encoder": args.encoder, "recurrent": args.recurrent}
    settings = _settings(args, rounds=args.rounds, policy={k: v for k, v in policy.items() if v is not None})
    steps = settings.run.episode_length * settings.ppo.episodes_per_round
    bar = tqdm(total=steps, unit="step", leave=False, delay=1)  # drawn after 1 s: an error while starting is the only line

    def on_round(s: dict) -> None:
        bar.reset()
        print(
            f"update {int(s['round']) + 1}/{settings.rounds}: return {s['return_mean']:.2f} [{s['return_min']:.2f}, {s['return_max']:.2f}] "
            f"policy_loss {s['policy_loss']:.4f} value_loss {s['value_loss']:.4f} entropy op {s['entropy_op']:.2f} "
            f"slot {s['entropy_slot']:.2f} blueprint {s['entropy_blueprint']:.2f} kl {s['approx_kl']:.4f} "
            f"clip {s['clip_fraction']:.3f} ev {s['explained_variance']:.2f} "
            f"rollout {s['rollout_seconds']:.1f}s update {s['update_seconds']:.1f}s",
            flush=True,
        )

    if Path(args.telemetry).is_dir():
        mark_stale_runs(args.telemetry)  # a killed earlier training says `killed`, not `running`
    with bar:
        run_id, agent = train_and_record(
            settings, args.telemetry, args.cohort, checkpoint=args.checkpoint, on_round=on_round, on_step=lambda: bar.update(1)
        )
    print(f"telemetry written to {args.telemetry} (run {run_id})" + (f"; checkpoint {args.checkpoint}" if args.checkpoint else ""))
    if settings.eval_episodes:
        ids = evaluate_arms(settings, agent, args.telemetry, args.cohort, run_id)
        print(f"held-out evaluation ({settings.eval_episodes} episodes per arm): runs {', '.join(ids)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """Play episodes with a saved member policy (`policy.pt` in its training run's folder) under its
    own settings or changed ones, recorded as eval runs `<run>-<name>-<arm>` of its training run."""
    import dataclasses

    from esper_lab.experiments.evaluation import eval_run_id, evaluate_arms
    from esper_lab.experiments.saved import load_policy
    from esper_lab.experiments.settings import Settings, merge, parse_assignments, played_arms
    from esper_lab.telemetry.parts import run_folder

    _set_threads(args)
    saved = load_policy(args.policy)
    changes = parse_assignments(args.set)
    if "policy" in changes:
        raise ConfigError("--set policy.* cannot apply: the policy is the saved one")
    if args.episodes is not None:
        changes["eval_episodes"] = args.episodes
    settings = Settings.build(merge(saved.settings, changes))
    if args.seeds is None and not settings.eval_episodes:
        raise ConfigError("the saved settings hold no held-out episodes (eval_episodes=0): pass --episodes N or --seeds")
    arms = tuple(args.arms.split(","))
    played_arms(dataclasses.replace(settings, arms=arms))  # an unknown or unplayable arm fails here, naming it
    cohort = args.cohort or saved.cohort
    for arm in arms:
        folder = run_folder(args.telemetry, cohort, eval_run_id(saved.run_id, args.name, arm))
        if (folder / "runs").exists():
            raise ConfigError(f"{folder} already holds a re-evaluation: pass another --name or --cohort")
    ids = evaluate_arms(settings, saved.agent, args.telemetry, cohort, saved.run_id, saved.preset, arms, seeds=args.seeds, name=args.name)
    episodes = settings.eval_episodes if args.seeds is None else len(args.seeds)
    print(f"{args.policy} (run {saved.run_id}) played {episodes} episodes per arm: runs {', '.join(ids)} in {args.telemetry}")
    return 0


def _pack(args: argparse.Namespace) -> int:
    """`pack run`: every (cohort, seed) of a pack through papermill; `pack report`: its HTML page."""
    from esper_lab.experiments.packs import load_pack
    from esper_lab.experiments.report import report_path, write_report
    from esper_lab.experiments.runner import REPORTS_DIR, TELEMETRY_DIR, run_pack
    from esper_lab.experiments.settings import parse_assignments

    pack = load_pack(args.pack)
    telemetry = Path(args.telemetry or TELEMETRY_DIR / pack.name).resolve()
    reports = Path(args.reports or REPORTS_DIR).resolve()
    failed = []
    if args.action == "run":
        malformed = [item for item in args.param if "=" not in item]
        if malformed:
            raise ConfigError(f"--param {malformed[0]!r} must look like NAME=VALUE")
        parameters = dict(item.split("=", 1) for item in args.param)
        if "overrides" in parameters:
            raise ConfigError("--param overrides=... would skip the settings' checks: give each knob as --set KEY=VALUE")
        if args.device is not None:
            args.set.append(f"device={args.device}")
        if args.set:  # every member's settings, as the notebook's `overrides` (checked here, before any kernel)
            settings = parse_assignments(args.set)
            pack.settings(pack.control, pack.preset_seeds(args.preset)[0], args.preset, settings)
            parameters["overrides"] = settings
        statuses = run_pack(pack, args.preset, args.jobs, telemetry, reports, parameters, args.scheduler)
        failed = [(f"{c} seed={s}", st["status"]) for (c, s), st in statuses.items() if st["status"] != MemberStatus.COMPLETED]
    if args.action == "report" or (args.action == "run" and args.report):
        path = write_report(pack, telemetry, args.preset, report_path(reports, pack, args.preset, telemetry))
        print(f"report: {path}\ndashboard: esper-lab dashboard --root {telemetry}")
    if args.action == "run":  # the last line: how many members of each status (non-zero exit unless all completed)
        counts = collections.Counter(status for _, status in failed)
        parts = [f"{len(statuses) - len(failed)}/{len(statuses)} runs completed"] + [f"{n} {status}" for status, n in sorted(counts.items())]
        print("; ".join(parts) + (f" ({', '.join(member for member, _ in failed)})" if failed else ""))
    return 1 if failed else 0


def _dashboard(args: argparse.Namespace) -> int:
    """Serve the Panel dashboards over a telemetry root until Ctrl-C (loopback by default)."""
    from esper_lab.dashboards import serve

    try:
        serve(args.root, args.port, args.address, allow_hosts=args.allow_host)
    except KeyboardInterrupt:
        pass
    return 0


def _audit(args: argparse.Namespace) -> int:
    """Exact Shapley audit of a recorded run's seeds (or of the scripted demo run), recorded as a run of kind `audit`."""
    from esper_lab.audit.command import audit_command

    _set_threads(args)
    return audit_command(args)


def _export(args: argparse.Namespace) -> int:
    """Rebuild a recorded run's organism at a step, compact it to a plain module (no plane),
    check it against the live organism and write it with torch.save."""
    from esper_lab.experiments.replay import ReplayError
    from esper_lab.experiments.runner import REPORTS_DIR
    from esper_lab.export import export_run, summary

    _set_threads(args)
    output = args.output or REPORTS_DIR / "exports"
    try:
        export = export_run(args.root, args.run, output, args.step, args.env, args.episode, args.fossils_only)
    except ReplayError as error:  # an unknown run or episode: bad input, one line
        raise ConfigError(str(error)) from None
    print(summary(export))
    return 0 if export.path is not None else 1


def build_parser() -> argparse.ArgumentParser:
    from esper_lab.config import TASKS  # the names the help lists (every command imports torch anyway)
    from esper_lab.contracts import SurfaceDensity
    from esper_lab.experiments.packs import pack_names

    task_help = "the task: " + ", ".join(TASKS) + " (default digits_cnn)"
    density_help = "surface density: " + ", ".join(d.name.lower() for d in SurfaceDensity) + " (default a0: the fewest surfaces)"
    parser = argparse.ArgumentParser(prog="esper-lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    tour = commands.add_parser("tour", help="run the organism tour notebook headlessly")
    tour.add_argument("--preset", choices=("smoke", "full"), default="full", help="smoke: seconds; full: the tour's real budget")
    tour.add_argument("--output", default=None, help="the executed notebook (default under ./reports)")
    tour.set_defaults(handler=_tour)

    run = commands.add_parser("run", help="play episodes with a baseline policy (heuristic or random)")
    run.add_argument("--task", default="digits_cnn", help=task_help)
    run.add_argument("--density", default="a0", help=density_help)
    run.add_argument("--policy", choices=("heuristic", "random", "static"), default="heuristic", help="static: always WAIT")
    run.add_argument("--episodes", type=_at_least(1), default=1, help="episodes per env")
    run.add_argument("--envs", type=_at_least(1), default=1, help="environments played side by side")
    run.add_argument("--workers", type=_at_least(0), default=None, help=WORKERS_HELP)
    run.add_argument("--threads", type=_at_least(1), default=1, help=THREADS_HELP)
    run.add_argument("--episode-length", type=_at_least(1), default=None, help=EPISODE_LENGTH_HELP)
    run.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    run.add_argument("--cifar-folder", default=None, help=CIFAR_HELP)
    run.add_argument("--device", default=None, help=DEVICE_HELP)
    run.add_argument("--telemetry", default="telemetry", help="telemetry root folder (Parquet parts)")
    run.add_argument("--cohort", default="default", help="cohort name the run is filed under")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    run.set_defaults(handler=_run)

    notebooks = commands.add_parser("notebooks", help="copy the curated notebooks into a folder, to open in JupyterLab")
    notebooks.add_argument("destination", help="folder to copy them into (created if missing)")
    notebooks.add_argument("--force", action="store_true", help="replace notebooks there that differ from the shipped ones")
    notebooks.set_defaults(handler=_notebooks)

    pack = commands.add_parser("pack", help="run an experiment pack as papermill cohorts, or write its report")
    pack.add_argument("action", choices=("run", "report"), help="run: execute the members (then the report); report: judge what is recorded")
    pack.add_argument("pack", help="pack name (" + ", ".join(pack_names()) + ") or a path to a pack TOML file")
    pack.add_argument("--preset", default="smoke", help="a preset of the pack (smoke, full)")
    pack.add_argument("--jobs", type=_at_least(1), default=1, help="members in parallel: the workers of the local Dask cluster")
    pack.add_argument(
        "--scheduler",
        default=None,
        metavar="tcp://HOST:PORT",
        help="run the members on this Dask cluster instead (its workers must see --telemetry and --reports)",
    )
    pack.add_argument("--telemetry", default=None, help="telemetry root (default ./telemetry/<pack>, under the working folder)")
    pack.add_argument("--reports", default=None, help="folder for the members' notebooks and the report (default ./reports)")
    pack.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="extra notebook parameter")
    pack.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP + "; applied to every member")
    pack.add_argument("--device", default=None, help=DEVICE_HELP + "; applied to every member (as --set device=...)")
    pack.add_argument("--report", action=argparse.BooleanOptionalAction, default=True, help="write the report after a run")
    pack.set_defaults(handler=_pack)

    train = commands.add_parser("train", help="train the PPO policy (flat or slot transformer encoder)")
    train.add_argument("--task", default="digits_cnn", help=task_help)
    train.add_argument("--density", default="a0", help=density_help)
    train.add_argument("--encoder", choices=("flat", "slot_transformer"), default=None, help="the policy's slot encoder (default flat)")
    train.add_argument("--recurrent", action="store_true", default=None, help="add an LSTM over the encoder's pooled vector")
    train.add_argument("--envs", type=_at_least(1), default=8, help="environments per PPO round (one episode each)")
    train.add_argument("--workers", type=_at_least(0), default=None, help=WORKERS_HELP)
    train.add_argument("--threads", type=_at_least(1), default=1, help=THREADS_HELP)
    train.add_argument("--rounds", type=_at_least(1), default=10, help="total PPO updates (a resumed run continues to this)")
    train.add_argument("--episode-length", type=_at_least(1), default=None, help=EPISODE_LENGTH_HELP)
    train.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    train.add_argument("--cifar-folder", default=None, help=CIFAR_HELP)
    train.add_argument("--device", default=None, help=DEVICE_HELP)
    train.add_argument("--checkpoint", default=None, help="write policy+optimizer+normaliser here after every update")
    train.add_argument("--resume", action="store_true", help="continue from --checkpoint exactly where it stopped")
    train.add_argument("--telemetry", default="telemetry", help="telemetry root folder (Parquet parts)")
    train.add_argument("--cohort", default="default", help="cohort name the run is filed under")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="play a saved member policy again on any episodes, host or data (recorded as eval runs)")
    evaluate.add_argument("policy", help="a saved policy file: <telemetry>/cohort=<c>/run=<training run>/policy.pt of a pack member")
    episodes = evaluate.add_mutually_exclusive_group()
    episodes.add_argument(
        "--episodes", type=_at_least(1), default=None, help="play the run's first N held-out episodes (default: the saved eval_episodes)"
    )
    episodes.add_argument("--seeds", type=_seed_list, default=None, metavar="S1,S2,...", help="play these episode seeds instead")
    evaluate.add_argument("--arms", default=GREEDY, help=f"comma-separated arms to play (default {GREEDY}; e.g. {GREEDY},{CONTROL})")
    evaluate.add_argument("--telemetry", default="telemetry", help="telemetry root the eval runs are recorded in (default ./telemetry)")
    evaluate.add_argument(
        "--cohort", default=None, help="cohort the eval runs are filed under (default: the saved run's; in the pack's root, its report reads them)"
    )
    evaluate.add_argument(
        "--name", default="reeval", help="eval runs are <training run>-<name>-<arm> (default reeval; a member's own: eval); a new name each time"
    )
    evaluate.add_argument("--threads", type=_at_least(1), default=1, help=THREADS_HELP)
    evaluate.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a saved setting, repeatable, e.g. host='{widths=[10,20]}', data_fraction=0.5, workers=0 (not policy.*)",
    )
    evaluate.set_defaults(handler=_evaluate)

    dashboard = commands.add_parser("dashboard", help="serve the Panel dashboards over a telemetry root")
    dashboard.add_argument("--root", default="telemetry", help="telemetry root folder")
    dashboard.add_argument("--port", type=int, default=5006, help="port to serve on")
    dashboard.add_argument("--address", default="127.0.0.1", help="interface to listen on (loopback by default)")
    dashboard.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests naming this host (the address and localhost always are)",
    )
    dashboard.set_defaults(handler=_dashboard)
    audit = commands.add_parser("audit", help="exact full-retrain Shapley credit of a recorded run's seeds (esper_lab.audit)")
    audit.add_argument("run", nargs="?", help="the recorded run to audit (omit with --demo)")
    audit.add_argument("--root", default="telemetry", help="telemetry root holding the run; the audit is recorded there")
    audit.add_argument("--demo", default=None, metavar="PRESET", help="record the scripted probe-prune demo run (smoke or full), then audit it")
    audit.add_argument("--step", type=_at_least(1), default=None, help="audit the seeds live at this step (default: the episode's last)")
    audit.add_argument("--env", type=_at_least(0), default=0, help=ENV_HELP)
    audit.add_argument("--episode", type=_at_least(0), default=0, help=EPISODE_HELP)
    audit.add_argument("--slots", default=None, help="comma-separated slots to audit (default: every seed live at --step)")
    audit.add_argument("--replicates", type=_at_least(2), default=None, help="episode seeds per coalition (default 3)")
    audit.add_argument("--max-candidates", type=_at_least(1), default=None, help="refuse more seeds than this (default 3, at most 4)")
    audit.add_argument(
        "--workers", type=_at_least(0), default=0, help="workers of a local Dask cluster training coalitions in parallel (0: in this process)"
    )
    audit.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT", help="train the coalitions on this Dask cluster instead")
    audit.add_argument("--seed", type=_at_least(0), default=0, help="with --demo: the demo run's seed")
    audit.add_argument("--threads", type=_at_least(1), default=1, help=THREADS_HELP)
    audit.set_defaults(handler=_audit)

    export = commands.add_parser("export", help="compact a recorded run's organism at a step into a plain torch module (esper_lab.export)")
    export.add_argument("run", help="the recorded run")
    export.add_argument("--root", default="telemetry", help="telemetry root holding the run")
    export.add_argument("--step", type=_at_least(1), default=None, help="the organism after this step (default: the episode's last)")
    export.add_argument("--env", type=_at_least(0), default=0, help=ENV_HELP)
    export.add_argument("--episode", type=_at_least(0), default=0, help=EPISODE_HELP)
    export.add_argument(
        "--output", default=None, help="a .pt file for torch.save, or a folder to write RUN-envE-epK-stepN.pt in (default ./reports/exports)"
    )
    export.add_argument("--fossils-only", action="store_true", help="refuse an organism with a seed not yet fossilised")
    export.add_argument("--threads", type=_at_least(1), default=1, help=THREADS_HELP)
    export.set_defaults(handler=_export)
    return parser


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning (a corrupt part skipped, say) is one line for the user, not a source listing."""
    print(f"esper-lab: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():  # restored on the way out (main may run inside a caller's process)
            warnings.showwarning = _warn
            return args.handler(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as error:  # bad input: one line, no traceback
        print(f"esper-lab: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the disk is full, a folder is read-only...: what was written stays (the run says failed)
        print(f"esper-lab: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:  # Ctrl-C: one line (a pack run says what it stopped)
        print(f"esper-lab: {str(interrupt) or MemberStatus.INTERRUPTED}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
