"""Dashboards (Karn UI): Panel + HoloViews pages over the telemetry store's named queries.

Every number shown comes from a `esper_lab.telemetry.store.Store` method (DESIGN rule 5); the
pages only select, reshape and draw. Each page function returns a Panel object that renders
inline in JupyterLab (after `pn.extension()`) and inside the served app.
"""

from esper_lab.dashboards.app import PAGES, build_app, save_html, serve
from esper_lab.dashboards.pages import (
    audit_page,
    conv_heavy_page,
    decay_page,
    economy_page,
    policy_health_page,
    slot_inspector_page,
    swimlane_page,
)
from esper_lab.dashboards.selection import Selection

__all__ = [
    "PAGES",
    "Selection",
    "audit_page",
    "build_app",
    "conv_heavy_page",
    "decay_page",
    "economy_page",
    "policy_health_page",
    "save_html",
    "serve",
    "slot_inspector_page",
    "swimlane_page",
]
