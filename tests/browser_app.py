"""The real ComfyUI frontend in headless chromium: a page on a server, and the console errors it logs."""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

from PIL import Image

README_SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"

VIEWPORT = {"width": 2200, "height": 1150}
# Fit every node and group into the canvas (the frontend's own fitToBounds), leaving room for the menus around it.
SHOW_WHOLE_GRAPH = """() => {
    const graph = window.app.graph, title = window.LiteGraph.NODE_TITLE_HEIGHT;
    const boxes = graph.nodes.map((n) => [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]);
    for (const group of graph.groups ?? graph._groups ?? []) boxes.push([...(group._bounding ?? group.bounding)]);
    const left = Math.min(...boxes.map((b) => b[0])), top = Math.min(...boxes.map((b) => b[1]));
    const right = Math.max(...boxes.map((b) => b[0] + b[2])), bottom = Math.max(...boxes.map((b) => b[1] + b[3]));
    window.app.canvas.ds.fitToBounds([left, top, right - left, bottom - top], { zoom: 0.9 });
    window.app.canvas.setDirty(true, true);
}"""


def _is_external(url: str, origin: str) -> bool:
    return bool(url) and not url.startswith(origin) and urllib.parse.urlparse(url).scheme in ("http", "https")


def _normalise(text: str, url: str, origin: str) -> str:
    return re.sub(r"https?://127\.0\.0\.1:\d+", "ORIGIN", f"{text} @ {url.replace(origin, 'ORIGIN')}")


def open_app(browser, server):
    """A page on the server's frontend, and the console errors it logs (normalised).

    Requests to hosts other than the server fail here by design (no network): the frontend's own
    registry lookups are not the pack's errors, so they are left out.
    """
    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []

    def on_console(message) -> None:
        url = message.location.get("url", "")
        if message.type == "error" and not _is_external(url, server.url):
            errors.append(_normalise(message.text.split("\n")[0], url, server.url))

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(_normalise(f"pageerror: {error}", "", server.url)))
    page.goto(server.url)
    page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=90_000)
    page.wait_for_load_state("networkidle")
    return page, errors


def update_readme_copy(path: Path, longest_side: int) -> None:
    """With BOLID_UPDATE_SCREENSHOTS=1, rewrite the README's copy of a screenshot: smaller, 256 colours."""
    if os.environ.get("BOLID_UPDATE_SCREENSHOTS") != "1":
        return
    README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    small = Image.open(path).convert("RGB")
    small.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    small.quantize(256).save(README_SCREENSHOTS / path.name, optimize=True)
