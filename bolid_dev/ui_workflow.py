"""Write the UI-format workflows (workflows/*.json) from the API-format ones (workflows/api/*.json).

    python -m bolid_dev.ui_workflow

The API file is the source of truth; the UI file is the same graph laid out for the editor. Widget
order and socket types come from a live server's /object_info, so they match what the frontend builds.
A server test regenerates every UI file and fails if the committed one differs.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from .workflows import API_WORKFLOWS_DIR, WORKFLOWS_DIR

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
COLUMN_WIDTH, NODE_WIDTH, ROW_GAP = 400, 340, 30


def _ordered_inputs(info: dict) -> list[tuple[str, list]]:
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    order = info.get("input_order", {})
    names = order.get("required", []) + order.get("optional", []) if order else list(specs)
    return [(name, specs[name]) for name in names]


def _is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


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
    return 46 + 24 * (widgets + sockets) + 200 * tall_widgets


def api_to_ui(api: dict, object_info: dict) -> dict:
    node_ids = sorted(api, key=lambda n: (len(n), n))
    depths = _depths(api)
    order = sorted(node_ids, key=lambda n: (depths[n], len(n), n))
    next_y: dict[int, int] = {}
    links, nodes = [], []
    outgoing: dict[tuple[str, int], list[int]] = {}
    for node_id in node_ids:
        node = api[node_id]
        info = object_info[node["class_type"]]
        inputs, widgets_values, tall_widgets = [], [], 0
        for name, spec in _ordered_inputs(info):
            value = node["inputs"].get(name)
            if _is_widget(spec):
                if value is None:
                    continue
                widgets_values.append(value)
                options = spec[1] if len(spec) > 1 else {}
                # Text boxes and image uploads (with their preview) need room beyond one widget row.
                tall_widgets += bool(options.get("multiline") or options.get("image_upload"))
                if options.get("control_after_generate"):
                    widgets_values.append("fixed")
                continue
            link_id = None
            if isinstance(value, list):
                link_id = len(links) + 1
                links.append([link_id, int(value[0]), value[1], int(node_id), len(inputs), spec[0]])
                outgoing.setdefault((value[0], value[1]), []).append(link_id)
            inputs.append({"name": name, "type": spec[0], "link": link_id})
        column = depths[node_id]
        sockets = max(len(inputs), len(info["output"]))
        height = _node_height(len(widgets_values), sockets, tall_widgets)
        y = next_y.get(column, 60)
        next_y[column] = y + height + ROW_GAP
        nodes.append({
            "id": int(node_id), "type": node["class_type"], "pos": [60 + column * COLUMN_WIDTH, y],
            "size": [NODE_WIDTH, height], "flags": {}, "order": order.index(node_id), "mode": 0,
            "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widgets_values,
        })  # fmt: skip
    for ui_node in nodes:
        info = object_info[ui_node["type"]]
        for slot, (kind, name) in enumerate(zip(info["output"], info["output_name"], strict=True)):
            ui_node["outputs"].append(
                {"name": name, "type": kind, "links": outgoing.get((str(ui_node["id"]), slot), []), "slot_index": slot}
            )
    return {
        "last_node_id": max(int(n) for n in node_ids), "last_link_id": len(links), "nodes": nodes,
        "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4,
    }  # fmt: skip


def render(api_path: Path, object_info: dict) -> str:
    return json.dumps(api_to_ui(json.loads(api_path.read_text()), object_info), indent=2) + "\n"


def main() -> int:
    from .client import ComfyClient
    from .runtime import comfy_server

    with tempfile.TemporaryDirectory() as base:
        with comfy_server(Path(base), with_test_models=False, log_path=Path(base) / "logs" / "comfyui.log") as server:
            object_info = ComfyClient(server).object_info()
    for api_path in sorted(API_WORKFLOWS_DIR.glob("*.json")):
        target = WORKFLOWS_DIR / api_path.name
        target.write_text(render(api_path, object_info))
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
