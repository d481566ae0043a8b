"""The dashboard pages, each a function of a store and a `Selection`.

Every number drawn comes from one store query method; a page only filters rows to the selected
episode or slot, reshapes them for a plot and formats them. Called without a selection, a page
makes its own and shows its selectors above it, which is how it is used inline in JupyterLab:

    pn.extension(); economy_page(Store("telemetry"))
"""

from __future__ import annotations

import functools

import holoviews as hv
import panel as pn
import polars as pl
from bokeh.models import BasicTicker

from esper_lab.contracts import HEADS, Stage
from esper_lab.dashboards.selection import Selection
from esper_lab.experiments import views
from esper_lab.experiments.frontier import COST_LABELS
from esper_lab.experiments.report import FRONTIER_NOTE, frontier_points, frontier_table
from esper_lab.studies.evidence import held_out
from esper_lab.telemetry.store import Store

hv.renderer("bokeh")  # load the Bokeh backend so `.opts` validates outside a notebook too

SMALL = {"width": 520, "height": 250}
HIGHLIGHT = "#1f77b4"  # the selected cohort; other cohorts are drawn from PALETTE
PALETTE = ("#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
# One fixed colour per lifecycle stage, so swimlanes read the same in every run.
STAGE_COLORS = {
    "DORMANT": "#e8e8e8",
    "GERMINATED": "#9ecae1",
    "TRAINING": "#3182bd",
    "BLENDING": "#fdae6b",
    "HOLDING": "#e6550d",
    "FOSSILIZED": "#31a354",
    "PRUNED": "#de2d26",
    "EMBARGOED": "#756bb1",
    "RESETTING": "#bcbddc",
}
RUN_WIDE_SLOT = -1  # events not tied to a slot (rollbacks, vetoes of run-wide budgets) sit on this lane


def economy_page(store: Store, selection: Selection | None = None) -> pn.Column:
    """Rent & churn economy of one run: costs, reward and active size per step of the selected
    episode (means over envs), budget use with the slots' churn and ROI EMAs (seed 000 Phase 5),
    lifecycle op counts, governor counts and the cohort's outcomes."""
    selection, header = _own(store, selection)

    @_needs_steps
    def body(view):
        cohort, run, _, episode = view
        costs = store.rent_churn(cohort, run).filter(pl.col("episode") == episode)
        economy = store.economy(cohort, run).filter(pl.col("episode") == episode)
        ops = store.lifecycle_op_counts(cohort, run).unpivot(["chosen", "executed"], index="op_name", variable_name="count", value_name="decisions")
        return pn.Column(
            f"### Rent & churn economy — {run} (episode {episode}, mean over envs)",
            pn.Row(
                _lines(costs, "step", {"rent": "C_rent", "churn": "C_churn"}, "rent and churn (unweighted costs)", "cost"),
                _lines(costs, "step", {"reward": "total reward"}, "reward", "reward"),
            ),
            pn.Row(
                _lines(costs, "step", {"forward_params": "in forward", "incubating_params": "incubating"}, "seed parameters", "params"),
                _lines(costs, "step", {"forward_flops": "in forward", "incubating_flops": "incubating"}, "seed FLOPs", "FLOPs"),
            ),
            pn.Row(
                _lines(
                    economy,
                    "step",
                    {"active_param_budget_util": "params", "active_flops_budget_util": "FLOPs"},
                    "budget utilisation",
                    "share of the budget",
                ),
                _lines(
                    economy,
                    "step",
                    {"churn_ema": "churn EMA (mean over slots)", "roi_ema": "ROI EMA (in-forward seeds)"},
                    "churn and ROI (ROI: contribution per 1k params)",
                    "EMA",
                ),
            ),
            pn.Row(
                hv.Bars(ops.to_pandas(), ["op_name", "count"], "decisions").opts(
                    title="lifecycle ops over the run",
                    multi_level=False,
                    xrotation=45,
                    xlabel="",
                    tools=["hover"],
                    width=520,
                    height=320,
                ),
                pn.Column(
                    "**governor (this run)**",
                    _table(store.governor_counts(cohort, run)),
                    "**held-out outcomes (this cohort, per arm)**",
                    _table(store.arm_summary(cohort)),
                ),
            ),
        )

    return pn.Column(*header, pn.bind(body, selection.param.view))


def frontier_page(store: Store, selection: Selection | None = None) -> pn.Column:
    """The first number of every study: each arm's held-out test score against its parameters and
    training FLOPs beside the static frontier (hosts of every width that never grow), and the
    frontier gains table (`experiments.frontier`), for the selected cohort."""
    selection, header = _own(store, selection)
    outcomes = held_out(store)

    def body(cohort):
        mine = outcomes.filter(pl.col("cohort") == cohort) if not outcomes.is_empty() else outcomes
        if mine.is_empty():
            return pn.pane.Markdown(f"### Frontier — cohort {cohort}\n\nNo held-out evaluation episodes in this cohort yet.")
        points = frontier_points(mine)
        plots = [views.frontier(points, cost, f"{cohort}: test score against {label}") for cost, label in COST_LABELS.items()]
        return pn.Column(
            pn.pane.Markdown(f"### Frontier — cohort {cohort}", css_classes=["frontier-caption"]),
            FRONTIER_NOTE,
            hv.Layout(plots).cols(1),
            _table(frontier_table(mine)),
        )

    return pn.Column(*header, pn.bind(body, selection.cohort))


def conv_heavy_page(store: Store, selection: Selection | None = None) -> pn.Column:
    """conv_heavy's share of active seed parameters for the selected cohort: median across seeds
    with the band down to q25, each seed's run, and the other cohorts' medians to compare with."""
    selection, header = _own(store, selection)

    def body(cohort):
        bands = store.conv_heavy_share_bands()
        runs = store.conv_heavy_share(cohort)
        mine = bands.filter(pl.col("cohort") == cohort).to_pandas()
        share = "conv_heavy_forward_param_share"
        paths = [part.select("run_step", share).to_numpy() for part in runs.partition_by("run_id")]
        others = bands.filter(pl.col("cohort") != cohort).partition_by("cohort", as_dict=True)
        plot = hv.Overlay(
            [
                hv.Area(mine, "run_step", [("q25", "share"), "q75"], label=f"{cohort} q25–q75").opts(color=HIGHLIGHT, alpha=0.25),
                hv.Path(paths, ["run_step", share], label=f"{cohort} runs (seeds)").opts(color=HIGHLIGHT, alpha=0.35, line_width=1, show_legend=True),
                hv.Curve(mine, "run_step", ("median", "share"), label=f"{cohort} median").opts(color=HIGHLIGHT, line_width=3),
                hv.Scatter(mine, "run_step", [("median", "share"), "q25", "q75", "runs", "episode", "step"]).opts(
                    color=HIGHLIGHT, size=6, tools=["hover"]
                ),
                *(
                    hv.Curve(part.to_pandas(), "run_step", ("median", "share"), label=f"{other} median").opts(color=color, line_dash="dashed")
                    for ((other,), part), color in zip(others.items(), PALETTE)
                ),
            ]
        ).opts(
            title=f"conv_heavy share — {cohort}",
            xlabel="env step of the run",
            ylabel="conv_heavy share of in-forward seed params",
            xticks=_integers(),
            legend_position="right",
            width=900,
            height=360,
        )
        return pn.Column(
            pn.pane.Markdown(f"### conv_heavy share — cohort {cohort}", css_classes=["conv-heavy-caption"]),
            "Median across the cohort's training runs (seeds) per env step, shaded from the 25th to the 75th "
            "percentile; thin lines are single runs, dashed lines the other cohorts' medians.",
            plot,
            "**Held-out outcomes per cohort and arm (median, q25, q75 across evaluation episodes)**",
            _table(store.arm_summary()),
        )

    return pn.Column(*header, pn.bind(body, selection.cohort))


def swimlane_page(store: Store, selection: Selection | None = None) -> pn.Column:
    """Lifecycle swimlane of one env and episode: the stage of every surface per step, with the
    events (transitions, level changes, vetoes) marked where they happened."""
    selection, header = _own(store, selection)

    @_needs_steps
    def body(view):
        cohort, run, env, episode = view
        slots = store.slot_series(cohort, run, env, episode)
        events = store.event_log(cohort, run, env, episode).with_columns(pl.col("slot").fill_null(RUN_WIDE_SLOT))
        cells = slots.with_columns(  # one box per (step, slot), drawn around its integer position
            x0=pl.col("step") - 0.5, x1=pl.col("step") + 0.5, y0=pl.col("slot") - 0.4, y1=pl.col("slot") + 0.4
        )
        by_stage = cells.partition_by("stage_name", as_dict=True)
        hover = ["surface", "stage_name", "blueprint_name", "step", "alpha", "internal_level"]
        lanes = [
            hv.Rectangles(by_stage[(s.name,)].to_pandas(), ["x0", "y0", "x1", "y1"], hover, label=s.name).opts(
                color=STAGE_COLORS[s.name], tools=["hover"]
            )
            for s in Stage
            if (s.name,) in by_stage
        ]
        marks = hv.Scatter(events.to_pandas(), "step", ["slot", "kind_name", "name", "value"], label="events")
        ticks = list(slots.unique("slot").sort("slot").select("slot", "surface").iter_rows())
        if (events["slot"] == RUN_WIDE_SLOT).any():
            ticks.insert(0, (RUN_WIDE_SLOT, "run-wide"))
        plot = hv.Overlay([*lanes, marks.opts(marker="triangle", size=11, color="black", tools=["hover"])]).opts(
            title="stage per surface and step (triangles: events)",
            xlabel="step",
            ylabel="",
            xticks=_integers(),
            yticks=ticks,
            legend_position="right",
            width=900,
            height=120 + 45 * len(ticks),
        )
        return pn.Column(
            f"### Lifecycle swimlane — {run}, env {env}, episode {episode}",
            plot,
            "**events**",
            _table(events.drop("cohort", "run_id", "env", "episode")),
        )

    return pn.Column(*header, pn.bind(body, selection.param.view))


def decay_page(store: Store, selection: Selection | None = None) -> pn.Column:
    """Emrakul's work in one env and episode (seed 004 Stage 2): each phage's debt and sedation per
    step (the immune ledger; a scar keeps its slot's line, at sedation 1), every judged probe with
    its baseline, drop and recovery, and the probe, lysis and scar events."""
    selection, header = _own(store, selection)

    @_needs_steps
    def body(view):
        cohort, run, env, episode = view
        ledger = store.immune_ledger(cohort, run, env, episode)
        probes = store.probes(cohort, run).filter((pl.col("env") == env) & (pl.col("episode") == episode))
        events = store.event_log(cohort, run, env, episode).filter(pl.col("kind_name").is_in(["PROBE", "LYSIS"]))
        if ledger.is_empty():
            return pn.Column(
                f"### Decay — {run}, env {env}, episode {episode}",
                "No phage was in Emrakul's custody in this episode (nothing fossilised, or Emrakul off).",
            )
        phages = ledger["phage"].unique(maintain_order=True).to_list()
        by_phage = {name: ledger.filter(pl.col("phage") == name) for name in phages}

        def plot(y: str, title: str) -> hv.Overlay:
            lines = [_line(frame, "step", y, name, color) for (name, frame), color in zip(by_phage.items(), (HIGHLIGHT, *PALETTE * 2))]
            return hv.Overlay(lines).opts(title=title, ylabel=y, xticks=_integers(), legend_position="right", **SMALL)

        return pn.Column(
            f"### Decay — {run}, env {env}, episode {episode}",
            pn.Row(plot("debt", "debt per phage (rent paid minus contribution)"), plot("sedation", "sedation mask per phage")),
            "**judged probes** (recovery: steps until the metric was back within the harm tolerance of the baseline)",
            _table(probes.drop("cohort", "run_id", "env", "episode")),
            "**probe, lysis and scar events**",
            _table(events.drop("cohort", "run_id", "env", "episode")),
        )

    return pn.Column(*header, pn.bind(body, selection.param.view))


def policy_health_page(store: Store, selection: Selection | None = None) -> pn.Column:
    """Policy health of one run: entropy per head (decision time), PPO approx KL and clip
    fraction per update, and the invalid-action rate (near zero when masks are honoured)."""
    selection, header = _own(store, selection)

    @_needs_steps
    def body(view):
        cohort, run, _, _ = view
        entropy = store.policy_entropy(cohort, run).filter(pl.col("entropy").is_not_null())
        updates = store.rows("updates", cohort, run)
        invalid = store.invalid_action_rate(cohort, run, by_episode=True)
        total = store.invalid_action_rate(cohort, run).row(0, named=True)
        if entropy.is_empty() and updates.is_empty():
            return pn.pane.Markdown(f"### Policy health — {run}\n\nA baseline policy: no entropy, no PPO updates recorded.")
        heads = hv.Overlay(
            [
                _line(entropy.filter(pl.col("head") == head), "episode", "entropy", head, color)
                for head, color in zip(HEADS, (HIGHLIGHT, *PALETTE))
                if head in entropy["head"]  # the heads this policy decides with
            ]
        ).opts(title="entropy per head (mean per episode)", ylabel="entropy (nats)", xticks=_integers(), legend_position="right", **SMALL)
        rate = total["invalid_action_rate"]
        summary = (
            f"invalid-action rate over the run: **{rate:.3f}** ({total['invalid']} of {total['masked_decisions']} masked decisions)"
            if rate is not None
            else "no action masks recorded"
        )
        return pn.Column(
            f"### Policy health — {run}",
            summary,
            pn.Row(heads, _lines(invalid, "episode", {"invalid_action_rate": "invalid-action rate"}, "invalid-action rate", "rate")),
            pn.Row(
                _lines(updates, "update", {"approx_kl": "approx KL"}, "PPO approx KL per update", "KL"),
                _lines(updates, "update", {"clip_fraction": "clip fraction"}, "PPO clip fraction per update", "fraction"),
            ),
        )

    return pn.Column(*header, pn.bind(body, selection.param.view))


def slot_inspector_page(store: Store, selection: Selection | None = None) -> pn.Column:
    """One surface over the selected episode: ladder level, alpha, delta/output norms and the
    active parameters rent charges for, with its stage, blueprint and events per step."""
    selection, header = _own(store, selection)

    @_needs_steps
    def body(view, slot):
        cohort, run, env, episode = view
        series = store.slot_series(cohort, run, env, episode).filter(pl.col("slot") == slot)
        events = store.event_log(cohort, run, env, episode).filter(pl.col("slot") == slot)
        return pn.Column(
            f"### Slot inspector — {series['surface'][0]} (uid {series['surface_uid'][0]}), env {env}, episode {episode}",
            pn.Row(
                _lines(series, "step", {"internal_level": "level", "max_level": "max level"}, "ladder level", "level"),
                _lines(series, "step", {"alpha": "alpha", "alpha_target": "alpha target"}, "alpha", "alpha"),
            ),
            pn.Row(
                _lines(series, "step", {"delta_l2_norm": "delta", "output_l2_norm": "output"}, "L2 norms", "L2 norm"),
                _lines(series, "step", {"seed_param_count_active": "params"}, "seed params (rent: alpha x params)", "params"),
            ),
            "**per step**",
            _table(
                series.select(
                    "step",
                    "stage_name",
                    "blueprint_name",
                    "alpha",
                    "internal_level",
                    "in_forward",
                    "contribution",
                    "seed_param_count_active",
                    "seed_flops_active_est",
                )
            ),
            "**events**",
            _table(events.select("step", "seq", "kind_name", "name", "value")),
        )

    return pn.Column(*header, selection.surface, pn.bind(body, selection.param.view, selection.param.slot))


def audit_page(store: Store, selection: Selection | None = None) -> pn.Column:
    """Shapley audits of the selected run (or the selected audit itself): every audited seed's
    exact credit phi with its 95% interval beside the online probe's contribution, its v(S) table's
    leave-one-out, the run's decision about it (fate), and the run's lifecycle events on it."""
    selection, header = _own(store, selection)

    def body(view):
        cohort, run, _, _ = view
        audits = store.audits(cohort, audited_run=run)
        if audits.is_empty():  # the selected run may be an audit
            audits = store.audits(cohort, run)
        if audits.is_empty():
            return pn.pane.Markdown(
                f"### Shapley audits — {run}\n\nNo audit of this run yet (`esper-lab audit {run} --root ROOT`).", css_classes=["audit-caption"]
            )
        shown = [pn.pane.Markdown(f"### Shapley audits — {audits['audited_run'][0]}", css_classes=["audit-caption"])]
        for (audit_id,), rows in audits.partition_by("run_id", as_dict=True, maintain_order=True).items():
            first = rows.row(0, named=True)
            seeds = rows.with_columns(
                seed=pl.format("slot {} · {}", "slot", pl.col("blueprint_name").str.to_lowercase()),
                below=pl.col("phi") - pl.col("phi_low"),
                above=pl.col("phi_high") - pl.col("phi"),
                decision=pl.when(pl.col("fate_name").is_null()).then(pl.lit("kept")).otherwise(pl.format("{} at step {}", "fate_name", "fate_step")),
            )
            data = seeds.to_pandas()
            plot = hv.Overlay(
                [
                    hv.ErrorBars(data, "seed", ["phi", "below", "above"]).opts(color=HIGHLIGHT, line_width=2),
                    hv.Scatter(data, "seed", ["phi", "phi_low", "phi_high", "loo", "decision"], label="Shapley φ (95% CI)").opts(
                        color=HIGHLIGHT, size=9, tools=["hover"]
                    ),
                    hv.Scatter(data, "seed", [("contribution", "phi"), "decision"], label="online probe").opts(
                        color=PALETTE[0], marker="diamond", size=11, tools=["hover"]
                    ),
                    hv.HLine(0).opts(color="grey", line_dash="dashed"),
                ]
            ).opts(
                title=f"Shapley φ per seed — step {first['step']}",
                xlabel="",
                ylabel=f"credit ({first['metric']})",
                legend_position="right",
                width=700,
                height=320,
            )
            events = store.event_log(run=first["audited_run"], env=first["env"], episode=first["episode"]).filter(
                pl.col("slot").is_in(rows["slot"].implode()) & (pl.col("step") >= rows["germinated_step"].min())
            )
            shown += [
                f"**audit {audit_id}**: env {first['env']}, episode {first['episode']}, the first {first['step']} steps retrained for "
                f"each of the {2 ** first['candidates']} coalitions × {first['replicates']} replicates ({first['wall_seconds']:.0f} s)",
                plot,
                _table(seeds.select("slot", "blueprint_name", "germinated_step", "phi", "phi_low", "phi_high", "loo", "contribution", "decision")),
                "**the run's lifecycle events on these seeds**",
                _table(events.select("step", "slot", "kind_name", "name", "value")),
            ]
        return pn.Column(*shown)

    return pn.Column(*header, pn.bind(body, selection.param.view))


def _needs_steps(body):
    """A page body that shows one run's steps; for a run without any it says so, rather than
    failing and leaving the previous run on screen."""

    @functools.wraps(body)
    def guarded(view, *rest):
        if view[3] is None:
            return pn.pane.Markdown(
                f"### {view[1]}\n\nThis run recorded no steps (it ended before its first): nothing to show.", css_classes=["no-steps"]
            )
        return body(view, *rest)

    return guarded


def _own(store: Store, selection: Selection | None) -> tuple[Selection, list]:
    """The app's shared selection, or a page's own one shown above it (inline use)."""
    if selection is not None:
        return selection, []
    selection = Selection(store)
    return selection, [selection.run_widgets()]


def _lines(frame: pl.DataFrame, x: str, columns: dict[str, str], title: str, ylabel: str) -> hv.Overlay:
    """One line per column in a small plot; a legend (outside, never over the data) only for several."""
    lines = [_line(frame, x, column, label, color) for (column, label), color in zip(columns.items(), (HIGHLIGHT, *PALETTE))]
    return hv.Overlay(lines).opts(title=title, ylabel=ylabel, xticks=_integers(), show_legend=len(lines) > 1, legend_position="right", **SMALL)


def _line(frame: pl.DataFrame, x: str, y: str, label: str, color: str) -> hv.Overlay:
    """A curve with point markers, so a run with a single step or update still shows its value."""
    data = frame.select(x, y).to_pandas()  # HoloViews' polars (narwhals) path fails on some elements
    points = hv.Scatter(data, x, y, label=label).opts(color=color, size=6, tools=["hover"])
    return hv.Curve(data, x, y, label=label).opts(color=color) * points


def _integers() -> BasicTicker:
    """Ticks for steps, episodes and updates (never 1.5); a new one per plot, as a Bokeh model
    belongs to one document and every browser session is a document."""
    return BasicTicker(min_interval=1)


def _table(frame: pl.DataFrame) -> pn.pane.DataFrame:
    return pn.pane.DataFrame(frame.to_pandas(), index=False, float_format="{:.4g}".format, na_rep="–", max_rows=40)
