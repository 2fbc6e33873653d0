"""Tier 4: Debian's chromium drives the real ComfyUI frontend served by a server with the pack."""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path

import pytest

from bolid_dev.workflows import WORKFLOWS_DIR

UI_WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))
VIEWPORT = {"width": 2200, "height": 1150}
SHOW_WHOLE_GRAPH = """() => {
    const ds = window.app.canvas.ds;
    ds.scale = 0.8;
    ds.offset = [40, 140];
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


@pytest.fixture(scope="session")
def baseline_errors(browser, baseline_server) -> set[str]:
    page, errors = open_app(browser, baseline_server)
    page.close()
    return set(errors)


@pytest.mark.parametrize("workflow_path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_workflow_loads_in_the_frontend(
    browser, comfy_server, baseline_errors: set[str], workflow_path: Path, test_output: Path
) -> None:
    page, errors = open_app(browser, comfy_server)
    workflow = json.loads(workflow_path.read_text())
    page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }", workflow)
    page.wait_for_load_state("networkidle")
    loaded = page.evaluate(
        """() => window.app.graph.nodes.map((node) => ({
            type: node.type,
            registered: node.type in window.LiteGraph.registered_node_types
                && node.constructor.comfyClass === node.type,
            widgets: (node.widgets || []).map((widget) => widget.name),
        }))"""
    )
    assert sorted(node["type"] for node in loaded) == sorted(node["type"] for node in workflow["nodes"])
    missing = sorted({node["type"] for node in loaded if not node["registered"]})
    assert not missing, f"node types missing in the frontend: {missing}"
    for node in loaded:
        if node["type"] == "BoLIDKeypointsFromJSON":
            assert "bolid_pose_preview" in node["widgets"], "the keypoints preview extension did not attach"

    page.evaluate(SHOW_WHOLE_GRAPH)
    page.wait_for_timeout(500)
    shot = test_output / "browser" / f"{workflow_path.stem}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))
    page.close()
    added = sorted(set(errors) - baseline_errors)
    assert not added, "console errors the pack adds:\n" + "\n".join(added)


def test_keypoints_preview_parses_like_the_server(browser, comfy_server) -> None:
    page, _ = open_app(browser, comfy_server)
    script = next(
        url for url in page.evaluate("() => fetch('/extensions').then((r) => r.json())") if "keypoints_preview" in url
    )
    results = page.evaluate(
        """async (script) => {
            const { parseKeypoints } = await import(script);
            const view = Array.from({ length: 17 }, (_, i) => [i / 17, 0.5, 1]);
            return {
                one: parseKeypoints(JSON.stringify(view)),
                two: parseKeypoints(JSON.stringify([view, view])),
                flat: parseKeypoints(JSON.stringify(view.flat())),
                badJson: parseKeypoints("[1,"),
                short: parseKeypoints("[[0.1, 0.2, 1]]"),
            };
        }""",
        script,
    )
    page.close()
    assert len(results["one"]["views"]) == 1 and len(results["two"]["views"]) == 2
    assert results["flat"]["views"][0][16] == pytest.approx([16 / 17, 0.5, 1])
    assert results["badJson"]["error"] == "not valid JSON"
    assert "not 17" in results["short"]["error"]


def test_faces_report_shows_on_the_node(browser, comfy_server, baseline_errors: set[str], test_output: Path) -> None:
    """The report the server sends as ui text (BoLID Faces Of One Person) is drawn on the node, flagged line and all."""
    page, errors = open_app(browser, comfy_server)
    report = "Faces: 3\nMean cosine 0.41\nFace 2 looks like a different person (mean cosine 0.02 to the others)."
    state = page.evaluate(
        """(report) => {
            const node = window.LiteGraph.createNode("BoLIDFacesOfOnePerson");
            window.app.graph.add(node);
            const before = node.size[1];
            node.onExecuted({ text: [report] });
            window.app.canvas.setDirty(true, true);
            return {
                widgets: node.widgets.map((widget) => widget.name),
                shown: node.bolidReport,
                grew: node.size[1] > before,
            };
        }""",
        report,
    )
    page.evaluate(SHOW_WHOLE_GRAPH)
    page.wait_for_timeout(500)
    shot = test_output / "browser" / "faces_report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))
    page.close()
    assert "bolid_faces_report" in state["widgets"], "the faces report extension did not attach"
    assert state["shown"] == report and state["grew"], f"the report is not shown: {state}"
    added = sorted(set(errors) - baseline_errors)
    assert not added, "console errors the pack adds:\n" + "\n".join(added)
