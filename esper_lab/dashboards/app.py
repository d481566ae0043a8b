"""The dashboard app: the pages as tabs beside the shared selectors, served on loopback or
saved as one self-contained HTML file.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import panel as pn
import tornado.routing
import tornado.web

from esper_lab.dashboards.pages import (
    audit_page,
    conv_heavy_page,
    decay_page,
    economy_page,
    frontier_page,
    policy_health_page,
    slot_inspector_page,
    swimlane_page,
)
from esper_lab.dashboards.selection import Selection
from esper_lab.experiments.offline import save_offline
from esper_lab.telemetry.store import Store

TITLE = "esper_lab dashboards"

# The names a browser on this machine uses for loopback; with the served address (and any
# `allow_hosts`) they are the only Host headers answered (DNS rebinding, see `_HostGuard`).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")
PAGES = {
    "Frontier": frontier_page,
    "Rent & churn economy": economy_page,
    "conv_heavy share": conv_heavy_page,
    "Lifecycle swimlane": swimlane_page,
    "Policy health": policy_health_page,
    "Slot inspector": slot_inspector_page,
    "Shapley audits": audit_page,
    "Decay (Emrakul)": decay_page,
}


def build_app(root: str | Path, cohort: str | None = None, run: str | None = None) -> pn.Row:
    """Sidebar selectors beside one tab per page over the telemetry under `root`."""
    return _app(Store(root), cohort, run)


def _app(store: Store, cohort: str | None = None, run: str | None = None) -> pn.Row:
    selection = Selection(store, cohort, run)
    sidebar = pn.Column(f"## {TITLE}", f"telemetry: `{store.root}`", selection.run_widgets(), width=280)
    return pn.Row(sidebar, _tabs(store, selection, dynamic=True))


def serve(root: str | Path, port: int = 5006, address: str = "127.0.0.1", show: bool = False, allow_hosts: tuple[str, ...] = ()) -> None:
    """Print the URL and serve the app until interrupted; loopback by default, as the dashboards
    have no login, and only to requests naming this server (`allow_hosts` adds host names). Each
    browser session opens its own store, so a reload shows new runs."""
    Selection(Store(root))  # a missing or empty root fails here, once, not in every session
    stores = weakref.WeakSet()  # the open sessions' stores

    def session() -> pn.Row:
        store = Store(root)
        stores.add(store)
        return _app(store)

    hosts = {host.lower() for host in (*LOOPBACK_HOSTS, address, *allow_hosts)}
    try:
        server = pn.serve(
            {"/": session},
            port=port,
            address=address,
            show=show,
            start=False,
            title=TITLE,
            websocket_origin=[f"{host}:{port}" for host in sorted(hosts)],
            admin=False,
        )
    except OSError as error:  # the port is taken: one clear line instead of tornado's traceback
        raise ValueError(f"cannot listen on {address}:{port}: {error.strerror}") from error
    application = server._tornado  # Bokeh keeps its tornado Application private; the guard wraps its router
    application.default_router = _HostGuard(application, application.default_router, hosts)
    print(f"esper_lab dashboards: http://{address}:{port}/ (telemetry {Path(root)}; Ctrl-C stops)", flush=True)
    server.start()
    try:
        server.io_loop.start()
    finally:  # sessions outlive the loop: close their stores, or DuckDB reports leaks at exit
        for store in list(stores):
            store.close()


class _WrongHost(tornado.web.RequestHandler):
    def prepare(self) -> None:
        name = self.request.host_name
        self.set_status(403)
        self.finish(f"403: host {name!r} is not served here; to allow it: esper-lab dashboard --allow-host {name}\n")


class _HostGuard(tornado.routing.Router):
    """Route a request only when its Host header names this server. Without it, a page from
    evil.example whose DNS later points at 127.0.0.1 reads the dashboards (DNS rebinding): the
    browser sends `Host: evil.example` and a matching Origin, so origin checks alone pass."""

    def __init__(self, application: tornado.web.Application, inner: tornado.routing.Router, hosts: set[str]):
        self.application, self.inner, self.hosts = application, inner, hosts

    def find_handler(self, request, **kwargs):
        if request.host_name in self.hosts:
            return self.inner.find_handler(request, **kwargs)
        return self.application.get_handler_delegate(request, _WrongHost)


def save_html(root: str | Path, path: str | Path, cohort: str | None = None, run: str | None = None) -> Path:
    """One selection as a single HTML file that renders offline (JS inlined, STACK pitfall 5):
    tabs switch and plots zoom and hover, but the selection is fixed. Embedding every selector
    state instead re-renders all pages per state: minutes even for a smoke root."""
    store = Store(root)
    selection = Selection(store, cohort, run)
    cohort, run, env, episode = selection.view
    shown = f"## {TITLE}\n\ntelemetry: `{store.root}`\n\ncohort **{cohort}**, run **{run}**, env {env}, episode {episode}"
    return save_offline(pn.Row(pn.pane.Markdown(shown, width=280), _tabs(store, selection, dynamic=False)), path, TITLE)


def _tabs(store: Store, selection: Selection, dynamic: bool) -> pn.Tabs:
    """One tab per page; `dynamic` renders only the open one (served), a static file needs all."""
    return pn.Tabs(*((title, page(store, selection)) for title, page in PAGES.items()), dynamic=dynamic)
