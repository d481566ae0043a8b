"""One HTML file a browser opens offline: the pack report's and the dashboard's static export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import panel as pn
from bokeh.resources import INLINE

# A Panel component stylesheet saved as a CDN link: `"id"` and the file's path under panel/dist.
PANEL_CSS_LINK = re.compile(
    r'"name":"ImportedStyleSheet","id":"(\w+)","attributes":\{"url":"https://cdn\.holoviz\.org/panel/[^/]+/dist/([^"?]+)[^"]*"\}'
)


def save_offline(page: pn.viewable.Viewable, path: str | Path, title: str) -> Path:
    """Save a Panel object as one HTML file that requests nothing from the network: Bokeh's and
    Panel's JS inlined, Panel's component stylesheets too (see `_inline_panel_css`), and no
    icons (Panel's page template links them from its CDN unless the variables are defined)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.save(path, resources=INLINE, title=title, template_variables={"app_favicon": "", "apple_icon": ""})
    path.write_text(_inline_panel_css(path.read_text(encoding="utf-8")), encoding="utf-8")
    return path


def _inline_panel_css(html: str) -> str:
    """Panel 1.9 saves its components' stylesheets as CDN links even with INLINE resources
    (holoviz/panel#6759), so offline the tables and selectors lose their style: swap each link
    for the same file's text from the installed package."""
    dist = Path(pn.__file__).parent / "dist"

    def inline(link: re.Match) -> str:
        css = json.dumps((dist / link[2]).read_text(encoding="utf-8")).replace("</", "<\\/")  # stay inside <script>
        return f'"name":"InlineStyleSheet","id":"{link[1]}","attributes":{{"css":{css}}}'

    return PANEL_CSS_LINK.sub(inline, html)
