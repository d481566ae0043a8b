"""The selectors every page reads: cohort → run → env and episode, plus the inspected surface.

Options come from store queries (`runs`, `episodes`, `slot_series`), so a selector never offers a
run, env or surface without telemetry. Pages depend on `view` and `slot`, which change once per
user action: a new cohort moves the run, env and episode together instead of redrawing each
page once per widget with a half-updated selection. Widgets use `label=` (Panel 1.9 deprecates
`name=`) and CSS classes a browser test can find.
"""

from __future__ import annotations

from contextlib import contextmanager

import panel as pn
import param

from esper_lab.telemetry.store import Store

WIDGET_WIDTH = 250  # fits a run id like digits_cnn-s0-20261122T035402-44b106


class Selection(param.Parameterized):
    """Linked selectors over one store: a cohort narrows the runs, a run its envs, episodes (the
    last by default: the most trained policy) and surfaces."""

    # env and episode are None for a run without steps (killed before its first)
    view = param.Tuple(default=None, length=4, allow_None=True, doc="(cohort, run, env, episode) on show")
    slot = param.Integer(default=None, allow_None=True, doc="the slot the inspector shows")

    def __init__(self, store: Store, cohort: str | None = None, run: str | None = None):
        super().__init__()
        self.store = store
        runs = store.runs()
        if runs.is_empty():
            raise ValueError(f"telemetry root {store.root} holds no runs yet")
        self.runs_by_cohort: dict[str, list[str]] = {}
        for row_cohort, run_id in runs.select("cohort", "run_id").iter_rows():
            self.runs_by_cohort.setdefault(row_cohort, []).append(run_id)
        cohorts = sorted(self.runs_by_cohort)
        if cohort is not None and cohort not in self.runs_by_cohort:
            raise ValueError(f"cohort={cohort!r} is not one of: {', '.join(cohorts)}")
        self._quiet = False
        self.cohort = pn.widgets.Select(
            label="Cohort", options=cohorts, value=cohort or cohorts[0], css_classes=["cohort-select"], width=WIDGET_WIDTH
        )
        self.run = pn.widgets.Select(label="Run", css_classes=["run-select"], width=WIDGET_WIDTH)
        self.env = pn.widgets.Select(label="Env", css_classes=["env-select"], width=WIDGET_WIDTH)
        self.episode = pn.widgets.Select(label="Episode", css_classes=["episode-select"], width=WIDGET_WIDTH)
        self.surface = pn.widgets.Select(label="Surface", css_classes=["surface-select"], width=2 * WIDGET_WIDTH)
        self.cohort.param.watch(lambda _: self._cohort_changed(), "value")
        self.run.param.watch(lambda _: self._run_changed(), "value")
        for widget in (self.env, self.episode, self.surface):
            widget.param.watch(lambda _: self._publish(), "value")
        self._cohort_changed(run)

    @contextmanager
    def _batch(self):
        """Hold back `_publish` until the outermost cascade of widget updates has finished."""
        quiet, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = quiet
        self._publish()

    def _publish(self) -> None:
        if not self._quiet:
            self.param.update(view=(self.cohort.value, self.run.value, self.env.value, self.episode.value), slot=self.surface.value)

    def _cohort_changed(self, run: str | None = None) -> None:
        runs = self.runs_by_cohort[self.cohort.value]
        if run is not None and run not in runs:
            raise ValueError(f"run={run!r} is not one of cohort {self.cohort.value!r}'s runs: {', '.join(runs)}")
        with self._batch():
            self.run.options = runs  # may already move the value (and run `_run_changed`)
            self.run.value = run or runs[0]

    def _run_changed(self) -> None:
        episodes = self.store.episodes(self.cohort.value, self.run.value)
        if episodes.is_empty():  # a run killed (or ended) before its first step: `view` says so with None
            with self._batch():
                self.env.options, self.episode.options, self.surface.options = [], [], {}
                self.env.value = self.episode.value = self.surface.value = None
            return
        first = episodes.row(0, named=True)  # every slot exists from construction: one step lists them all
        surfaces = self.store.slot_series(self.cohort.value, self.run.value, first["env"], first["episode"])
        surfaces = surfaces.unique("slot", maintain_order=True)
        with self._batch():
            self.env.options = episodes["env"].unique(maintain_order=True).to_list()
            self.episode.options = episodes["episode"].unique().sort().to_list()
            self.surface.options = dict(zip(surfaces["surface"], surfaces["slot"]))
            self.env.value, self.episode.value = self.env.options[0], self.episode.options[-1]
            self.surface.value = surfaces["slot"][0]

    def run_widgets(self) -> pn.Column:
        """The cohort, run, env and episode selectors (the app's sidebar, or above an inline page)."""
        return pn.Column(self.cohort, self.run, self.env, self.episode)
