"""Debian's Chromium for the browser tests, driven by Playwright's sync API in a thread of its own.

The sync API refuses to start in a thread where an asyncio loop is running, as one can be in a
pytest-xdist worker after another file's tests (a notebook kernel's client, a Panel server); a
thread of its own never has one. Every page action runs in that thread (`Browser.run`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

# Debian's chromium in a container (STACK §6): no sandbox, no GPU, nothing phoning home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Each Bokeh plot with its title and legend labels, read from the live document in the browser.
PLOTS_JS = """() => [...Bokeh.documents[0].all_models].filter(m => m.title && m.renderers).map(m => ({
    title: m.title.text,
    legend: [...m.center, ...m.right].filter(c => c.items).flatMap(c => c.items.map(i => i.label && i.label.value))}))"""


class Browser:
    """One Chromium page; `run(action)` calls `action(page)` in the browser's thread."""

    def __init__(self, **page_options: Any):
        chromium = shutil.which("chromium")
        if chromium is None:
            pytest.skip("Debian's chromium is not installed (.ci/run installs it; never `playwright install`)")
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="chromium")
        self.page = self._thread.submit(self._open, chromium, page_options).result()

    def _open(self, chromium: str, page_options: dict):
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        return self._browser.new_page(**page_options)

    def run(self, action: Callable[..., Any], *args: Any) -> Any:
        """`action(page, *args)` in the browser's thread: its result, or the exception it raised."""
        return self._thread.submit(action, self.page, *args).result()

    def close(self) -> None:
        def stop(_page) -> None:
            self._browser.close()
            self._playwright.stop()

        self.run(stop)
        self._thread.shutdown()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
