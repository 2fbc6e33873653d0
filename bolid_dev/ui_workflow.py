"""Write the UI-format workflows (workflows/*.json) from the API-format ones (workflows/api/*.json).

    python -m bolid_dev.ui_workflow

The API file is the source of truth; the UI file is the same graph laid out for the editor by the layout
description in bolid_dev/workflow_layouts.py: one titled group per stage, left to right, and a note. Widget
order and socket types come from a live server's /object_info, so they match what the frontend builds.
A server test regenerates every UI file and fails if the committed one differs.

Wires are drawn by the frontend as cubic Béziers from an output slot to an input slot, with control points
pushed max(30, distance/4) to the right of the start and to the left of the end. The layout moves nodes down,
column by column, until no wire crosses a node other than its own two ends.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bolid_core.files import write_text_atomic

from .object_info import combo_options, input_specs
from .web_widgets import preview_height
from .workflow_layouts import LAYOUTS, Stage, WorkflowLayout
from .workflows import API_WORKFLOWS_DIR, WORKFLOWS_DIR

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NODE_WIDTH, COLUMN_GAP, ROW_GAP, MIN_NODE_HEIGHT = 340, 140, 40, 100
TITLE_HEIGHT, SLOT_HEIGHT = 30, 20  # LiteGraph.NODE_TITLE_HEIGHT, NODE_SLOT_HEIGHT
GROUP_PAD, GROUP_GAP, GROUP_TITLE_HEIGHT = 30, 70, 50
NOTE_WIDTH, NOTE_LINE_HEIGHT, NOTE_CHARS_PER_LINE = 640, 17, 82
WIRE_CLEARANCE = 12  # how far a wire keeps from a node it does not touch: above and below it
SIDE_CLEARANCE = 4  # and beside it
STAGE_COLOURS = {
    Stage.MODELS: "#3f789e", Stage.INPUTS: "#8A8", Stage.IDENTITY: "#a1309b",
    Stage.GUIDANCE: "#b06634", Stage.SAMPLING: "#88A", Stage.OUTPUT: "#b58b2a",
}  # fmt: skip
NOTE_COLOUR, NOTE_BGCOLOUR = "#432", "#653"  # LiteGraph's "yellow" node colours
FIT_VIEW = (1900, 1000)  # the view the workflow opens with shows the whole graph in about this many pixels


def _ordered_inputs(info: dict) -> list[tuple[str, list]]:
    specs = input_specs(info)
    order = info.get("input_order", {})
    names = order.get("required", []) + order.get("optional", []) if order else list(specs)
    return [(name, specs[name]) for name in names]


def _is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def _widget_default(node_id: str, class_type: str, name: str, spec: list, info: dict):
    """What the frontend shows (and sends) for a widget the API file leaves out: its default."""
    if name not in info["input"].get("optional", {}):
        raise ValueError(f"Node {node_id} ({class_type}) does not set its required input '{name}'.")
    options = spec[1] if len(spec) > 1 else {}
    if "default" in options:
        return options["default"]
    choices = combo_options(spec)
    if choices:
        return choices[0]
    raise ValueError(f"Node {node_id} ({class_type}) leaves out '{name}', which has no default: write its value.")


def with_widget_defaults(api: dict, object_info: dict) -> dict:
    """The API workflow with every widget the editor shows written out (defaults where the file leaves one out),
    as the frontend's own export would send it."""
    completed = json.loads(json.dumps(api))
    for node_id, node in completed.items():
        info = object_info[node["class_type"]]
        for name, spec in _ordered_inputs(info):
            if _is_widget(spec) and node["inputs"].get(name) is None:
                node["inputs"][name] = _widget_default(node_id, node["class_type"], name, spec, info)
    return completed


def _depths(api: dict) -> dict[str, int]:
    depths: dict[str, int] = {}

    def depth(node_id: str) -> int:
        if node_id not in depths:
            sources = [v[0] for v in api[node_id]["inputs"].values() if isinstance(v, list)]
            depths[node_id] = 1 + max((depth(s) for s in sources), default=-1)
        return depths[node_id]

    for node_id in api:
        depth(node_id)
    return depths


def _node_height(widgets: int, sockets: int, tall_widgets: int) -> int:
    # At least room for one more row: the frontend adds display widgets of its own (PreviewAny's text).
    return max(MIN_NODE_HEIGHT, 46 + 24 * (widgets + sockets) + 200 * tall_widgets)


def wire_points(start: tuple[float, float], end: tuple[float, float], samples: int) -> list[tuple[float, float]]:
    """The frontend's wire from an output slot to an input slot, as `samples` + 1 points of its cubic Bézier."""
    reach = max(30.0, math.dist(start, end) * 0.25)
    (x0, y0), (x3, y3) = start, end
    x1, x2 = x0 + reach, x3 - reach
    points = []
    for i in range(samples + 1):
        t = i / samples
        a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3
        points.append((a * x0 + b * x1 + c * x2 + d * x3, a * y0 + b * y0 + c * y3 + d * y3))
    return points


def output_slot(x: float, y: float, width: float, slot: int) -> tuple[float, float]:
    """Where the frontend draws output `slot` of a node whose body starts at (x, y)."""
    return x + width - SLOT_HEIGHT * 0.5 + 1, y + slot_offset(slot)


def input_slot(x: float, y: float, slot: int) -> tuple[float, float]:
    return x + SLOT_HEIGHT * 0.5, y + slot_offset(slot)


def slot_offset(slot: int) -> float:
    """A slot's height below the top of the node's body."""
    return (slot + 0.7) * SLOT_HEIGHT


@dataclass
class _Box:
    node_id: str
    stage: Stage
    column: int  # global column index, left to right
    width: int
    height: int  # the body, below the title bar
    x: float = 0.0
    y: float = 0.0  # top of the body; the title bar sits above it

    def output_slot(self, slot: int) -> tuple[float, float]:
        return output_slot(self.x, self.y, self.width, slot)

    def input_slot(self, slot: int) -> tuple[float, float]:
        return input_slot(self.x, self.y, slot)

    def blocks(self, point: tuple[float, float]) -> bool:
        x, y = point
        margin = WIRE_CLEARANCE
        return (
            self.x - SIDE_CLEARANCE <= x <= self.x + self.width + SIDE_CLEARANCE
            and self.y - TITLE_HEIGHT - margin <= y <= self.y + self.height + margin
        )


@dataclass(frozen=True)
class _Wire:
    source: str
    source_slot: int
    target: str
    target_slot: int


def _wire_points(wire: _Wire, boxes: dict[str, _Box]) -> list[tuple[float, float]]:
    start = boxes[wire.source].output_slot(wire.source_slot)
    end = boxes[wire.target].input_slot(wire.target_slot)
    return wire_points(start, end, samples=max(8, int(math.dist(start, end) / 8)))


def _crossings(wires: list[_Wire], boxes: dict[str, _Box]) -> list[tuple[_Wire, str]]:
    """(wire, node it runs under) for every such pair."""
    found = []
    for wire in wires:
        points = _wire_points(wire, boxes)
        for box in boxes.values():
            if box.node_id not in (wire.source, wire.target) and any(box.blocks(point) for point in points):
                found.append((wire, box.node_id))
    return found


def _stage_columns(api: dict, stages: dict[str, Stage]) -> dict[str, int]:
    """Column inside its stage: nodes fed by a node of the same stage stand to its right."""
    inner: dict[str, int] = {}

    def column(node_id: str) -> int:
        if node_id not in inner:
            same_stage = [
                value[0] for value in api[node_id]["inputs"].values()
                if isinstance(value, list) and stages[value[0]] == stages[node_id]
            ]  # fmt: skip
            inner[node_id] = 1 + max((column(s) for s in same_stage), default=-1)
        return inner[node_id]

    for node_id in api:
        column(node_id)
    return inner


def _place(boxes: dict[str, _Box], wires: list[_Wire], top: float, attempts: int = 300) -> None:
    """Heights as the smallest solution of difference constraints (y_b >= y_a + gap, solved as longest paths):
    nodes of a column do not overlap, and each wire passes wholly above or wholly below every node it would
    otherwise run under (a wire's Bézier stays between the heights of its two ends). Which side, and the order
    of the nodes in each column, are chosen greedily; orders are tried from API order, then shuffled with fixed
    seeds. The lowest of the first few layouts with no wire under a node is kept."""
    columns: dict[int, list[str]] = {}
    for box in sorted(boxes.values(), key=lambda b: (len(b.node_id), b.node_id)):
        columns.setdefault(box.column, []).append(box.node_id)
    best: tuple[int, float, dict[str, float]] | None = None
    successes = 0
    for attempt in range(attempts):
        rng = random.Random(attempt)  # noqa: S311 (fixed seeds: the same layout every time)
        orders = {c: (ids if attempt == 0 else rng.sample(ids, len(ids))) for c, ids in columns.items()}
        if not _try_layout(boxes, wires, top, orders, rng if attempt else None):
            continue
        score = (len(_crossings(wires, boxes)), max(b.y + b.height for b in boxes.values()))
        if best is None or score < best[:2]:
            best = (*score, {n: b.y for n, b in boxes.items()})
        successes += score[0] == 0
        if successes >= 4:
            break
    if best is None and _try_layout(boxes, wires, top, columns, None, strict=False):
        best = (len(_crossings(wires, boxes)), 0.0, {n: b.y for n, b in boxes.items()})
    if best is None:
        raise RuntimeError("No layout fits the nodes of a column without overlap.")
    # With no clean layout the one with the fewest wires under nodes is kept; tests/test_workflow_layout.py names it.
    for node_id, y in best[2].items():
        boxes[node_id].y = y


def _try_layout(
    boxes: dict[str, _Box],
    wires: list[_Wire],
    top: float,
    orders: dict[int, list[str]],
    rng: random.Random | None,
    strict: bool = True,
) -> bool:
    """One greedy layout; False when strict and some wire can pass a node on neither side."""
    packing = [
        (upper, lower, boxes[upper].height + TITLE_HEIGHT + ROW_GAP)
        for order in orders.values() for upper, lower in itertools.pairwise(order)
    ]  # fmt: skip
    clearances: dict[tuple[_Wire, str], bool] = {}  # (wire, node) → the node stays above the wire
    if not _solve(boxes, packing, top):
        return False
    # Constraints only for the pairs that cross; each one added can make others cross, which join in turn.
    pending = _crossings(wires, boxes)
    if rng is not None:
        rng.shuffle(pending)
    tried = set()
    while pending:
        for pair in pending:
            tried.add(pair)
            if not _add_clearance(clearances, *pair, boxes, packing, top) and strict:
                return False
        pending = [pair for pair in _crossings(wires, boxes) if pair not in tried]
    return True


def _add_clearance(clearances: dict, wire: _Wire, node_id: str, boxes: dict[str, _Box], packing: list, top: float):
    """Keep the node above the wire or below it, whichever it is nearer now and the other constraints allow."""
    box = boxes[node_id]
    ends = (boxes[wire.source].output_slot(wire.source_slot)[1], boxes[wire.target].input_slot(wire.target_slot)[1])
    prefer_above = box.y + box.height / 2 < sum(ends) / 2
    for above in (prefer_above, not prefer_above):
        clearances[(wire, node_id)] = above
        if _solve(boxes, packing + _clearance_constraints(clearances, boxes), top):
            return True
    del clearances[(wire, node_id)]
    return False


def _clearance_constraints(clearances: dict[tuple[_Wire, str], bool], boxes: dict[str, _Box]) -> list:
    constraints = []
    for (wire, node_id), above in clearances.items():
        box = boxes[node_id]
        ends = ((wire.source, slot_offset(wire.source_slot)), (wire.target, slot_offset(wire.target_slot)))
        for end, offset in ends:
            if above:  # node bottom + clearance <= wire end
                constraints.append((node_id, end, box.height + WIRE_CLEARANCE - offset))
            else:  # wire end + clearance <= node top (its title bar)
                constraints.append((end, node_id, offset + WIRE_CLEARANCE + TITLE_HEIGHT))
    return constraints


def _solve(boxes: dict[str, _Box], constraints: list[tuple[str, str, float]], top: float) -> bool:
    """Set the boxes' heights to the smallest solution; False (boxes untouched) when there is none."""
    heights = {node_id: top for node_id in boxes}
    for _ in range(len(boxes) + 1):
        changed = False
        for a, b, gap in constraints:
            if heights[b] < heights[a] + gap - 1e-6:
                heights[b] = heights[a] + gap
                changed = True
        if not changed:
            for node_id, y in heights.items():
                boxes[node_id].y = y
            return True
    return False


def _note_height(text: str) -> int:
    lines = sum(max(1, math.ceil(len(line) / NOTE_CHARS_PER_LINE)) for line in text.splitlines())
    return 40 + NOTE_LINE_HEIGHT * lines


def api_to_ui(api: dict, object_info: dict, layout: WorkflowLayout) -> dict:
    node_ids = sorted(api, key=lambda n: (len(n), n))
    depths = _depths(api)
    order = sorted(node_ids, key=lambda n: (depths[n], len(n), n))
    stages = {node_id: layout.stage_of(node_id, api[node_id]["class_type"]) for node_id in node_ids}
    links, nodes, wires = [], [], []
    outgoing: dict[tuple[str, int], list[int]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for node_id in node_ids:
        node = api[node_id]
        info = object_info[node["class_type"]]
        inputs, widgets_values, tall_widgets = [], [], 0
        for name, spec in _ordered_inputs(info):
            value = node["inputs"].get(name)
            if _is_widget(spec):
                if value is None:
                    value = _widget_default(node_id, node["class_type"], name, spec, info)
                widgets_values.append(value)
                options = spec[1] if len(spec) > 1 else {}
                # Text boxes and image uploads (with their preview) need room beyond one widget row.
                tall_widgets += bool(options.get("multiline") or options.get("image_upload"))
                if options.get("control_after_generate"):
                    widgets_values.append("fixed")
                continue
            link_id = None
            if isinstance(value, list):
                source = str(value[0])
                if stages[source] > stages[node_id]:
                    raise ValueError(
                        f"Node {node_id} ({node['class_type']}, stage {stages[node_id].name}) reads node {source} "
                        f"of the later stage {stages[source].name}: move one of them in bolid_dev/workflow_layouts.py."
                    )
                link_id = len(links) + 1
                links.append([link_id, int(source), value[1], int(node_id), len(inputs), spec[0]])
                outgoing.setdefault((source, value[1]), []).append(link_id)
                wires.append(_Wire(source, value[1], node_id, len(inputs)))
            inputs.append({"name": name, "type": spec[0], "link": link_id})
        sockets = max(len(inputs), len(info["output"]))
        body = _node_height(len(widgets_values), sockets, tall_widgets) + preview_height(node["class_type"])
        sizes[node_id] = (NODE_WIDTH, body)
        nodes.append({
            "id": int(node_id), "type": node["class_type"], "pos": [0, 0],
            "size": list(sizes[node_id]), "flags": {}, "order": order.index(node_id), "mode": 0,
            "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widgets_values,
        })  # fmt: skip

    # Columns: stages left to right, and inside a stage the nodes fed by the same stage further right.
    inner = _stage_columns(api, stages)
    column_keys = sorted({(stages[n], inner[n]) for n in node_ids})
    column_index = {key: i for i, key in enumerate(column_keys)}
    boxes = {
        n: _Box(n, stages[n], column_index[(stages[n], inner[n])], *sizes[n]) for n in node_ids
    }  # fmt: skip
    note_text = layout.note_text()
    note_size = (NOTE_WIDTH, _note_height(note_text))
    group_top = note_size[1] + 40
    node_top = group_top + GROUP_TITLE_HEIGHT + TITLE_HEIGHT
    x, group_x, column_x = 0.0, {}, []
    for stage, _ in column_keys:  # sorted by stage
        if stage not in group_x:
            if group_x:
                x += GROUP_PAD - COLUMN_GAP + GROUP_GAP
            group_x[stage] = x
            x += GROUP_PAD
        column_x.append(x)
        x += NODE_WIDTH + COLUMN_GAP
    x += GROUP_PAD - COLUMN_GAP + GROUP_GAP
    for box in boxes.values():
        box.x = column_x[box.column]
    _place(boxes, wires, node_top)

    bottom = max(b.y + b.height for b in boxes.values()) + GROUP_PAD
    groups = []
    for number, (stage, left) in enumerate(sorted(group_x.items()), start=1):
        right = max(b.x + b.width for b in boxes.values() if b.stage == stage) + GROUP_PAD
        groups.append({
            "id": number, "title": layout.group_title(stage), "bounding": [left, group_top, right - left,
            bottom - group_top], "color": STAGE_COLOURS[stage], "font_size": 24, "flags": {},
        })  # fmt: skip
    for ui_node in nodes:
        box = boxes[str(ui_node["id"])]
        ui_node["pos"] = [round(box.x), round(box.y)]
        info = object_info[ui_node["type"]]
        for slot, (kind, name) in enumerate(zip(info["output"], info["output_name"], strict=True)):
            ui_node["outputs"].append(
                {"name": name, "type": kind, "links": outgoing.get((str(ui_node["id"]), slot), []), "slot_index": slot}
            )
    note_id = max(int(n) for n in node_ids) + 1
    nodes.append({
        "id": note_id, "type": "Note", "pos": [0, TITLE_HEIGHT], "size": list(note_size), "flags": {},
        "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
        "widgets_values": [note_text], "color": NOTE_COLOUR, "bgcolor": NOTE_BGCOLOUR,
    })  # fmt: skip
    width, height = max(x - GROUP_GAP, NOTE_WIDTH), bottom
    scale = round(min(1.0, FIT_VIEW[0] / width, FIT_VIEW[1] / height), 3)
    return {
        "last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": links, "groups": groups,
        "config": {}, "extra": {"ds": {"scale": scale, "offset": [30, 30]}}, "version": 0.4,
    }  # fmt: skip


def layout_for(name: str) -> WorkflowLayout:
    if name not in LAYOUTS:
        raise ValueError(
            f"workflows/api/{name}.json has no layout: add LAYOUTS['{name}'] (note and group titles) to "
            "bolid_dev/workflow_layouts.py."
        )
    return LAYOUTS[name]


def render(api_path: Path, object_info: dict, api: dict | None = None) -> str:
    """The UI file of the API workflow at `api_path` (`api`: its graph, when already read)."""
    api = json.loads(api_path.read_text()) if api is None else api
    ui = api_to_ui(api, object_info, layout_for(api_path.stem))
    return json.dumps(ui, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .client import ComfyClient
    from .runtime import comfy_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write-defaults", action="store_true",
        help="first write every widget an API workflow leaves out (its default) into workflows/api/*.json, as the "
        "frontend's own export has it",
    )  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as base:
        with comfy_server(Path(base), with_test_models=False, log_path=Path(base) / "logs" / "comfyui.log") as server:
            object_info = ComfyClient(server).object_info()
    for api_path in sorted(API_WORKFLOWS_DIR.glob("*.json")):
        api = json.loads(api_path.read_text())
        if args.write_defaults:
            api = with_widget_defaults(api, object_info)
            write_text_atomic(api_path, json.dumps(api, indent=2, ensure_ascii=False) + "\n")
        target = WORKFLOWS_DIR / api_path.name
        write_text_atomic(target, render(api_path, object_info, api))
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
