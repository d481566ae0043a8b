"""Dashboards over real smoke telemetry (PPO members of pack0): the store queries the pages add,
every page building, clear errors for a bad root, a run without steps, the offline HTML export and
pack report (nothing fetched from the network), and the served app: host names it answers to, and
Debian's Chromium driven by Playwright (cohort switch, every tab, a screenshot in reports/)."""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import panel as pn
import polars as pl
import pytest
from browser import PLOTS_JS, Browser

from esper_lab.cli import main
from esper_lab.config import RunConfig
from esper_lab.contracts import ARMS, CONTROL, DEFAULT_ARMS, Stage
from esper_lab.dashboards import PAGES, Selection, build_app, save_html
from esper_lab.dashboards.pages import STAGE_COLORS
from esper_lab.experiments import views
from esper_lab.experiments.member import run_member
from esper_lab.experiments.packs import load_pack
from esper_lab.experiments.report import write_report
from esper_lab.studies.evidence import held_out
from esper_lab.telemetry import Recorder
from esper_lab.telemetry.store import Store

COHORTS = ("baseline", "c0_only")
SEEDS = (1, 2)  # seed 2 buys conv_heavy in the smoke preset, so the screenshot shows a share above 0
SCREENSHOT = Path(__file__).resolve().parents[1] / "reports" / "dashboard_conv_heavy.png"
FRONTIER_SCREENSHOT = SCREENSHOT.with_name("dashboard_frontier.png")
REPORT_SCREENSHOT = SCREENSHOT.with_name("report_frontier.png")


@pytest.fixture(scope="session")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("telemetry")
    for cohort in COHORTS:
        for seed in SEEDS:
            run_member("pack0", cohort, seed, "smoke", root)
    return root


@pytest.fixture(scope="session")
def store(root, server) -> Store:
    return Store(root)  # `server` only to start it early


@pytest.fixture(autouse=True)
def panel_state():
    """Panel keeps every rendered document in `pn.state`: drop them, or their stores' DuckDB
    connections outlive the interpreter's shutdown and nanobind reports them as leaks."""
    yield
    pn.state.reset()


@pytest.mark.slow
def test_conv_heavy_share_bands_summarise_the_runs(store):
    per_run = store.conv_heavy_share().join(store.runs(kind="ppo").select("run_id"), on="run_id")  # training runs only
    expected = (
        per_run.group_by("cohort", "run_step")
        .agg(
            runs=pl.len(),
            median=pl.col("conv_heavy_forward_param_share").median(),
            q25=pl.col("conv_heavy_forward_param_share").quantile(0.25, interpolation="linear"),
        )
        .sort("cohort", "run_step")
    )
    bands = store.conv_heavy_share_bands()
    assert bands.select(expected.columns).equals(expected.cast(bands.select(expected.columns).schema))
    assert set(bands["runs"]) == {len(SEEDS)}
    assert store.conv_heavy_share_bands("c0_only")["cohort"].unique().to_list() == ["c0_only"]


def test_slot_series_and_event_log_name_what_the_tables_hold(store):
    run = store.runs("c0_only")["run_id"][0]
    slots, series = store.rows("slots", run=run), store.slot_series(run=run)
    columns = ["env", "episode", "step", "slot", "stage", "alpha", "seed_param_count_active"]
    assert series.select(columns).equals(slots.select(columns))
    assert series["stage_name"].to_list() == [Stage(s).name for s in slots["stage"]]
    assert series.filter(pl.col("blueprint") < 0)["blueprint_name"].is_null().all()  # no seed: no name
    assert set(store.slot_series(run=run, env=1, episode=0)["env"]) == {1}
    events = store.event_log(run=run)
    assert len(events) == len(store.rows("events", run=run)) and set(events["kind_name"]) <= {
        "TRANSITION",
        "LEVEL_CHANGED",
        "FOCUS_CHANGED",
        "ALPHA_TARGET_SET",
        "VETO",
        "ROLLBACK",
        "ERROR",
    }
    assert store.episodes(run=run).select("env", "steps").rows() == [(0, 4), (1, 4)]


def test_per_episode_lines_every_arm_up_on_the_same_held_out_episode(store):
    outcomes = held_out(store)
    table = views.per_episode(outcomes, "gain", ARMS)
    played = [a for a in DEFAULT_ARMS if a != "oracle"]  # these runs name no oracle blueprint, so it never played
    assert table.columns == ["cohort", "seed", "episode_seed", *played]
    assert table.height == outcomes.select("cohort", "seed", "episode_seed").n_unique() == len(COHORTS) * len(SEEDS) * 2
    assert (table[CONTROL] == 0).all()  # the control's gain over itself
    one = outcomes.filter(
        (pl.col("arm") == "random")
        & (pl.col("episode_seed") == table["episode_seed"][0])
        & (pl.col("cohort") == table["cohort"][0])
        & (pl.col("seed") == table["seed"][0])
    )
    assert table["random"][0] == one["gain"].item()


def test_gain_boxes_of_a_store_without_held_out_episodes_is_an_empty_panel(tmp_path):
    outcomes = held_out(Store(tmp_path))  # empty, and without the `gain` column
    assert "gain" not in outcomes.columns
    assert views.gain_boxes(outcomes).opts.get().kwargs["title"].endswith("no rows yet")


@pytest.mark.slow
def test_pages_follow_the_selection_once_per_user_action(store):
    selection = Selection(store)
    views = []
    selection.param.watch(lambda event: views.append(event.new), "view")
    pages = {title: page(store, selection) for title, page in PAGES.items()}
    selection.cohort.value = "c0_only"
    assert views == [("c0_only", store.runs("c0_only")["run_id"][0], 0, 0)]  # not one redraw per widget it moves
    assert pages["conv_heavy share"].select(pn.pane.Markdown)[0].object == "### conv_heavy share — cohort c0_only"
    assert set(STAGE_COLORS) == {s.name for s in Stage}


def test_a_page_alone_brings_its_selectors_for_jupyterlab(store):
    page = PAGES["Policy health"](store)
    assert [w.label for w in page.select(pn.widgets.Select)] == ["Cohort", "Run", "Env", "Episode"]


def test_bad_roots_fail_with_one_clear_line(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="missing"):
        build_app(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no runs"):
        build_app(tmp_path)
    assert main(["dashboard", "--root", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"esper-lab: error: telemetry root {tmp_path / 'missing'} is not a folder\n"


@pytest.mark.slow
def test_save_html_renders_every_page_offline(root, store, tmp_path):
    html = save_html(root, tmp_path / "dash.html", cohort="c0_only").read_text()  # renders all five pages
    assert store.runs("c0_only")["run_id"][0] in html and "Slot inspector" in html
    assert '"name":"ImportedStyleSheet"' not in html and '"name":"InlineStyleSheet"' in html  # no CDN stylesheet left


@pytest.mark.slow
def test_a_run_without_steps_says_so_instead_of_keeping_the_previous_run(root, tmp_path):
    one = Store(root).runs("c0_only")["run_id"][0]
    shutil.copytree(root / "cohort=c0_only" / f"run={one}", tmp_path / "cohort=c0_only" / f"run={one}")
    with Recorder(tmp_path, "c0_only", RunConfig(task="digits_cnn"), run_id="zz-no-steps", kind="heuristic"):
        pass  # a run stopped before its first step
    store = Store(tmp_path)
    selection = Selection(store, "c0_only", one)
    pages = {title: page(store, selection) for title, page in PAGES.items()}
    selection.run.value = "zz-no-steps"
    assert selection.view == ("c0_only", "zz-no-steps", None, None)
    for title in ("Rent & churn economy", "Lifecycle swimlane", "Policy health", "Slot inspector"):
        shown = [m.object for m in pages[title].select(pn.pane.Markdown)]
        assert any("zz-no-steps" in text and "recorded no steps" in text for text in shown), (title, shown)
        assert not any(one in text for text in shown), (title, shown)  # not the previous run
    html = save_html(tmp_path, tmp_path / "dash.html", "c0_only", "zz-no-steps").read_text()  # every page renders
    assert "recorded no steps" in html


def test_the_pack_report_requests_nothing_from_the_network(root, tmp_path):
    path = write_report(load_pack("pack0"), root, "smoke", tmp_path / "index.html")
    html = path.read_text()
    assert not re.findall(r"""<(?:link|script)\b[^>]*\b(?:href|src)=["']https?://|"url":"https?://""", html)  # no CDN link
    requested = []

    def block(route):
        if route.request.url.startswith("file://"):
            return route.continue_()
        requested.append(route.request.url)
        return route.abort()

    def look(page) -> dict:
        page.route("**/*", block)
        page.goto(path.as_uri())
        page.get_by_text("Exit gates (seed002), on held-out episodes").wait_for()
        page.locator("canvas").first.wait_for(state="attached")
        page.wait_for_timeout(500)  # let the canvas paint before the screenshot
        page.screenshot(path=REPORT_SCREENSHOT, full_page=True)
        return {plot["title"]: plot["legend"] for plot in page.evaluate(PLOTS_JS)}

    with Browser() as browser:
        plots = browser.run(look)
    # the page leads with the static frontier: both costs, the dashed frontier and every arm
    for title in ("test score against params in forward", "test score against training FLOPs"):
        assert {"baseline · static frontier", "baseline · ppo_greedy", "c0_only · heuristic"} <= set(plots[title]), plots[title]
    assert requested == []


def start_server(root: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`esper-lab dashboard` on a free loopback port, not waited for (imports take ~10 s)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "esper_lab.cli", "dashboard", "--root", str(root), "--port", str(port), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, f"http://127.0.0.1:{port}/"


def answered(process: subprocess.Popen, url: str, log: Path) -> str:
    """`url` once its server answers."""
    deadline = time.monotonic() + 180  # imports and the first page (the frontier: bootstrapped CIs) on a busy machine
    while True:
        try:
            urllib.request.urlopen(url, timeout=60).close()  # a retry opens another session: never pile them up
            return url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dashboard server did not answer at {url}:\n{log.read_text()}")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def server(root, tmp_path_factory):
    """The dashboard over the smoke root; started early, so its start-up overlaps the tests that
    need no server."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    process, url = start_server(root, log)
    yield process, url, log
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def url(server) -> str:
    return answered(*server)


def raw_get(url: str, host: str, path: str = "/", **headers: str) -> tuple[int, str]:
    """A GET with a chosen Host header, as a browser sends it after a DNS rebinding."""
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=120)  # a loaded machine: the first page renders slowly
    connection.request("GET", path, headers={"Host": host, **headers})
    response = connection.getresponse()
    body = response.read().decode(errors="replace")
    connection.close()
    return response.status, body


@pytest.mark.slow
def test_the_dashboard_answers_only_to_its_own_host_names(url, store):
    port = urlsplit(url).port
    evil = f"evil.example:{port}"
    status, body = raw_get(url, evil, Origin=f"http://{evil}")
    assert status == 403 and "--allow-host evil.example" in body
    assert not any(run in body for run in store.runs()["run_id"])
    websocket = {
        "Origin": f"http://{evil}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    assert raw_get(url, evil, "/ws", **websocket)[0] == 403
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert raw_get(url, host)[0] == 200


@pytest.mark.slow
def test_the_dashboard_answers_another_host_name_when_allowed(root, tmp_path):
    process, url = start_server(root, tmp_path / "server.log", "--allow-host", "Lab.Example")
    try:
        answered(process, url, tmp_path / "server.log")
        port = urlsplit(url).port
        assert raw_get(url, f"lab.example:{port}", Origin=f"http://lab.example:{port}")[0] == 200
        assert raw_get(url, f"evil.example:{port}")[0] == 403
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def dashboard(url):
    """The served app open in Debian's Chromium (Playwright's sync API, no downloaded browser)."""

    def open_app(page) -> None:
        page.set_default_timeout(30_000)
        page.goto(url)
        page.wait_for_selector("canvas", state="attached", timeout=60_000)

    with Browser(viewport={"width": 1400, "height": 1000}) as browser:
        browser.run(open_app)
        yield browser


@pytest.mark.slow
def test_choosing_a_cohort_shows_it_in_the_conv_heavy_share(dashboard):
    def choose(page) -> dict:
        page.get_by_text("conv_heavy share", exact=True).click()
        page.get_by_text("conv_heavy share — cohort baseline").wait_for()
        page.locator(".cohort-select select").select_option("c0_only")
        page.get_by_text("conv_heavy share — cohort c0_only").wait_for()
        page.wait_for_function(f"() => ({PLOTS_JS})().some(plot => plot.title === 'conv_heavy share — c0_only')")
        plots = {plot["title"]: plot["legend"] for plot in page.evaluate(PLOTS_JS)}
        page.wait_for_timeout(500)  # let the canvas paint before the screenshot
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=SCREENSHOT, full_page=True)
        return plots

    plots = dashboard.run(choose)
    assert {"c0_only median", "c0_only q25–q75", "baseline median"} <= set(plots["conv_heavy share — c0_only"])


@pytest.mark.slow
def test_the_frontier_tab_puts_every_arm_beside_the_static_frontier(dashboard):
    title = "baseline: test score against params in forward"

    def choose(page) -> dict:
        page.get_by_text("Frontier", exact=True).click()
        page.locator(".cohort-select select").select_option("baseline")  # an earlier test may have chosen another
        page.get_by_text("Frontier — cohort baseline").wait_for()
        page.wait_for_function(f"() => ({PLOTS_JS})().some(plot => plot.title === '{title}')")
        plots = {plot["title"]: plot["legend"] for plot in page.evaluate(PLOTS_JS)}
        page.wait_for_timeout(500)
        FRONTIER_SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=FRONTIER_SCREENSHOT, full_page=True)
        return plots

    plots = dashboard.run(choose)
    assert {"baseline · static frontier", "baseline · ppo_greedy", "baseline · gain_trigger"} <= set(plots[title])


@pytest.mark.slow
@pytest.mark.parametrize(
    "tab, header",
    [
        ("Rent & churn economy", "Rent & churn economy — "),
        ("Lifecycle swimlane", "Lifecycle swimlane — "),
        ("Policy health", "Policy health — "),
        ("Slot inspector", "Slot inspector — "),
    ],
)
def test_every_tab_renders(dashboard, tab, header):
    def open_tab(page) -> None:
        page.get_by_text(tab, exact=True).click()
        page.get_by_text(header).first.wait_for()
        page.locator("canvas").first.wait_for(state="attached")  # a plot, not only the header

    dashboard.run(open_tab)


def test_the_economy_page_draws_budget_use_churn_and_roi_from_the_store(store):
    page = PAGES["Rent & churn economy"](store)
    titles = [pane.object.opts.get().kwargs.get("title") for pane in page.select(pn.pane.HoloViews)]
    assert "budget utilisation" in titles and "churn and ROI (ROI: contribution per 1k params)" in titles
    run = Selection(store).view[1]
    economy = store.economy(run=run)
    assert economy.height == store.rent_churn(run=run).height and (economy["active_param_budget_util"] >= 0).all()
