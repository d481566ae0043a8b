"""The pack report: one static HTML page per (pack, preset, telemetry root), readable offline.

It says what it is (pack, preset, budget, seeds, held-out episodes, code version, wall time, runs
by kind and status), then leads with the static frontier (every arm's test score against its
parameters and training FLOPs beside static hosts of every width, and its frontier gains:
`frontier`), judges the pack's exit gates on held-out paired episodes with their 95% CIs, shows
every arm's outcomes against the static host on the same episodes, the training behaviour per
cohort, and plots the learning curves and the outcome distributions. Every number
comes from a store query or `stats`; this module arranges them.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from esper_lab.contracts import ARMS, CONTROL, STATIC_ARMS, RunKind, RunStatus
from esper_lab.experiments.frontier import COST_LABELS, COSTS
from esper_lab.experiments.packs import Pack
from esper_lab.experiments.stats import MIN_CI_EPISODES, Estimate, estimate, median, paired_estimate
from esper_lab.studies import study_gates
from esper_lab.studies.evidence import Evidence, Gate, evidence
from esper_lab.telemetry import Store

VERDICT_COLOURS = {"PASS": "#1a7f37", "FAIL": "#cf222e", "INCONCLUSIVE": "#9a6700"}
PAGE_WIDTH = 1100  # px: plots and scrolling tables share it
CSS = (
    """
.esper-table { overflow-x: auto; max-width: %dpx; }
.esper-table table { border-collapse: collapse; font-size: 13px; }
.esper-table th, .esper-table td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; white-space: nowrap; }
.esper-table td.evidence { white-space: normal; min-width: 420px; }
.verdict { font-weight: bold; color: white; border-radius: 3px; padding: 1px 6px; }
"""
    % PAGE_WIDTH
)


def report_path(reports_dir: Path, pack: Pack, preset: str, root: Path) -> Path:
    """`<reports>/<pack>/<root folder>-<preset>.html`: one page per (pack, preset, root)."""
    return Path(reports_dir) / pack.name / f"{Path(root).resolve().name}-{preset}.html"


@dataclass(frozen=True)
class Report:
    """What a report page shows, before it is drawn (the page arranges exactly these)."""

    header: str  # markdown: what this is
    frontier: pl.DataFrame  # `frontier_table`
    gates: list[Gate]
    outcomes: pl.DataFrame  # `outcome_table`
    behaviour: pl.DataFrame  # `Store.cohort_behaviour`
    evidence: Evidence


def build_report(pack: Pack, root: str | Path, preset: str) -> Report:
    """The report of `preset`'s runs under `root` (only those: a store scoped to the preset)."""
    store = Store(root, preset=preset)
    runs = store.runs()
    if runs.is_empty():
        raise ValueError(f"no runs of preset {preset!r} under {root}: run `esper-lab pack run {pack.name} --preset {preset}` first")
    ev = evidence(store)
    gates = study_gates(pack.study)(pack, ev) if not ev.outcomes.is_empty() else []
    outcomes = outcome_table(ev.outcomes) if not ev.outcomes.is_empty() else pl.DataFrame()
    frontier = frontier_table(ev.outcomes) if not ev.outcomes.is_empty() else pl.DataFrame()
    return Report(_header(pack, preset, root, store, runs), frontier, gates, outcomes, store.cohort_behaviour(), ev)


def write_report(pack: Pack, root: str | Path, preset: str, path: Path) -> Path:
    """Write `path` (HTML, every resource inlined) from the runs of `preset` under `root`."""
    import holoviews as hv
    import panel as pn

    from esper_lab.experiments.offline import save_offline

    hv.extension("bokeh")
    report = build_report(pack, root, preset)
    page = pn.Column(
        pn.pane.HTML(f"<style>{CSS}</style>"),
        pn.pane.Markdown(report.header, width=PAGE_WIDTH),
        pn.pane.Markdown(f"## The static frontier: test score against cost\n\n{FRONTIER_NOTE}", width=PAGE_WIDTH),
        pn.pane.HoloViews(_frontier_plots(report.evidence.outcomes), width=PAGE_WIDTH),
        pn.pane.HTML(_table(report.frontier), width=PAGE_WIDTH),
        pn.pane.Markdown(f"## Exit gates ({pack.study}), on held-out episodes", width=PAGE_WIDTH),
        pn.pane.HTML(_gate_table(report.gates) if report.gates else "<p>No held-out evaluation episodes yet: no verdicts.</p>", width=PAGE_WIDTH),
        pn.pane.Markdown("## Held-out outcomes: every arm against the static host on the same episodes", width=PAGE_WIDTH),
        pn.pane.HTML(_table(report.outcomes), width=PAGE_WIDTH),
        pn.pane.Markdown("## Training behaviour (completed training runs)", width=PAGE_WIDTH),
        pn.pane.HTML(_table(report.behaviour), width=PAGE_WIDTH),
        pn.pane.HoloViews(_plots(Store(root, preset=preset), report.evidence.outcomes), width=PAGE_WIDTH),
    )
    return save_offline(page, path, title=f"{pack.title} · {preset}")


FRONTIER_NOTE = (
    "Every arm played the same held-out episodes; the score is read on the **test split**, which no reward or decision "
    "reads (accuracy in points, or minus the loss). The dashed line is the static frontier: hosts of every width that "
    "never grow (`static`, `static_w125`, `static_w150`, `static_w200`). **Frontier gain** is an arm's score minus the "
    "frontier's at the arm's own cost on the same episode (parameters in forward at the end, or training FLOPs over "
    "the episode); above 0, growth bought more than width would have at that price. Median over episodes with its "
    "95% cluster-bootstrap CI; across seeds, the median and q25 of each seed's mean (seed 004: reliability, not champions)."
)


def frontier_points(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Per cohort, arm and cost: the mean cost, the mean test score with its CI (`views.frontier`)."""
    rows = []
    for (cohort, name), frame in outcomes.drop_nulls("score").partition_by("cohort", "arm", as_dict=True).items():
        score = estimate(frame, "score")
        for cost, column in COSTS.items():
            rows.append(
                {
                    "cohort": cohort,
                    "arm": name,
                    "static": name in STATIC_ARMS,
                    "cost_name": cost,
                    "cost": float(frame[column].mean()),
                    "score": score.value,
                    "low": score.low,
                    "high": score.high,
                }
            )
    return pl.DataFrame(rows)


def frontier_table(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Per cohort and arm: cost (params in forward at the end, training GFLOPs), the test score and
    its area under the episode's test curve, and the frontier gain against params and FLOPs:
    median over episodes with its CI, then median and q25 across seeds of each seed's mean."""
    rows = []
    for cohort in sorted(set(outcomes["cohort"])):
        for arm in ARMS:
            frame = outcomes.filter((pl.col("cohort") == cohort) & (pl.col("arm") == arm))
            if frame.is_empty():
                continue
            row = {
                "cohort": cohort,
                "arm": arm,
                "episodes": frame.height,
                "seeds": frame["seed"].n_unique(),
                "params": f"{frame['params_total'].mean():,.0f}",
                "train GFLOPs": f"{frame['train_flops'].mean() / 1e9:.3g}",
                "test score": _fmt(estimate(frame, "score")),
                "test AUC": _fmt(estimate(frame, "auc")),
            }
            for cost in COSTS:
                column = f"frontier_gain_{cost}"
                row[f"frontier gain vs {cost} (median)"] = _fmt(estimate(frame, column, statistic=median))
                seeds = frame.drop_nulls(column).group_by("seed").agg(pl.col(column).mean())[column]
                row[f"vs {cost}: seeds' median, q25"] = "–" if seeds.is_empty() else f"{seeds.median():.3g}, {seeds.quantile(0.25):.3g}"
            rows.append(row)
    return pl.DataFrame(rows)


def outcome_table(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Per cohort and arm: episodes, seeds, the test score (accuracy points, or minus the loss, on the test split),
    the paired gain over the static host (mean and median, with CIs), return, in-forward params
    and conv_heavy share, each a mean over held-out episodes with its CI where it is a claim."""
    rows = []
    for cohort in sorted(set(outcomes["cohort"])):
        static = outcomes.filter((pl.col("cohort") == cohort) & (pl.col("arm") == CONTROL))
        for arm in ARMS:
            frame = outcomes.filter((pl.col("cohort") == cohort) & (pl.col("arm") == arm))
            if frame.is_empty():
                continue
            gain = paired_estimate(frame, static, "score") if arm != CONTROL else None
            typical = paired_estimate(frame, static, "score", statistic=median) if arm != CONTROL else None
            rows.append(
                {
                    "cohort": cohort,
                    "arm": arm,
                    "episodes": frame.height,
                    "seeds": frame["seed"].n_unique(),
                    "test score": _fmt(estimate(frame, "score")),
                    "gain vs static (mean)": _fmt(gain),
                    "gain vs static (median)": _fmt(typical),
                    "return": _fmt(estimate(frame, "episode_return")),
                    "return vs static": _fmt(paired_estimate(frame, static, "episode_return") if arm != CONTROL else None),
                    "in-forward params": f"{frame['forward_params'].mean():.0f}",
                    "conv_heavy share": f"{frame['conv_heavy_share'].mean():.3f}",
                }
            )
    return pl.DataFrame(rows)


def _fmt(e: Estimate | None) -> str:
    if e is None:
        return "–"
    return f"{e.value:.3g} (n={e.n}, no CI)" if e.n < MIN_CI_EPISODES else f"{e.value:.3g} [{e.low:.3g}, {e.high:.3g}]"


def _header(pack: Pack, preset: str, root: str | Path, store: Store, runs: pl.DataFrame) -> str:
    budget = ", ".join(f"{k} {v}" for k, v in pack.presets[preset].items() if not isinstance(v, dict))
    shas = sorted({f"{r['git_sha'][:10]}{'+dirty' if r['git_dirty'] else ''}" for r in runs.iter_rows(named=True) if r["git_sha"]})
    started, ended = runs["started_at"].min(), runs["ended_at"].max()
    wall = f"{(ended - started).total_seconds() / 60:.1f} min (first run start to last run end)" if ended is not None else "still running"
    status = ", ".join(f"{r['kind']} {r['status']}: {r['runs']}" for r in store.run_status_counts().iter_rows(named=True))
    bad = ", ".join(map(str, store.bad_parts))
    skipped = f"\n\n**{len(store.bad_parts)} unreadable telemetry part(s) skipped**: {bad}" if store.bad_parts else ""
    return (
        f"# {pack.title}\n\n**Preset `{preset}`** ({budget}). Telemetry root `{Path(root).resolve()}`. "
        f"Control cohort **{pack.control}**; held-out arms paired on each evaluation episode against **{CONTROL}** "
        f"(always WAIT). Code version {', '.join(shas) or 'unknown'}. Wall time {wall}.\n\n"
        f"Runs by kind and status (only completed runs count in the tables): {status}.{skipped}\n\n"
        "Every interval is a 95% two-stage cluster-bootstrap CI (training seeds, then episodes); a gate passes "
        "only when its whole interval does, fails when none of it does, and is INCONCLUSIVE otherwise."
    )


def _gate_table(gates: list[Gate]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(g.name)}</td><td>{html.escape(g.cohort)}</td>"
        f"<td><span class='verdict' style='background:{VERDICT_COLOURS[g.verdict]}'>{g.verdict}</span></td>"
        f"<td class='evidence'>{html.escape(g.evidence)}</td></tr>"
        for g in sorted(gates, key=lambda g: (g.name, g.cohort))
    )
    return f"<div class='esper-table'><table><tr><th>gate</th><th>cohort</th><th>verdict</th><th>evidence</th></tr>{rows}</table></div>"


def _table(frame: pl.DataFrame) -> str:
    """A frame as an HTML table that scrolls sideways inside the page when it is wide."""
    if frame.is_empty():
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in frame.iter_rows())
    return f"<div class='esper-table'><table><tr>{head}</tr>{body}</table></div>"


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _frontier_plots(outcomes: pl.DataFrame):
    import holoviews as hv

    from esper_lab.experiments import views

    points = frontier_points(outcomes) if not outcomes.is_empty() else pl.DataFrame(schema={"cost_name": pl.String})
    return hv.Layout([views.frontier(points, cost, f"test score against {label}") for cost, label in COST_LABELS.items()]).cols(1)


def _plots(store: Store, outcomes: pl.DataFrame):
    """Learning curves (median across seeds with the q25-q75 band, per cohort) and the paired
    gain over the static host per held-out episode (per cohort and arm)."""
    import holoviews as hv

    from esper_lab.experiments import views

    training = store.runs(kind=RunKind.PPO).filter(pl.col("status") == RunStatus.COMPLETED).select("run_id")
    curves = store.learning_curve().join(training, on="run_id")
    panels = [
        views.seed_bands(curves, "episode_return", title="training return per episode (median, q25-q75 across seeds)"),
        views.seed_bands(curves, "wait_share", title="WAIT share of decisions"),
        views.seed_bands(curves, "churn", title="C_churn per training episode"),
        views.seed_bands(curves, "forward_params", title="in-forward seed params"),
        views.seed_bands(curves, "entropy_op", title="op-head entropy (nats)"),
    ]
    if not outcomes.is_empty():
        panels.append(views.gain_boxes(outcomes.filter(pl.col("arm") != CONTROL)))
    return hv.Layout(panels).cols(2)
