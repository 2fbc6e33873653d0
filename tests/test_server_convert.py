"""Tier 3: IPAdapter_plus workflows converted by bolid_core.convert validate against a live server's /object_info
and run through /prompt on the tiny models; the converter's table of our nodes matches the server's schemas."""

from __future__ import annotations

import copy

import pytest
from ipadapter_workflows import api_workflow, load_embeds, ui_workflow

from bolid_core.adapter.presets import preset_file_names
from bolid_core.convert import convert_workflow
from bolid_core.convert.graph import REROUTE
from bolid_core.convert.schemas import CORE_NODES, OUR_NODES, WIDGET_TYPES
from bolid_dev.workflows import with_tiny_models

SAVE_NODE = "7"
RUN_WORKFLOWS = [
    "simple", "advanced", "faceid", "style_composition", "precise_style", "layer_weights", "negative_noise",
    "tiled", "combine_references", "combine_embeds",
]  # fmt: skip


def _specs(info: dict) -> tuple[dict, dict]:
    return info["input"].get("required", {}), info["input"].get("optional", {})


def _kind(spec: list) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _combo_values(spec: list) -> list:
    return spec[0] if isinstance(spec[0], list) else _options(spec).get("options", [])


@pytest.mark.parametrize("class_type", sorted({**OUR_NODES, **CORE_NODES}))
def test_converter_table_matches_the_server(client, class_type: str) -> None:
    """Input order (required, optional), socket types, widget defaults, outputs: a UI workflow's widgets_values
    are positional, so any drift would shift every value after it."""
    info = client.object_info()[class_type]
    layout = {**OUR_NODES, **CORE_NODES}[class_type]
    required, optional = _specs(info)
    order = info["input_order"]
    assert order.get("required", []) == [spec.name for spec in layout.inputs if not spec.optional]
    assert order.get("optional", []) == [spec.name for spec in layout.inputs if spec.optional]
    for spec in layout.inputs:
        server = (optional if spec.optional else required)[spec.name]
        assert _kind(server) == spec.type, spec.name
        options = _options(server)
        if spec.is_widget and spec.default is not None:
            default = options.get("default", _combo_values(server)[0] if spec.type == "COMBO" else None)
            assert default == spec.default, spec.name
        assert bool(options.get("control_after_generate")) == spec.control_after_generate, spec.name
    assert info["output"] == [kind for _, kind in layout.outputs]
    if class_type in OUR_NODES:
        assert info["output_name"] == [name for name, _ in layout.outputs]


def _check_api(workflow: dict, object_info: dict) -> None:
    """What /prompt's validation checks, before running: node types, required inputs, link types, our combos."""
    for node_id, node in workflow.items():
        assert node["class_type"] in object_info, f"node {node_id}: unknown type {node['class_type']}"
        info = object_info[node["class_type"]]
        required, optional = _specs(info)
        missing = set(required) - set(node["inputs"])
        assert not missing, f"node {node_id} ({node['class_type']}) lacks {missing}"
        for name, value in node["inputs"].items():
            spec = required.get(name) or optional.get(name)
            assert spec is not None, f"node {node_id} ({node['class_type']}) has no input {name}"
            if isinstance(value, list):
                source = workflow[value[0]]
                output_type = object_info[source["class_type"]]["output"][value[1]]
                assert output_type == _kind(spec), f"node {node_id}.{name} gets {output_type}"
            elif _kind(spec) == "COMBO" and node["class_type"] in OUR_NODES:
                assert value in _combo_values(spec), f"node {node_id}.{name} = {value!r}"


def _check_ui(document: dict, object_info: dict) -> None:
    """What the editor needs to load it: known types, one value per widget, links joining matching types."""
    nodes = {node["id"]: node for node in document["nodes"]}
    for node in document["nodes"]:
        if node["type"] == REROUTE:
            continue
        assert node["type"] in object_info, f"node {node['id']}: unknown type {node['type']}"
        required, optional = _specs(object_info[node["type"]])
        specs = {**required, **optional}
        if node["type"] in OUR_NODES:
            widgets = [spec for spec in specs.values() if _kind(spec) in WIDGET_TYPES]
            extra = sum(bool(_options(spec).get("control_after_generate")) for spec in widgets)
            assert len(node["widgets_values"]) == len(widgets) + extra, f"node {node['id']} ({node['type']})"
    for link_id, source, slot, target, target_slot, kind in document["links"]:
        origin, end = nodes[source], nodes[target]
        entry = end["inputs"][target_slot]
        assert entry["link"] == link_id and link_id in origin["outputs"][slot]["links"]
        if origin["type"] != REROUTE and end["type"] != REROUTE:
            assert object_info[origin["type"]]["output"][slot] == kind
            specs = {**_specs(object_info[end["type"]])[0], **_specs(object_info[end["type"]])[1]}
            assert _kind(specs[entry["name"]]) == kind, f"link {link_id} into {end['type']}.{entry['name']}"


def _tiny_unified_loaders(workflow: dict) -> dict:
    """BoLIDUnifiedLoader needs full-size CLIP vision files; on the tiny models its three outputs come from the
    preset's adapter file (BoLIDAdapterLoader), the tiny CLIP vision and, for FaceID, the preset's LoRA."""
    swapped = copy.deepcopy(workflow)
    for node_id, node in workflow.items():
        if node["class_type"] != "BoLIDUnifiedLoader":
            continue
        inputs = node["inputs"]
        files = preset_file_names(inputs["preset"], "SDXL")
        model = inputs["model"]
        swapped[node_id] = {"class_type": "BoLIDAdapterLoader",
                            "inputs": {"adapter_name": f"ipadapter/{files['ipadapter']}"}}  # fmt: skip
        swapped[f"{node_id}_clip"] = {"class_type": "BoLIDTestTinyClipVision", "inputs": {"seed": 3}}
        if "loras" in files:
            swapped[f"{node_id}_lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
                "model": model, "lora_name": files["loras"], "strength_model": inputs["lora_strength"]}}  # fmt: skip
            model = [f"{node_id}_lora", 0]
        outputs = {0: model, 1: [node_id, 0], 2: [f"{node_id}_clip", 0]}
        for other in swapped.values():
            for name, value in other["inputs"].items():
                if isinstance(value, list) and value[0] == node_id and other is not swapped[node_id]:
                    other["inputs"][name] = outputs[value[1]]
    return swapped


def _run(client, workflow: dict) -> dict:
    entry = client.run(with_tiny_models(_tiny_unified_loaders(workflow)), timeout_s=600)
    assert client.output_images(entry, SAVE_NODE), "the converted workflow saved no image"
    return entry


@pytest.mark.parametrize("name", RUN_WORKFLOWS)
def test_converted_workflow_validates_and_runs(client, name: str) -> None:
    object_info = client.object_info()
    ui = convert_workflow(ui_workflow(name))
    _check_ui(ui.workflow, object_info)
    api = convert_workflow(api_workflow(name))
    assert not api.unmapped, [str(finding) for finding in api.unmapped]
    _check_api(api.workflow, object_info)
    _run(client, api.workflow)


def test_saved_embeds_load_in_the_converted_workflow(client, comfy_server) -> None:
    """encoder → save embeds → apply embeds; then the peer's load-embeds node, converted, reads the saved file."""
    saved = comfy_server.base_directory / "models" / "bolid" / "embeds"
    before = set(saved.glob("converted_embeds_*.safetensors")) if saved.is_dir() else set()
    converted = convert_workflow(api_workflow("embeds"))
    _check_api(converted.workflow, client.object_info())
    _run(client, converted.workflow)
    (new_file,) = set(saved.glob("converted_embeds_*.safetensors")) - before
    loading = convert_workflow(load_embeds(f"{new_file.stem}.ipadpt"))
    assert [finding.option for finding in loading.unmapped] == ["embeds"], "the .ipadpt pickle is reported"
    _check_api(loading.workflow, client.object_info())  # the saved file is in the combo now
    _run(client, loading.workflow)
    _check_ui(convert_workflow(ui_workflow("load_embeds")).workflow, client.object_info())
