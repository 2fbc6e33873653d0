"""Tier 4: the live loss chart on "BoLID Train Adapter" follows the server's "bolid.training.loss" messages."""

from __future__ import annotations

import json
from pathlib import Path

from browser_app import SHOW_WHOLE_GRAPH, open_app

from bolid_dev.workflows import WORKFLOWS_DIR

SEND_LOSSES = """async (messages) => {
    const { api } = await import("/scripts/api.js");
    for (const detail of messages) api.dispatchEvent(new CustomEvent("bolid.training.loss", { detail }));
    const node = window.app.graph.nodes.find((n) => n.type === "BoLIDTrainAdapter");
    window.app.canvas.setDirty(true, true);
    return { id: node.id, points: node.bolidLoss ?? null, widgets: node.widgets.map((w) => w.name) };
}"""


def message(node: str, step: int, loss: float, total: int = 4) -> dict:
    return {"node": node, "adapter": "mine", "step": step, "max": total, "terms": {"loss": loss, "diff": loss}}


def test_loss_chart_collects_the_steps_of_its_node(browser, comfy_server, baseline_errors, test_output: Path) -> None:
    page, errors = open_app(browser, comfy_server)
    workflow = json.loads((WORKFLOWS_DIR / "train_bolid_adapter.json").read_text())
    page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }", workflow)
    node_id = str(next(node["id"] for node in workflow["nodes"] if node["type"] == "BoLIDTrainAdapter"))
    sent = [message(node_id, 1, 0.9), message(node_id, 2, 0.7), message("999", 3, 5.0), message(node_id, 3, 0.4)]
    state = page.evaluate(SEND_LOSSES, sent)
    assert "bolid_loss_chart" in state["widgets"]
    assert [(p["step"], p["loss"]) for p in state["points"]] == [(1, 0.9), (2, 0.7), (3, 0.4)]
    page.evaluate(SHOW_WHOLE_GRAPH)
    page.wait_for_timeout(300)
    shot = test_output / "browser" / "training_loss_chart.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))
    # A new run of the same node (step 1 again) starts a new line.
    state = page.evaluate(SEND_LOSSES, [message(node_id, 1, 2.0)])
    assert [(p["step"], p["loss"]) for p in state["points"]] == [(1, 2.0)]
    page.close()
    added = sorted(set(errors) - baseline_errors)
    assert not added, "console errors the pack adds:\n" + "\n".join(added)
