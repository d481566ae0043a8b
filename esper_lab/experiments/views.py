"""Plot helpers the notebooks share: thin HoloViews wrappers over `Store` query frames.

Each function takes a frame as a store query returns it and only draws it (or lays it out as a
table). Nothing here computes a result (DESIGN rule 5: every number comes from a store query); a
helper picks columns, names enum values, filters rows and sets plot options, and `budget` spells
out a run's configured budget. An empty frame gives an empty panel whose title says so, because
short smoke runs often have nothing to show (no ladder germinated, no grow yet).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import holoviews as hv
import pandas as pd
import polars as pl

from esper_lab.contracts import Blueprint, Subtarget

if TYPE_CHECKING:
    from esper_lab.experiments.settings import Settings

WIDTH, HEIGHT = 460, 280  # one panel; two side by side fit a notebook column
WIDE = 2 * WIDTH  # a panel on its own row (per-slot timelines, op bars of several cohorts)
MULTI_LADDERS = [int(b) for b in Blueprint if b.is_multi_ladder]


def _pandas(frame: pl.DataFrame) -> pd.DataFrame:
    """pandas for HoloViews, text columns as plain objects: HoloViews reshapes value columns into
    grids (HeatMap), which pandas 3's Arrow-backed strings refuse."""
    data = frame.to_pandas()
    text = [c for c, dtype in zip(frame.columns, frame.dtypes) if dtype == pl.String]
    return data.astype({c: object for c in text}) if text else data


def _empty(title: str) -> hv.Curve:
    return hv.Curve([]).opts(title=f"{title}: no rows yet", width=WIDTH, height=HEIGHT)


def over_steps(frame: pl.DataFrame, y: str, by: str = "cohort", title: str | None = None) -> hv.Element:
    """`y` against the step, one curve per `by` value (rent_churn, conv_heavy_share, level_change).

    With a `run_step` column (the run's env-step counter) the x axis runs across episodes;
    otherwise it is the step within an episode, with a slider over episodes when there are several.
    """
    title = title or y
    if frame.is_empty():
        return _empty(title)
    x = "run_step" if "run_step" in frame.columns else "step"
    keys = [by] if x == "run_step" or frame["episode"].n_unique() == 1 else ["episode", by]
    data = hv.Dataset(_pandas(frame.select(*keys, x, y)), kdims=[*keys, x], vdims=[y])
    curves = data.to(hv.Curve, x, y, groupby=keys).overlay(by)
    return curves.opts(
        hv.opts.Curve(width=WIDTH, height=HEIGHT, tools=["hover"], line_width=2),
        hv.opts.NdOverlay(title=title, legend_position="right"),
    )


def op_bars(frame: pl.DataFrame, y: str = "chosen", by: str | None = "cohort", title: str = "ops chosen") -> hv.Element:
    """lifecycle_op_counts: every op (WAIT ... FOCUS_PREV, zeros included) grouped by `by`; with
    `by=None` (one run) the chosen and executed counts side by side (they differ by the vetoes)."""
    if frame.is_empty():
        return _empty(title)
    if by is None:
        by, y = "count", "n"
        frame = frame.unpivot(index="op_name", on=["chosen", "executed"], variable_name=by, value_name=y)
    return hv.Bars(_pandas(frame.select("op_name", by, y)), ["op_name", by], y).opts(
        title=title, width=WIDE, height=HEIGHT, xrotation=60, tools=["hover"], multi_level=False, legend_position="right"
    )


def bars(frame: pl.DataFrame, x: str, y: str, title: str | None = None) -> hv.Element:
    """One bar per row (per-run or per-cohort numbers such as grow_shrink_share or roi)."""
    title = title or y
    if frame.is_empty():
        return _empty(title)
    return hv.Bars(_pandas(frame.select(x, y)), x, y).opts(title=title, width=WIDTH, height=HEIGHT, xrotation=30, tools=["hover"])


def lines(frame: pl.DataFrame, x: str, y: str, by: str, title: str | None = None, logx: bool = False) -> hv.Element:
    """`y` against `x` with points, one line per `by` value (e.g. forward time against slot count)."""
    title = title or y
    if frame.is_empty():
        return _empty(title)
    data = hv.Dataset(_pandas(frame.select(by, x, y)), [by, x], [y])
    return (data.to(hv.Curve, x, y, groupby=by).overlay(by) * data.to(hv.Scatter, x, y, groupby=by).overlay(by)).opts(
        hv.opts.Curve(width=WIDTH, height=HEIGHT, logx=logx, tools=["hover"]),
        hv.opts.Scatter(size=7, logx=logx, tools=["hover"]),
        hv.opts.Overlay(title=title, legend_position="right"),
    )


def head_entropy(frame: pl.DataFrame, by: str = "run_id", title: str = "policy entropy per head") -> hv.Element:
    """policy_entropy: each head's mean entropy per episode, one panel per `by` value (points while
    there is a single episode, lines after). Baseline policies record no entropy."""
    frame = frame.filter(pl.col("entropy").is_not_null())
    if frame.is_empty():
        return _empty(title)
    element = hv.Curve if frame["episode"].n_unique() > 1 else hv.Scatter
    data = hv.Dataset(_pandas(frame.select(by, "head", "episode", "entropy")), [by, "head", "episode"], ["entropy"])
    panels = data.to(element, "episode", "entropy", groupby=[by, "head"]).overlay("head")
    options = (
        hv.opts.Curve(width=WIDTH, height=HEIGHT, tools=["hover"]),
        hv.opts.Scatter(width=WIDTH, height=HEIGHT, size=8, tools=["hover"]),
        hv.opts.NdOverlay(legend_position="right"),
    )
    if len(panels) == 1:
        return panels.last.opts(*options, hv.opts.NdOverlay(title=f"{title}: {panels.keys()[0][0]}"))
    return panels.layout(by).opts(*options, hv.opts.NdLayout(title=title)).cols(2)


def level_bands(frame: pl.DataFrame, title: str = "delta_l2_norm per ladder level") -> hv.Element:
    """delta_norm_by_level: median delta_l2_norm per internal level, with its q25-q75 band, one
    colour per (cohort, ladder blueprint)."""
    if frame.is_empty():
        return _empty(title)
    panels = []
    for (cohort, name), part in frame.sort("internal_level").partition_by(["cohort", "blueprint_name"], as_dict=True).items():
        data = _pandas(part.select("internal_level", "median", "q25", "q75", "n"))
        label = f"{cohort} · {name.lower()}"
        panels.append(hv.Area(data, "internal_level", ["q25", "q75"], label=label).opts(alpha=0.2))
        panels.append(hv.Curve(data, "internal_level", ["median", "n"], label=label).opts(tools=["hover"]))
        panels.append(hv.Scatter(data, "internal_level", ["median", "n"], label=label).opts(size=6, tools=["hover"]))
    return hv.Overlay(panels).opts(title=title, width=WIDTH, height=HEIGHT, legend_position="right", xlabel="internal level", ylabel="delta_l2_norm")


def slot_timeline(series: pl.DataFrame, events: pl.DataFrame | None = None, value: str = "internal_level", title: str | None = None) -> hv.Element:
    """One env's episode as a grid, step x surface (slot_series rows), coloured by `value`, with
    each event (event_log rows: lifecycle transitions, level changes, vetoes) written on its cell.

    Pass the rows of one run, env and episode (both store queries filter on all three)."""
    title = title or f"{value} per surface and step"
    if series.is_empty():
        return _empty(title)
    surfaces = series.select("slot", "surface").unique().sort("slot")
    hover = [c for c in ("surface", "stage_name", "blueprint_name", "internal_level", "alpha", "delta_l2_norm") if c != value]
    data = series.select("step", "slot", value, *hover).with_columns(pl.col("blueprint_name").fill_null("-"))
    top = series[value].max() or 1  # colour scale from 0, so an all-zero grid stays pale
    grid = hv.HeatMap(_pandas(data), ["step", "slot"], [value, *hover]).opts(
        cmap="Blues", clim=(0, top), alpha=0.6, colorbar=True, tools=["hover"], line_color="white", line_width=1
    )
    overlay = grid
    if events is not None and not events.is_empty():
        text = events.select("step", "slot", pl.col("name").str.replace("->", "→").alias("event"), "kind_name")
        labels = hv.Labels(_pandas(text), ["step", "slot"], ["event", "kind_name"])
        overlay = grid * labels.opts(text_font_size="8pt", text_color="black")
    ticks = list(zip(surfaces["slot"].to_list(), surfaces["surface"].to_list()))
    height = max(HEIGHT, 34 * len(ticks) + 80)
    return overlay.opts(hv.opts.HeatMap(title=title, width=WIDE, height=height, yticks=ticks, invert_yaxis=True, xlabel="step"))


def focus_levels(slots: pl.DataFrame, title: str = "focused subtarget level (multi-ladder seeds)") -> hv.Element:
    """Raw `slots` rows (`Store.rows("slots")`), kept to multi-ladder seeds: the focused
    subtarget's normalised level at each step, one colour per subtarget (env, slot and the seed's
    mean/max level in the hover)."""
    slots = slots.filter(pl.col("blueprint").is_in(MULTI_LADDERS))
    if slots.is_empty():
        return _empty(title)
    names = {int(s): s.name for s in Subtarget}
    hover = ["env", "episode", "slot", "internal_level_mean_norm", "internal_level_max_norm"]
    subtarget = pl.col("focus_subtarget").cast(pl.Int64).replace_strict(names, return_dtype=pl.String).alias("subtarget")
    data = hv.Dataset(
        _pandas(slots.select("step", "focus_internal_level_norm", *hover, subtarget)), ["subtarget", "step"], ["focus_internal_level_norm", *hover]
    )
    points = data.to(hv.Scatter, "step", ["focus_internal_level_norm", *hover], groupby="subtarget").overlay("subtarget")
    return points.opts(
        hv.opts.Scatter(size=9, alpha=0.6, tools=["hover"], jitter=0.3),
        hv.opts.NdOverlay(title=title, width=WIDTH, height=HEIGHT, legend_position="right", ylim=(-0.05, 1.05)),
    )


def seed_bands(frame: pl.DataFrame, y: str, x: str = "episode", by: str = "cohort", title: str | None = None) -> hv.Element:
    """Per `by` value and `x` (a learning_curve frame: one row per run and training episode):
    the median of `y` across runs (seeds) as a line, with its q25-q75 band shaded."""
    title = title or y
    frame = frame.drop_nulls(y)
    if frame.is_empty():
        return _empty(title)
    bands = (
        frame.group_by(by, x).agg(median=pl.col(y).median(), q25=pl.col(y).quantile(0.25), q75=pl.col(y).quantile(0.75), runs=pl.len()).sort(by, x)
    )
    layers = []
    for (name,), part in bands.partition_by(by, as_dict=True).items():
        data = _pandas(part)
        layers.append(hv.Area(data, x, ["q25", "q75"], label=str(name)).opts(alpha=0.2))
        layers.append(hv.Curve(data, x, ["median", "q25", "q75", "runs"], label=str(name)).opts(tools=["hover"], line_width=2))
    return hv.Overlay(layers).opts(title=title, width=WIDTH, height=HEIGHT, legend_position="right", xlabel=x, ylabel=y)


def gain_boxes(outcomes: pl.DataFrame, title: str = "gain over the static host per held-out episode") -> hv.Element:
    """The paired gain (score minus the static host's on the same episode) of each held-out
    episode, one box per (cohort, arm): the spread a CI summarises. `held_out` of a store with no
    evaluation episode yet gives an empty frame without a `gain` column: an empty panel too."""
    frame = outcomes if outcomes.is_empty() else outcomes.drop_nulls("gain")
    if frame.is_empty():
        return _empty(title)
    data = _pandas(frame.select("cohort", "arm", "gain"))
    return hv.BoxWhisker(data, ["cohort", "arm"], "gain").opts(
        title=title, width=WIDE, height=HEIGHT, xrotation=30, box_fill_color="arm", cmap="Category10", ylabel="gain (accuracy points, or loss drop)"
    )


def per_episode(outcomes: pl.DataFrame, column: str, arms: Sequence[str]) -> pl.DataFrame:
    """`held_out` rows laid out for reading: one row per (cohort, training seed, held-out episode),
    one column per arm of `arms` that played (in that order) holding its `column` (final_metric,
    gain...). Rows pair up because every arm played the same episode."""
    if outcomes.is_empty():
        return outcomes
    played = [a for a in arms if a in set(outcomes["arm"])]
    keys = ["cohort", "seed", "episode_seed"]
    return outcomes.pivot(on="arm", index=keys, values=column).select(*keys, *played).sort(keys)


def budget(settings: Settings) -> str:
    """One line of Markdown: the training env steps (rounds x episodes per round x envs x steps per
    episode), the host's batches per step, the held-out episodes per arm and the encoder."""
    run, ppo = settings.run, settings.ppo
    steps = settings.rounds * ppo.episodes_per_round * settings.envs * run.episode_length
    return (
        f"{settings.rounds} PPO round(s) × {ppo.episodes_per_round} episode(s) × {settings.envs} envs × "
        f"{run.episode_length} steps = {steps} training env steps, {run.batches_per_step or 'all'} batches of "
        f"{run.batch_size} per step on {run.data_fraction:.0%} of the training split; then {settings.eval_episodes} "
        f"held-out episodes per arm; encoder `{settings.policy.encoder}`"
    )


def frontier(points: pl.DataFrame, cost: str, title: str | None = None) -> hv.Element:
    """`report.frontier_points` rows for one cost: each static host's mean score at its mean cost
    (black points) and the frontier through them (dashed: the running best, as `frontier` reads
    it), every other arm as a point with its score's 95% CI as an error bar, one colour per
    (cohort, arm); cost on a log axis named after the cost, so two costs never share an axis."""
    title = title or f"test score against {cost}"
    points = points.filter(pl.col("cost_name") == cost).rename({"cost": cost}) if not points.is_empty() else points
    if points.is_empty():
        return _empty(title)
    static, grown = points.filter(pl.col("static")), points.filter(~pl.col("static"))
    layers = []
    for (cohort,), part in static.sort(cost).partition_by("cohort", as_dict=True).items():
        part = part.with_columns(best=pl.col("score").cum_max())
        layers.append(
            hv.Curve(_pandas(part.select(cost, "best")), cost, "best", label=f"{cohort} · static frontier").opts(line_dash="dashed", color="black")
        )
        layers.append(hv.Scatter(_pandas(part.select(cost, "score", "arm")), cost, ["score", "arm"]).opts(color="black", size=7, tools=["hover"]))
    label = pl.concat_str(pl.col("cohort"), pl.lit(" · "), pl.col("arm")).alias("label")
    for (name,), part in grown.with_columns(label).partition_by("label", as_dict=True).items():
        spread = {"below": pl.col("score") - pl.col("low"), "above": pl.col("high") - pl.col("score")}
        layers.append(hv.ErrorBars(_pandas(part.select(cost, "score", **spread)), cost, ["score", "below", "above"]))
        layers.append(
            hv.Scatter(_pandas(part.select(cost, "score", "low", "high", "arm")), cost, ["score", "low", "high", "arm"], label=name).opts(
                size=9, tools=["hover"]
            )
        )
    return hv.Overlay(layers).opts(
        hv.opts.Overlay(title=title, width=WIDE, height=HEIGHT + 40, legend_position="right", xlabel=cost, ylabel="test score", padding=0.08),
        hv.opts.ErrorBars(logx=True),
        hv.opts.Scatter(logx=True),
        hv.opts.Curve(logx=True),
    )
