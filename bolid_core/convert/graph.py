"""Reading and writing ComfyUI workflows, UI format (nodes/links/widgets_values) and API format
({id: {class_type, inputs}}), as one graph of nodes whose inputs are literals or references to output slots."""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from typing import Any

from .schemas import WRITTEN_NODES, NodeLayout

REROUTE = "Reroute"
_COLUMN, _NODE_WIDTH, _ROW_GAP = 380, 340, 30


class WorkflowError(ValueError):
    """The input is not a workflow this converter can read."""


class Format(str, enum.Enum):
    UI = "ui"
    API = "api"


@dataclass(frozen=True)
class Ref:
    """Output `slot` of node `node`."""

    node: str
    slot: int


@dataclass
class Node:
    id: str
    class_type: str
    inputs: dict[str, Any] = field(default_factory=dict)  # by name: a literal or a Ref
    raw: dict | None = None  # a node kept as it was: its JSON (UI or API)
    slot_links: dict[int, Ref] = field(default_factory=dict)  # UI raw nodes: input slot -> source
    anchor: str | None = None  # a written node: the node it stands in for (its place on the canvas)
    notes: list[str] = field(default_factory=list)  # reading notes (defaults filled in, ...)


@dataclass
class Workflow:
    format: Format
    nodes: dict[str, Node]
    document: dict


# --- reading --------------------------------------------------------------------------------------------------------


def detect_format(document: object) -> Format:
    if isinstance(document, dict) and isinstance(document.get("nodes"), list) and "links" in document:
        return Format.UI
    if (
        isinstance(document, dict)
        and document
        and all(isinstance(node, dict) and "class_type" in node for node in document.values())
    ):
        return Format.API
    raise WorkflowError(
        "Not a ComfyUI workflow: expected the UI format (an object with 'nodes' and 'links', as saved by the "
        "editor) or the API format (an object of {id: {class_type, inputs}}, from 'Export (API)')."
    )


def read_workflow(document: object, peer_layouts: dict[str, NodeLayout]) -> Workflow:
    """The graph; nodes whose type is in `peer_layouts` get their inputs by name (to be converted), the others
    are kept as raw JSON."""
    if isinstance(document, dict) and "prompt" in document and isinstance(document["prompt"], dict):
        document = document["prompt"]  # the body of a POST /prompt
    fmt = detect_format(document)
    nodes = _read_ui(document, peer_layouts) if fmt is Format.UI else _read_api(document, peer_layouts)
    return Workflow(fmt, nodes, document)


def _link_fields(link: object) -> tuple[int, str, int, str, int, str]:
    if isinstance(link, dict):  # the newer frontend's object form
        return (link["id"], str(link["origin_id"]), link["origin_slot"], str(link["target_id"]),
                link["target_slot"], link.get("type", "*"))  # fmt: skip
    if isinstance(link, list) and len(link) >= 5:
        return link[0], str(link[1]), link[2], str(link[3]), link[4], link[5] if len(link) > 5 else "*"
    raise WorkflowError(f"Malformed link {link!r}: expected [id, origin, slot, target, slot, type].")


def _read_ui(document: dict, peer_layouts: dict[str, NodeLayout]) -> dict[str, Node]:
    try:
        links = {fields[0]: fields for fields in map(_link_fields, document["links"] or [])}
        raw_nodes = {str(node["id"]): node for node in document["nodes"]}
    except (KeyError, TypeError) as error:
        raise WorkflowError(f"Malformed UI workflow: a node or link lacks {error}.") from error

    def origin(link_id: int, through_reroutes: bool) -> Ref | None:
        seen = set()
        while link_id in links and link_id not in seen:
            seen.add(link_id)
            _, source, slot, _, _, _ = links[link_id]
            upstream = raw_nodes.get(source)
            if not (through_reroutes and upstream is not None and upstream.get("type") == REROUTE):
                return Ref(source, slot)
            feeding = [entry.get("link") for entry in upstream.get("inputs") or []]
            if not feeding or feeding[0] is None:
                return None
            link_id = feeding[0]
        return None

    nodes = {}
    for node_id, raw in raw_nodes.items():
        class_type = raw.get("type")
        if not isinstance(class_type, str):
            raise WorkflowError(f"Malformed UI workflow: node {node_id} has no type.")
        layout = peer_layouts.get(class_type)
        if layout is None:
            slot_links = {}
            for slot, entry in enumerate(raw.get("inputs") or []):
                if entry.get("link") is not None and (source := origin(entry["link"], False)) is not None:
                    slot_links[slot] = source
            nodes[node_id] = Node(node_id, class_type, raw=raw, slot_links=slot_links)
            continue
        node = Node(node_id, class_type, raw=raw)
        values = raw.get("widgets_values")
        widgets = layout.widgets
        if isinstance(values, dict):
            node.inputs.update({spec.name: values[spec.name] for spec in widgets if spec.name in values})
        else:
            values = list(values or [])
            for spec, value in zip(widgets, values, strict=False):
                node.inputs[spec.name] = value
            if len(values) < len(widgets):
                missing = [spec.name for spec in widgets[len(values) :]]
                node.notes.append(f"saved by an older version without {', '.join(missing)}: their defaults used")
        for spec in widgets:
            node.inputs.setdefault(spec.name, spec.default)
        for entry in raw.get("inputs") or []:
            name = (entry.get("widget") or {}).get("name") or entry.get("name")
            if entry.get("link") is not None and (source := origin(entry["link"], True)) is not None:
                node.inputs[name] = source
        nodes[node_id] = node
    return nodes


def _read_api(document: dict, peer_layouts: dict[str, NodeLayout]) -> dict[str, Node]:
    nodes = {}
    for node_id, raw in document.items():
        inputs = raw.get("inputs")
        if not isinstance(inputs, dict):
            raise WorkflowError(f"Malformed API workflow: node {node_id} has no 'inputs' object.")
        parsed = {name: _api_value(value) for name, value in inputs.items()}
        node = Node(str(node_id), raw["class_type"], parsed, raw=raw)
        layout = peer_layouts.get(raw["class_type"])
        if layout is not None:
            for spec in layout.widgets:
                node.inputs.setdefault(spec.name, spec.default)
        nodes[str(node_id)] = node
    return nodes


def _api_value(value: object) -> object:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str | int) and isinstance(value[1], int):
        return Ref(str(value[0]), value[1])
    return value


# --- writing --------------------------------------------------------------------------------------------------------


class NodeIds:
    """Fresh node ids: integers after the largest one (API ids of other shapes get `<anchor>_<n>`)."""

    def __init__(self, workflow: Workflow) -> None:
        numbers = [int(node_id) for node_id in workflow.nodes if node_id.isdigit()]
        last = workflow.document.get("last_node_id", 0) if workflow.format is Format.UI else 0
        self._next = max([*numbers, int(last or 0)], default=0) + 1
        self._numeric = workflow.format is Format.UI or len(numbers) == len(workflow.nodes)
        self._taken = set(workflow.nodes)

    def new(self, anchor: str) -> str:
        if self._numeric:
            node_id, self._next = str(self._next), self._next + 1
            return node_id
        suffix = 1
        while f"{anchor}_{suffix}" in self._taken:
            suffix += 1
        self._taken.add(f"{anchor}_{suffix}")
        return f"{anchor}_{suffix}"


def write_workflow(workflow: Workflow, nodes: list[Node]) -> dict:
    return _write_ui(workflow, nodes) if workflow.format is Format.UI else _write_api(nodes)


def _write_api(nodes: list[Node]) -> dict:
    out = {}
    for node in nodes:
        if node.raw is not None:
            written = copy.deepcopy(node.raw)
            written["inputs"] = {name: _api_literal(value) for name, value in node.inputs.items()}
        else:
            layout = WRITTEN_NODES[node.class_type]
            inputs = {spec.name: spec.default for spec in layout.widgets if not spec.optional}
            inputs.update(node.inputs)
            ordered = {spec.name: inputs[spec.name] for spec in layout.inputs if spec.name in inputs}
            written = {"inputs": {name: _api_literal(value) for name, value in ordered.items()},
                       "class_type": node.class_type}  # fmt: skip
        out[node.id] = written
    return out


def _api_literal(value: object) -> object:
    return [value.node, value.slot] if isinstance(value, Ref) else value


def _write_ui(workflow: Workflow, nodes: list[Node]) -> dict:
    document = copy.deepcopy(workflow.document)
    old_links = {}
    link_tuple_form = True
    for link in workflow.document.get("links") or []:
        link_id, source, slot, target, target_slot, _ = _link_fields(link)
        old_links[(source, slot, target, target_slot)] = link_id
        link_tuple_form = not isinstance(link, dict)
    next_link = max([*old_links.values(), int(document.get("last_link_id") or 0)], default=0) + 1
    by_id = {node.id: node for node in nodes}
    anchors = {node.id: node.raw for node in workflow.nodes.values() if node.raw is not None}
    written: dict[str, dict] = {}
    below: dict[str, float] = {}
    for node in nodes:
        if _is_kept(node):
            written[node.id] = copy.deepcopy(node.raw)
        else:
            written[node.id] = _ui_node(node, anchors.get(node.anchor), below)

    def output_type(ref: Ref) -> str:
        source = by_id[ref.node]
        if _is_kept(source):
            outputs = written[ref.node].get("outputs") or []
            return outputs[ref.slot].get("type", "*") if ref.slot < len(outputs) else "*"
        return WRITTEN_NODES[source.class_type].outputs[ref.slot][1]

    links, outgoing = [], {}
    for node in nodes:
        ui_node = written[node.id]
        entries = ui_node.get("inputs") or []
        targets = node.slot_links if _is_kept(node) else _ui_input_links(node, entries)
        for slot, entry in enumerate(entries):
            source = targets.get(slot)
            if source is None or source.node not in by_id:
                entry["link"] = None
                continue
            key = (source.node, source.slot, node.id, slot)
            link_id = old_links.get(key)
            if link_id is None:
                link_id, next_link = next_link, next_link + 1
            entry["link"] = link_id
            kind = output_type(source)
            links.append([link_id, _id(source.node), source.slot, _id(node.id), slot, kind])
            outgoing.setdefault((source.node, source.slot), []).append(link_id)
    for node_id, ui_node in written.items():
        for slot, entry in enumerate(ui_node.get("outputs") or []):
            found = outgoing.get((node_id, slot), [])
            entry["links"] = found if found or entry.get("links") is not None else None
    links.sort(key=lambda link: link[0])
    if not link_tuple_form:
        keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
        links = [dict(zip(keys, link, strict=True)) for link in links]
    document["nodes"] = list(written.values())
    document["links"] = links
    document["last_node_id"] = max([_id(node_id) for node_id in written] + [document.get("last_node_id") or 0])
    document["last_link_id"] = max([link[0] if isinstance(link, list) else link["id"] for link in links] +
                                   [document.get("last_link_id") or 0])  # fmt: skip
    return document


def _is_kept(node: Node) -> bool:
    return node.raw is not None


def _id(node_id: str) -> int | str:
    return int(node_id) if node_id.isdigit() else node_id


def _ui_input_links(node: Node, entries: list[dict]) -> dict[int, Ref]:
    return {
        slot: node.inputs[entry["name"]]
        for slot, entry in enumerate(entries)
        if isinstance(node.inputs.get(entry["name"]), Ref)
    }


def _ui_node(node: Node, anchor: dict | None, below: dict[str, float]) -> dict:
    """A written node in the editor's layout: every socket, linked widgets as sockets, every widget's value."""
    layout = WRITTEN_NODES[node.class_type]
    inputs = [{"name": spec.name, "type": spec.type, "link": None} for spec in layout.sockets]
    widgets_values = []
    for spec in layout.widgets:
        value = node.inputs.get(spec.name, spec.default)
        if isinstance(value, Ref):
            inputs.append({"name": spec.name, "type": spec.type, "link": None, "widget": {"name": spec.name}})
            value = spec.default
        widgets_values.append(value)
        if spec.control_after_generate:
            widgets_values.append("fixed")
    outputs = [{"name": name, "type": kind, "links": [], "slot_index": slot}
               for slot, (name, kind) in enumerate(layout.outputs)]  # fmt: skip
    height = 46 + 24 * (len(widgets_values) + max(len(inputs), len(outputs)))
    anchor = anchor or {}
    x, y = _position(anchor.get("pos"))
    if node.anchor is not None and node.anchor != node.id:  # a helper node: below its anchor's column
        anchor_height = _position(anchor.get("size"))[1] or 200
        offset = below.get(node.anchor, anchor_height + _ROW_GAP)
        below[node.anchor] = offset + height + _ROW_GAP
        x, y = x - _COLUMN, y + offset
    ui_node = {
        "id": _id(node.id), "type": node.class_type, "pos": [x, y], "size": [_NODE_WIDTH, height], "flags": {},
        "order": anchor.get("order", 0), "mode": anchor.get("mode", 0) if node.anchor == node.id else 0,
        "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": node.class_type},
        "widgets_values": widgets_values,
    }  # fmt: skip
    if node.anchor == node.id:
        for key in ("title", "color", "bgcolor"):
            if key in anchor:
                ui_node[key] = anchor[key]
    return ui_node


def _position(value: object) -> tuple[float, float]:
    if isinstance(value, dict):  # old frontends: {"0": x, "1": y}
        return float(value.get("0", 0)), float(value.get("1", 0))
    if isinstance(value, list | tuple) and len(value) >= 2:
        return float(value[0]), float(value[1])
    return 0.0, 0.0
