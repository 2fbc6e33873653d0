"""Layout rules of the shipped UI workflows (workflows/*.json), read from the files alone.

Every workflow reads left to right in titled groups, explains itself in a note, has no node on top of another and
no wire running under a node, and has its .jpg thumbnail beside it. Wires are traced as the frontend draws them:
a cubic Bézier from the output slot to the input slot whose control points sit max(30, length/4) to the right of
the start and to the left of the end (tests/test_browser_workflows.py checks the slot positions in the browser).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bolid_dev.workflows import WORKFLOWS_DIR

UI_WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))
TITLE, SLOT = 30, 20  # LiteGraph's title bar and slot row heights


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _rect(node: dict) -> tuple[float, float, float, float]:
    """The node's box on the canvas, title bar included: (left, top, right, bottom)."""
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE, x + w, y + h


def _trace(start, end, steps: int = 400) -> np.ndarray:
    """Points of the wire, by de Casteljau's construction."""
    reach = max(30.0, float(np.hypot(end[0] - start[0], end[1] - start[1])) / 4)
    controls = np.array([start, (start[0] + reach, start[1]), (end[0] - reach, end[1]), end], dtype=np.float64)
    t = np.linspace(0.0, 1.0, steps)[:, None, None]
    points = np.broadcast_to(controls, (steps, 4, 2)).copy()
    while points.shape[1] > 1:
        points = (1 - t) * points[:, :-1] + t * points[:, 1:]
    return points[:, 0]


def _wires(ui: dict):
    nodes = {node["id"]: node for node in ui["nodes"]}
    for _, source, source_slot, target, target_slot, _ in ui["links"]:
        a, b = nodes[source], nodes[target]
        start = (a["pos"][0] + a["size"][0] - SLOT / 2 + 1, a["pos"][1] + (source_slot + 0.7) * SLOT)
        end = (b["pos"][0] + SLOT / 2, b["pos"][1] + (target_slot + 0.7) * SLOT)
        yield source, target, _trace(start, end)


def wires_under_nodes(ui: dict) -> list[str]:
    found = []
    for source, target, points in _wires(ui):
        for node in ui["nodes"]:
            if node["id"] in (source, target):
                continue
            left, top, right, bottom = _rect(node)
            inside = (points[:, 0] > left) & (points[:, 0] < right) & (points[:, 1] > top) & (points[:, 1] < bottom)
            if inside.any():
                found.append(f"wire {source} → {target} runs under node {node['id']} ({node['type']})")
    return found


def overlapping_nodes(ui: dict) -> list[str]:
    found = []
    nodes = ui["nodes"]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            (al, at, ar, ab), (bl, bt, br, bb) = _rect(a), _rect(b)
            if al < br and bl < ar and at < bb and bt < ab:
                found.append(f"node {a['id']} ({a['type']}) overlaps node {b['id']} ({b['type']})")
    return found


def test_there_are_ui_workflows() -> None:
    assert UI_WORKFLOWS, "workflows/ holds no UI workflow"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_groups_hold_every_node_left_to_right(path: Path) -> None:
    ui = _load(path)
    groups = ui["groups"]
    assert len(groups) >= 2, "a workflow reads in stages: one titled group each"
    assert all(group["title"].strip() for group in groups)
    lefts = [group["bounding"][0] for group in groups]
    assert lefts == sorted(lefts), "groups run left to right in stage order"
    for node in ui["nodes"]:
        if node["type"] == "Note":
            continue
        left, top, right, bottom = _rect(node)
        holders = [
            g["title"] for g in groups
            if g["bounding"][0] <= left and right <= g["bounding"][0] + g["bounding"][2]
            and g["bounding"][1] <= top and bottom <= g["bounding"][1] + g["bounding"][3]
        ]  # fmt: skip
        assert len(holders) == 1, f"node {node['id']} ({node['type']}) lies in groups {holders}, not in exactly one"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_a_note_explains_the_workflow(path: Path) -> None:
    notes = [node for node in _load(path)["nodes"] if node["type"] in ("Note", "MarkdownNote")]
    assert notes, "no Note node"
    text = notes[0]["widgets_values"][0]
    assert len(text) > 200 and "Knobs that matter" in text, f"the note says too little: {text[:80]!r}"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_no_node_overlaps_another(path: Path) -> None:
    assert not overlapping_nodes(_load(path))


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_no_wire_runs_under_a_node(path: Path) -> None:
    found = wires_under_nodes(_load(path))
    assert not found, "\n".join(found)


def test_the_checks_see_a_wire_under_a_node_and_an_overlap() -> None:
    """The rules catch a bad layout: a wire straight through a node, and two nodes on one spot."""
    node = lambda node_id, x, y: {"id": node_id, "type": "X", "pos": [x, y], "size": [200, 100]}  # noqa: E731
    ui = {"nodes": [node(1, 0, 0), node(2, 300, 0), node(3, 600, 0)], "links": [[1, 1, 0, 3, 0, "IMAGE"]]}
    assert wires_under_nodes(ui) == ["wire 1 → 3 runs under node 2 (X)"]
    ui["nodes"][1]["pos"] = [300, 300]
    assert wires_under_nodes(ui) == [] and overlapping_nodes(ui) == []
    ui["nodes"][1]["pos"] = [150, 50]
    assert overlapping_nodes(ui) == ["node 1 (X) overlaps node 2 (X)"]


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_thumbnail_beside_the_workflow_shows_it(path: Path) -> None:
    from bolid_dev.thumbnails import THUMBNAIL_SIZE, draw

    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"{thumbnail.name} is missing: run `python -m bolid_dev.thumbnails`"
    shipped = Image.open(io.BytesIO(thumbnail.read_bytes()))
    assert shipped.format == "JPEG" and shipped.size == THUMBNAIL_SIZE
    expected = np.asarray(draw(_load(path)), dtype=np.float64)
    difference = np.abs(np.asarray(shipped.convert("RGB"), dtype=np.float64) - expected).mean()
    assert difference < 4, f"{thumbnail.name} is stale (mean difference {difference:.1f}): run the script again"
