"""The pack report: one static HTML page per pack, readable offline with no server.

Per cohort it shows the store's cohort table (median and q25 across seeds of the final task
metric, return and ROI; conv_heavy share; grow/shrink share; entropy per head; vetoes and
rollbacks) and judges seed 002's Phase 0 exit gates with the numbers behind each verdict. The
numbers all come from store queries; this module only compares them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from esper_lab.config import LADDERS
from esper_lab.experiments.packs import Pack
from esper_lab.telemetry import Store

GROW_SHRINK_GATE = 0.10  # seed 002 gate 1: GROW/SHRINK in >= 10% of non-WAIT decisions
ENTROPY_KEPT = 0.5  # gate 3: the op head keeps at least half its first-round entropy (no collapse)
MAX_LEVEL_CHANGE_RATE = 0.5  # gate 4: at most one level change every other step, on average
LADDER_NAMES = frozenset(b.name.lower() for b in LADDERS)


@dataclass(frozen=True)
class Gate:
    name: str
    cohort: str
    passed: bool | None  # None: not applicable to this cohort
    evidence: str


def _has_ladder(pack: Pack, cohort: str) -> bool:
    return bool(LADDER_NAMES & {str(b).lower() for b in pack.cohorts[cohort].get("blueprints", [])})


def exit_gates(pack: Pack, table: pl.DataFrame) -> list[Gate]:
    """Seed 002's four Phase 0 exit gates, judged per cohort against the control cohort."""
    rows = {r["cohort"]: r for r in table.iter_rows(named=True)}
    control = rows.get(pack.control)
    gates = []
    for cohort, r in rows.items():
        if _has_ladder(pack, cohort):
            share = r["grow_shrink_share"] or 0.0
            gates.append(Gate("1 usage", cohort, share >= GROW_SHRINK_GATE,
                              f"grow/shrink {share:.1%} of {r['non_wait']} non-WAIT decisions (gate >= {GROW_SHRINK_GATE:.0%})"))  # fmt: skip
        if control is not None and cohort != pack.control:
            lower = r["conv_heavy_share"] < control["conv_heavy_share"]
            roi_kept = r["roi_median"] >= control["roi_median"]
            gates.append(Gate("2 dominance", cohort, lower and roi_kept,
                              f"conv_heavy share {r['conv_heavy_share']:.3f} vs control {control['conv_heavy_share']:.3f}; "
                              f"ROI median {r['roi_median']:.3g} vs {control['roi_median']:.3g}"))  # fmt: skip
        kept = r["op_entropy_last"] >= ENTROPY_KEPT * r["op_entropy_first"]
        more_rollbacks = control is not None and r["rollbacks"] > control["rollbacks"]
        gates.append(Gate("3 stability", cohort, kept and not more_rollbacks,
                          f"op entropy {r['op_entropy_first']:.2f} -> {r['op_entropy_last']:.2f} (keep >= {ENTROPY_KEPT:.0%}); "
                          f"rollbacks {r['rollbacks']}" + (f" vs control {control['rollbacks']}" if control else "")))  # fmt: skip
        if _has_ladder(pack, cohort):
            rate = r["level_change_rate"] or 0.0
            gates.append(Gate("4 anti-thrash", cohort, rate <= MAX_LEVEL_CHANGE_RATE,
                              f"level_change_rate {rate:.2f}/step (<= {MAX_LEVEL_CHANGE_RATE}); final net_level_change "
                              f"{r['net_level_change']:+.2f}"))  # fmt: skip
    return gates


def write_report(pack: Pack, store: Store, path: Path) -> Path:
    """Write `path` (HTML that requests nothing from the network) and return it."""
    import holoviews as hv
    import panel as pn

    from esper_lab.dashboards.app import save_offline

    hv.extension("bokeh")
    table = store.cohort_report()
    if table.is_empty():  # nothing to judge or draw (HoloViews would fail on the empty plot)
        raise ValueError(f"telemetry root {store.root} holds no recorded episodes to report on (run `esper-lab pack run` first)")
    gates = exit_gates(pack, table)
    verdict = {True: "PASS", False: "FAIL", None: "n/a"}
    gates.sort(key=lambda g: (g.name, g.cohort))
    gate_rows = pl.DataFrame(
        [{"gate": g.name, "cohort": g.cohort, "verdict": verdict[g.passed], "evidence": g.evidence} for g in gates],
        schema={"gate": pl.String, "cohort": pl.String, "verdict": pl.String, "evidence": pl.String},
    )
    share = store.conv_heavy_share_bands()
    curves = hv.Overlay([
        hv.Area(g, "run_step", ["q25", "median"], label=f"{c} q25-median").opts(alpha=0.2)
        * hv.Curve(g, "run_step", "median", label=c)
        for (c,), g in share.partition_by("cohort", as_dict=True).items()
    ]).opts(width=760, height=300, title="conv_heavy active-param share (median and q25 across seeds)",
           ylabel="conv_heavy share", xlabel="env step of the run", legend_position="right")  # fmt: skip
    runs = store.runs()
    statuses = runs.group_by("status").len().sort("status") if len(runs) else runs
    page = pn.Column(
        pn.pane.Markdown(f"# {pack.title}\n\nCohorts × seeds {list(pack.seeds)}; control cohort **{pack.control}**. "
                         f"Runs by status: {dict(statuses.iter_rows()) if len(runs) else {}}."),  # fmt: skip
        pn.pane.Markdown("## Exit gates (seed 002)"),
        pn.pane.DataFrame(gate_rows.to_pandas(), index=False),
        pn.pane.Markdown("## Cohorts"),
        pn.pane.DataFrame(table.to_pandas(), index=False, float_format="{:.4g}".format),
        pn.pane.HoloViews(curves),
    )
    return save_offline(page, path, pack.title)

