"""Tier 4: Debian's chromium drives the real ComfyUI frontend served by a server with the pack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser_app import SHOW_WHOLE_GRAPH, open_app, update_readme_copy

from bolid_dev.workflows import WORKFLOWS_DIR

UI_WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))
README_WORKFLOW, README_VIEWPORT, README_SIDE = "fastface_am2_dcg", {"width": 3600, "height": 1900}, 1800


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
                && (node.constructor.comfyClass === node.type || node.isVirtualNode === true),
            virtual: node.isVirtualNode === true,
            widgets: (node.widgets || []).map((widget) => widget.name),
        }))"""
    )
    assert sorted(node["type"] for node in loaded) == sorted(node["type"] for node in workflow["nodes"])
    missing = sorted({node["type"] for node in loaded if not node["registered"]})
    assert not missing, f"node types missing in the frontend: {missing}"
    # Only the frontend's own Note may be virtual (no server class): every other node runs on the server.
    assert {node["type"] for node in loaded if node["virtual"]} <= {"Note"}
    for node in loaded:
        if node["type"] == "BoLIDKeypointsFromJSON":
            assert "bolid_pose_preview" in node["widgets"], "the keypoints preview extension did not attach"

    if workflow_path.stem == README_WORKFLOW:  # shown in the README: big enough for the widgets to be drawn
        page.set_viewport_size(README_VIEWPORT)
    page.evaluate(SHOW_WHOLE_GRAPH)
    page.wait_for_timeout(500)
    shot = test_output / "browser" / f"{workflow_path.stem}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))
    page.close()
    if workflow_path.stem == README_WORKFLOW:
        update_readme_copy(shot, README_SIDE)
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
