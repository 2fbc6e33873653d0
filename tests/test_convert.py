"""The IPAdapter_plus converter on workflows in the peer's published layout: exact expected nodes and inputs, written
out here from the migration table (docs/migration.md), in API and UI format; the report; bad input; the CLI."""

from __future__ import annotations

import json

import pytest
from ipadapter_workflows import LAYER_WEIGHTS, PLUS_ADAPTER, VIT_H, api_workflow, ui_workflow

from bolid_core.convert import Format, WorkflowError, convert_workflow
from bolid_core.convert.__main__ import main
from bolid_core.convert.ipadapter_plus import EMBEDS_SCALINGS, REFERENCE_COMBINES, WEIGHT_TYPES
from bolid_core.convert.schemas import OUR_NODES


def _apply(**inputs) -> dict:
    """BoLIDApplyAdapter with its required widgets at their defaults unless given."""
    required = {"image_weight": 1.0, "face_weight": 1.0, "body_weight": 1.0, "start_at": 0.0, "end_at": 1.0,
                "faceid_v2_shortcut": 1.0}  # fmt: skip
    return {"class_type": "BoLIDApplyAdapter", "inputs": {**required, **inputs}}


def _node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


PLUS = _node("BoLIDUnifiedLoader", model=["1", 0], preset="plus", lora_strength=0.6)
ADAPTER = _node("BoLIDAdapterLoader", adapter_name=f"ipadapter/{PLUS_ADAPTER}")
CLIP_LOADER = _node("CLIPVisionLoader", clip_name=VIT_H)
FROM_PLUS = {"model": ["10", 0], "adapter": ["10", 1]}

# name -> (replaced or added nodes of the converted API workflow, (node, option) pairs reported unmapped)
EXPECTED: dict[str, tuple[dict, set]] = {
    "simple": ({
        "10": PLUS,
        "11": _apply(**FROM_PLUS, image_weight=0.8, combine_references="concat", clip_vision=["10", 2],
                     image=["8", 0], weight_type="ease out"),
    }, set()),
    "advanced": ({
        "10": ADAPTER, "11": CLIP_LOADER,
        "12": _apply(model=["1", 0], adapter=["10", 0], image_weight=0.7, start_at=0.1, end_at=0.9,
                     combine_references="concat", clip_vision=["11", 0], image=["8", 0], weight_type="ease in-out",
                     embeds_scaling="K+V w/ C penalty"),
    }, set()),
    "faceid": ({
        "10": _node("BoLIDUnifiedLoader", model=["1", 0], preset="faceid plus v2", lora_strength=0.6),
        "12": _node("BoLIDInsightFaceLoader", model_pack="buffalo_l", provider="CPU"),
        "13": _node("BoLIDFaceEmbed", face_analyzer=["12", 0], images=["8", 0], crop_size=256),
        "11": _apply(**FROM_PLUS, face_weight=0.9, faceid_v2_shortcut=1.5, combine_references="average",
                     clip_vision=["10", 2], face_embeds=["13", 0], weight_type="linear", embeds_scaling="V only"),
    }, set()),
    "style_composition": ({
        "10": PLUS,
        "11": _node("BoLIDApplyStyleComposition", **FROM_PLUS, clip_vision=["10", 2], image_style=["8", 0],
                    image_composition=["9", 0], weight_style=1.2, weight_composition=0.8, expand_style=False,
                    start_at=0.0, end_at=1.0, combine_references="average", embeds_scaling="K+V"),
    }, set()),
    "precise_style": ({
        "10": PLUS,
        "11": _apply(**FROM_PLUS, combine_references="concat", clip_vision=["10", 2], image=["8", 0],
                     weight_type="style transfer precise", precise_boost=2.0, embeds_scaling="V only"),
    }, set()),
    "layer_weights": ({
        "10": ADAPTER, "11": CLIP_LOADER,
        "12": _apply(model=["1", 0], adapter=["10", 0], combine_references="concat", clip_vision=["11", 0],
                     image=["8", 0], weight_type="linear", embeds_scaling="V only", layer_weights=LAYER_WEIGHTS),
    }, set()),
    "embeds": ({
        "10": PLUS,
        "11": _node("BoLIDEncodeImage", clip_vision=["10", 2], image=["8", 0], tiles=1, encode_batch_size=0),
        "12": _node("BoLIDSaveImageEmbeds", image_embeds=["11", 0], filename_prefix="converted_embeds"),
        "13": _apply(**FROM_PLUS, image_weight=0.9, combine_references="concat", weight_type="linear",
                     embeds_scaling="V only", image_embeds=["11", 0], clip_vision=["10", 2]),
    }, set()),
    "load_embeds": ({
        "10": PLUS,
        "12": _node("BoLIDLoadImageEmbeds", embeds="converted_embeds_00001.safetensors"),
        "13": _apply(**FROM_PLUS, image_weight=0.9, combine_references="concat", weight_type="linear",
                     embeds_scaling="V only", image_embeds=["12", 0], clip_vision=["10", 2]),
    }, {("12", "embeds")}),
    "negative_noise": ({
        "10": ADAPTER, "11": CLIP_LOADER,
        "12": _node("BoLIDNegativeImageNoise", type="dissolve", strength=0.5, blur=3, seed=0, image=["8", 0]),
        "13": _apply(model=["1", 0], adapter=["10", 0], image_weight=0.7, combine_references="concat",
                     clip_vision=["11", 0], image=["8", 0], weight_type="linear", embeds_scaling="V only",
                     image_negative=["12", 0]),
    }, set()),
    "tiled": ({
        "10": PLUS,
        "12": _node("BoLIDEncodeImage", clip_vision=["10", 2], image=["8", 0], tiles=2, encode_batch_size=0),
        "11": _apply(**FROM_PLUS, image_weight=0.7, combine_references="concat", weight_type="ease in",
                     embeds_scaling="V only", image_embeds=["12", 0], clip_vision=["10", 2]),
    }, set()),
    "combine_references": ({
        "10": PLUS,
        "12": _apply(**FROM_PLUS, image_weight=0.8, combine_references="norm average", clip_vision=["10", 2],
                     image=["11", 0], weight_type="linear", embeds_scaling="V only"),
    }, set()),
    "combine_embeds": ({
        "10": PLUS,
        "11": _node("BoLIDEncodeImage", clip_vision=["10", 2], image=["8", 0], tiles=1, encode_batch_size=0),
        "12": _node("BoLIDEncodeImage", clip_vision=["10", 2], image=["9", 0], tiles=1, encode_batch_size=0),
        "15": _node("ImageBatch", image1=["8", 0], image2=["9", 0]),
        "13": _node("BoLIDEncodeImage", clip_vision=["10", 2], image=["15", 0], tiles=1, encode_batch_size=0),
        "14": _apply(**FROM_PLUS, combine_references="average", weight_type="style transfer",
                     embeds_scaling="K+V", image_embeds=["13", 0], clip_vision=["10", 2]),
    }, set()),
}  # fmt: skip


def _expected_api(name: str) -> dict:
    expected = api_workflow(name)
    expected.update(EXPECTED[name][0])
    return expected


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_api_workflow_converts_to_the_expected_nodes(name: str) -> None:
    result = convert_workflow(api_workflow(name))
    assert result.format is Format.API
    assert result.workflow == _expected_api(name)
    assert {(finding.node_id, finding.option) for finding in result.unmapped} == EXPECTED[name][1]


def _ui_graph(document: dict) -> dict:
    """UI workflow -> {id: (type, {input name: [source id, slot]}, widgets_values)}, checking that every link is
    listed at both ends."""
    links = {link[0]: link for link in document["links"]}
    nodes = {str(node["id"]): node for node in document["nodes"]}
    graph = {}
    for node_id, node in nodes.items():
        inputs = {}
        for slot, entry in enumerate(node.get("inputs") or []):
            if entry["link"] is None:
                continue
            link_id, source, source_slot, target, target_slot, _ = links[entry["link"]]
            assert (str(target), target_slot) == (node_id, slot), f"link {link_id} is not the one at its target"
            assert link_id in nodes[str(source)]["outputs"][source_slot]["links"], f"link {link_id} not at its origin"
            inputs[entry["name"]] = [str(source), source_slot]
        graph[node_id] = (node["type"], inputs, node.get("widgets_values"))
    listed = {link_id for node in nodes.values() for out in node.get("outputs") or [] for link_id in out["links"] or []}
    assert listed == set(links), "outputs list links that do not exist, or miss some"
    return graph


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ui_workflow_converts_to_the_same_graph(name: str) -> None:
    """The UI format gives the same nodes and links; our nodes' widgets_values are every widget, in schema order
    (OUR_NODES, itself checked against a live server's /object_info), defaults where the mapping sets nothing."""
    result = convert_workflow(ui_workflow(name))
    assert result.format is Format.UI
    graph = _ui_graph(result.workflow)
    expected = _expected_api(name)
    assert set(graph) == set(expected)
    for node_id, node in expected.items():
        kind, inputs, widgets_values = graph[node_id]
        assert kind == node["class_type"]
        links = {key: value for key, value in node["inputs"].items() if isinstance(value, list)}
        assert inputs == links, f"node {node_id} ({kind})"
        if kind in OUR_NODES:
            values = []
            for spec in OUR_NODES[kind].widgets:
                values.append(node["inputs"].get(spec.name, spec.default))
                if spec.control_after_generate:
                    values.append("fixed")
            assert widgets_values == values, f"node {node_id} ({kind})"
    assert {(finding.node_id, finding.option) for finding in result.unmapped} == EXPECTED[name][1]
    document = result.workflow
    assert document["last_node_id"] == max(int(node_id) for node_id in graph)
    assert document["last_link_id"] == max(link[0] for link in document["links"])


def test_our_option_values_are_the_enums() -> None:
    from bolid_core.adapter.layer_weights import EmbedsScaling, WeightType
    from bolid_core.adapter.tokens import ReferenceCombine

    assert set(WEIGHT_TYPES) == {member.value for member in WeightType}
    assert set(EMBEDS_SCALINGS) == {member.value for member in EmbedsScaling}
    assert set(REFERENCE_COMBINES) == {member.value for member in ReferenceCombine}


def test_presets_name_ours() -> None:
    from bolid_core.adapter.presets import Preset
    from bolid_core.convert.ipadapter_plus import PRESETS

    assert set(PRESETS.values()) <= {preset.value for preset in Preset}


def test_kept_links_keep_their_ids_and_a_reroute_is_followed() -> None:
    """A link between kept nodes keeps its id; a pipe through a Reroute still reaches the apply node."""
    document = ui_workflow("simple")
    kept = next(link for link in document["links"] if link[1] == 1 and link[3] == 2)  # checkpoint CLIP -> prompt
    pipe = next(link for link in document["links"] if link[5] == "IPADAPTER")
    reroute_id, reroute_link = 40, 99
    document["nodes"].append({
        "id": reroute_id, "type": "Reroute", "pos": [0, 0], "size": [75, 26], "flags": {}, "order": 3, "mode": 0,
        "inputs": [{"name": "", "type": "*", "link": pipe[0]}],
        "outputs": [{"name": "", "type": "IPADAPTER", "links": [reroute_link]}], "properties": {},
    })  # fmt: skip
    apply_node = next(node for node in document["nodes"] if node["id"] == 11)
    apply_node["inputs"][1]["link"] = reroute_link
    document["links"].append([reroute_link, reroute_id, 0, 11, 1, "IPADAPTER"])
    pipe[3], pipe[4] = reroute_id, 0
    result = convert_workflow(document)
    graph = _ui_graph(result.workflow)
    assert graph["11"][1]["adapter"] == ["10", 1] and graph["11"][1]["clip_vision"] == ["10", 2]
    assert kept in result.workflow["links"]
    assert "40" not in graph or not graph["40"][1], "the reroute no longer carries the peer's pipe"


def test_unmapped_nodes_are_kept_and_reported() -> None:
    workflow = api_workflow("simple")
    workflow["20"] = _node("IPAdapterWeights", weights="1.0, 0.0", timing="linear")
    workflow["21"] = _node("IPAdapterFromParams", model=["10", 0], ipadapter=["10", 1],
                           ipadapter_params=["20", 0], combine_embeds="concat", embeds_scaling="V only")  # fmt: skip
    result = convert_workflow(workflow)
    assert result.workflow["20"] == workflow["20"]
    assert result.workflow["21"]["class_type"] == "IPAdapterFromParams"
    assert result.workflow["21"]["inputs"]["model"] == ["10", 0], "MODEL links still reach what the loader became"
    assert "ipadapter" not in result.workflow["21"]["inputs"], "a pipe has no counterpart to link"
    reported = {(finding.node_id, finding.option) for finding in result.unmapped}
    assert {("20", ""), ("21", ""), ("21", "input ipadapter")} <= reported
    assert set(result.converted) == {"10", "11"}


def test_options_without_counterpart_are_reported() -> None:
    workflow = api_workflow("advanced")
    workflow["12"]["inputs"]["weight_type"] = "made up"
    workflow["13"] = _node("PrepImageForClipVision", image=["8", 0], interpolation="HAMMING", crop_position="top",
                           sharpening=0.2)  # fmt: skip
    workflow["12"]["inputs"]["image"] = ["13", 0]
    result = convert_workflow(workflow)
    assert result.workflow["12"]["inputs"]["weight_type"] == "linear"
    assert result.workflow["12"]["inputs"]["image"] == ["13", 0]
    assert result.workflow["13"] == _node("ImageScale", image=["8", 0], upscale_method="lanczos", width=224,
                                          height=224, crop="center")  # fmt: skip
    reported = {(finding.node_id, finding.option) for finding in result.unmapped}
    assert reported == {("12", "weight_type"), ("13", "interpolation"), ("13", "crop_position"), ("13", "sharpening")}


def test_faceid_without_insightface_is_kept_with_a_reason() -> None:
    workflow = api_workflow("advanced")
    apply_node = workflow["12"]["inputs"]
    workflow["12"] = _node("IPAdapterFaceID", **{**apply_node, "weight_faceidv2": 1.0})
    result = convert_workflow(workflow)
    assert result.workflow["12"]["class_type"] == "IPAdapterFaceID"
    findings = {finding.option: finding.reason for finding in result.unmapped if finding.node_id == "12"}
    assert "insightface" in findings[""]
    assert "input ipadapter" in findings, "its pipe link has no counterpart: dropped and said"
    assert result.workflow["12"]["inputs"]["clip_vision"] == ["11", 0], "links to kept nodes stay"


@pytest.mark.parametrize(
    "document, message",
    [
        ([1, 2], "Not a ComfyUI workflow"),
        ({"nodes": [{"id": 1}], "links": []}, "has no type"),
        ({"1": {"class_type": "KSampler", "inputs": 3}}, "has no 'inputs' object"),
    ],
)
def test_bad_input_is_a_clear_error(document, message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        convert_workflow(document)


def test_cli_writes_the_workflow_and_the_report(tmp_path, capsys) -> None:
    source = tmp_path / "faceid.json"
    source.write_text(json.dumps(ui_workflow("load_embeds")))
    target = tmp_path / "out.json"
    assert main([str(source), "-o", str(target)]) == 0
    printed = capsys.readouterr().out
    assert "2 IPAdapter_plus node(s) converted" not in printed  # three: loader, load embeds, apply
    assert "3 IPAdapter_plus node(s) converted (ui format)" in printed
    assert "Could not map:" in printed and "node 12 (IPAdapterLoadEmbeds), embeds:" in printed
    assert json.loads(target.read_text())["nodes"]


def test_cli_exit_codes(tmp_path, capsys) -> None:
    nothing = tmp_path / "plain.json"
    nothing.write_text(json.dumps({"1": _node("CheckpointLoaderSimple", ckpt_name="x.safetensors")}))
    assert main([str(nothing)]) == 1
    assert "nothing to convert" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main([str(broken)]) == 1
    assert "is not JSON" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json")]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "plain_bolid.json").exists()


def test_faceid_through_the_advanced_node_gets_the_peers_doubled_shortcut() -> None:
    """IPAdapter Advanced has no weight_faceidv2 input; with a FaceID pipe the peer uses 2 x weight as the
    FaceID-Plus-v2 shortcut weight (IPAdapterPlus.ipadapter_execute), so the converted node must say 1.4 for 0.7."""
    workflow = api_workflow("faceid")
    faceid_node = workflow["11"]["inputs"]
    workflow["11"] = _node(
        "IPAdapterAdvanced", weight=0.7, weight_type="linear", combine_embeds="average", start_at=0.0, end_at=1.0,
        embeds_scaling="V only", model=faceid_node["model"], ipadapter=faceid_node["ipadapter"],
        image=faceid_node["image"],
    )  # fmt: skip
    result = convert_workflow(workflow)
    converted = result.workflow["11"]
    assert converted["class_type"] == "BoLIDApplyAdapter"
    assert converted["inputs"]["face_weight"] == 0.7
    assert converted["inputs"]["faceid_v2_shortcut"] == pytest.approx(1.4)
    assert result.workflow["13"]["class_type"] == "BoLIDFaceEmbed"
