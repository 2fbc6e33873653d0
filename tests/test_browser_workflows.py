"""Tier 4: each shipped UI workflow, loaded in the real frontend and exported by it to API format, is the shipped
API workflow (ids aside), and the frontend draws its wires from the slot positions the layout rules assume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser_app import open_app

from bolid_dev.workflows import API_WORKFLOWS_DIR, WORKFLOWS_DIR

UI_WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))
SLOT_TOLERANCE = 2.0  # pixels

EXPORT = """async (workflow) => {
    await window.app.loadGraphData(workflow);
    const { output } = await window.app.graphToPrompt();
    const slots = [];
    for (const link of workflow.links) {
        const [id, source, sourceSlot, target, targetSlot] = link;
        const a = window.app.graph.getNodeById(source), b = window.app.graph.getNodeById(target);
        const output = Array.from(a.getOutputPos(sourceSlot)), input = Array.from(b.getInputPos(targetSlot));
        slots.push({ id, output, input });
    }
    const boxes = window.app.graph.nodes.map(
        (node) => ({ id: node.id, pos: Array.from(node.pos), size: Array.from(node.size) }),
    );
    return { output, slots, boxes };
}"""


def _number(value):
    # JavaScript has one number type: the frontend sends 0.0 as 0.
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def canonical(prompt: dict) -> list[str]:
    """The graph with ids replaced by what each node is: its class, widget values and, recursively, its sources.
    Two prompts that differ only in their node ids give the same sorted list."""
    memo: dict[str, str] = {}

    def describe(node_id: str) -> str:
        if node_id not in memo:
            node = prompt[node_id]
            inputs = {}
            for name, value in sorted(node["inputs"].items()):
                is_link = isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt
                inputs[name] = {"from": describe(str(value[0])), "slot": value[1]} if is_link else _number(value)
            memo[node_id] = json.dumps({"class_type": node["class_type"], "inputs": inputs}, sort_keys=True)
        return memo[node_id]

    return sorted(describe(node_id) for node_id in prompt)


def _differences(shipped: dict, exported: dict) -> list[str]:
    """Readable differences, node by node, where the ids match (the generator keeps the API ids)."""
    found = [f"node {n} only in the API file" for n in shipped.keys() - exported.keys()]
    found += [f"node {n} only in the frontend's export" for n in exported.keys() - shipped.keys()]
    for node_id in shipped.keys() & exported.keys():
        if shipped[node_id]["class_type"] != exported[node_id]["class_type"]:
            found.append(f"node {node_id}: API file {shipped[node_id]['class_type']}, frontend {exported[node_id]}")
        a, b = shipped[node_id]["inputs"], exported[node_id]["inputs"]
        for name in sorted(a.keys() | b.keys()):
            if a.get(name, "<absent>") != b.get(name, "<absent>"):
                found.append(
                    f"node {node_id} ({shipped[node_id]['class_type']}) {name}: API file {a.get(name, '<absent>')!r}, "
                    f"frontend {b.get(name, '<absent>')!r}"
                )
    return found


def test_canonical_form_ignores_ids_and_sees_wiring() -> None:
    a = {"1": {"class_type": "A", "inputs": {"x": 1}}, "2": {"class_type": "B", "inputs": {"a": ["1", 0]}}}
    b = {"7": {"class_type": "A", "inputs": {"x": 1}}, "3": {"class_type": "B", "inputs": {"a": ["7", 0]}}}
    assert canonical(a) == canonical(b)
    b["3"]["inputs"]["a"] = ["7", 1]
    assert canonical(a) != canonical(b)
    b["3"]["inputs"]["a"] = ["7", 0]
    b["7"]["inputs"]["x"] = 1.0
    assert canonical(a) == canonical(b)
    b["7"]["inputs"]["x"] = 2
    assert canonical(a) != canonical(b)


@pytest.mark.parametrize("workflow_path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_frontend_export_is_the_shipped_api_workflow(browser, comfy_server, client, workflow_path: Path) -> None:
    page, _ = open_app(browser, comfy_server)
    ui = json.loads(workflow_path.read_text())
    state = page.evaluate(EXPORT, ui)
    page.close()
    # The layout rules (tests/test_workflow_layout.py) trace wires from these slot positions and node boxes.
    nodes = {node["id"]: node for node in ui["nodes"]}
    for slot in state["slots"]:
        _, source, source_slot, target, target_slot, _ = next(link for link in ui["links"] if link[0] == slot["id"])
        a, b = nodes[source], nodes[target]
        modelled_output = (a["pos"][0] + a["size"][0] - 9, a["pos"][1] + (source_slot + 0.7) * 20)
        modelled_input = (b["pos"][0] + 10, b["pos"][1] + (target_slot + 0.7) * 20)
        assert slot["output"] == pytest.approx(modelled_output, abs=SLOT_TOLERANCE), f"link {slot['id']} output"
        assert slot["input"] == pytest.approx(modelled_input, abs=SLOT_TOLERANCE), f"link {slot['id']} input"
    for box in state["boxes"]:
        node = nodes[box["id"]]
        assert box["pos"] == pytest.approx(node["pos"]), f"node {box['id']} moved"
        assert box["size"][0] <= node["size"][0] + 1 and box["size"][1] <= node["size"][1] + 1, (
            f"node {box['id']} ({node['type']}) grew from {node['size']} to {box['size']} in the frontend"
        )

    shipped = json.loads((API_WORKFLOWS_DIR / workflow_path.name).read_text())
    # Inputs no node declares are the frontend's own display widgets (PreviewAny's text); the server drops them.
    info = client.object_info()
    exported = {}
    for node_id, node in state["output"].items():
        spec = info[node["class_type"]]["input"]
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        inputs = {name: value for name, value in node["inputs"].items() if name in declared}
        exported[node_id] = {"class_type": node["class_type"], "inputs": inputs}
    assert canonical(exported) == canonical(shipped), (
        f"the frontend's export of workflows/{workflow_path.name} differs from workflows/api/{workflow_path.name}:\n"
        + "\n".join(_differences(shipped, exported))
    )
