"""Tier 3: a real ComfyUI server with the pack; every shipped API workflow through POST /prompt."""

from __future__ import annotations

import io
import json
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image
from scenario_assets import EVAL_FOLDER, EVAL_IMAGES, install_scenario_assets

from bolid_core.convert import convert_workflow
from bolid_dev.client import WorkflowError
from bolid_dev.preflight import MissingChoice, missing_choices
from bolid_dev.runtime import REPO_ROOT
from bolid_dev.ui_workflow import render, with_widget_defaults
from bolid_dev.workflows import (
    API_WORKFLOWS_DIR,
    PREREQUISITES,
    WORKFLOWS_DIR,
    api_workflow_names,
    load_api_workflow,
    upstream,
    with_tiny_models,
)

OUR_NODES = ("BoLIDKeypointsFromJSON", "BoLIDKeypointWeighting")
FASTFACE_WORKFLOW = "fastface_am2_dcg"
FASTFACE_PRESETS = {"fastface_am1_dcg": "AM1 (published)", "fastface_am2_dcg": "AM2 (published)"}
FACEID_LORA = "ip-adapter-faceid-plusv2_sdxl_lora.safetensors"
TEXT_OUTPUT = "PreviewAny"
CONVERTED_WORKFLOW = "ipadapter_plus_faceid_converted"
PEER_SOURCE = REPO_ROOT / "bolid_dev" / "peer_workflows" / "ipadapter_plus_faceid_plus_v2.json"


@pytest.fixture(scope="module")
def scenario_assets(comfy_server) -> None:
    install_scenario_assets(comfy_server.base_directory)


def test_object_info_lists_the_pack(client) -> None:
    info = client.object_info()
    for node_id in OUR_NODES:
        assert node_id in info, f"{node_id} missing from /object_info"
    weighting = info["BoLIDKeypointWeighting"]
    assert weighting["output"] == ["IMAGE", "IMAGE"]
    assert weighting["input"]["required"]["keypoints"][0] == "BOLID_KEYPOINTS"
    assert weighting["category"] == "BoLID/body"


def test_frontend_extension_is_served(comfy_server) -> None:
    with urllib.request.urlopen(f"{comfy_server.url}/extensions") as response:
        extensions = json.loads(response.read())
    script = next(path for path in extensions if path.endswith("keypoints_preview.js"))
    with urllib.request.urlopen(f"{comfy_server.url}{script}") as response:
        assert b"BoLID.KeypointsPreview" in response.read()


def test_there_are_shipped_workflows() -> None:
    assert api_workflow_names(), "workflows/api/ holds no workflow"
    ui_names = sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))
    assert ui_names == api_workflow_names(), "every API workflow needs its UI twin and vice versa"


@pytest.mark.parametrize("name", api_workflow_names())
def test_ui_workflow_is_the_same_graph(client, name: str) -> None:
    expected = render(API_WORKFLOWS_DIR / f"{name}.json", client.object_info())
    actual = (WORKFLOWS_DIR / f"{name}.json").read_text()
    assert actual == expected, f"workflows/{name}.json is stale: run `python -m bolid_dev.ui_workflow`"


@pytest.mark.parametrize("name", api_workflow_names())
def test_shipped_workflow_runs(client, scenario_assets, name: str) -> None:
    for prerequisite in PREREQUISITES.get(name, ()):
        client.run(with_tiny_models(load_api_workflow(prerequisite)), timeout_s=600)
    workflow = load_api_workflow(name)
    entry = client.run(with_tiny_models(workflow), timeout_s=600)
    save_nodes = [node_id for node_id, node in workflow.items() if node["class_type"] == "SaveImage"]
    text_nodes = [node_id for node_id, node in workflow.items() if node["class_type"] == TEXT_OUTPUT]
    assert save_nodes or text_nodes, f"{name} saves no image and shows no text"
    for node_id in save_nodes:
        images = client.output_images(entry, node_id)
        assert images, f"SaveImage node {node_id} of {name} saved nothing"
        for image in images:
            assert client.saved_path(image).is_file()
            Image.open(io.BytesIO(client.fetch_image(image))).verify()
    for node_id in text_nodes:
        assert entry["outputs"][node_id]["text"], f"{TEXT_OUTPUT} node {node_id} of {name} showed nothing"


def test_default_workflow_weight_map_follows_the_keypoints(client) -> None:
    workflow = load_api_workflow("bolid_keypoint_weighting")
    entry = client.run(with_tiny_models(workflow), timeout_s=600)
    (map_ref,) = client.output_images(entry, "10")
    weight_map = np.asarray(Image.open(io.BytesIO(client.fetch_image(map_ref))).convert("L"), dtype=np.float64)
    height, width = weight_map.shape
    latent = workflow["4"]["inputs"]
    assert (width, height) == (latent["width"], latent["height"])
    nose_x, nose_y, _ = json.loads(workflow["7"]["inputs"]["keypoints_json"])[0]
    assert weight_map[int(nose_y * height), int(nose_x * width)] > 250
    assert weight_map[:20, :20].max() < 5, "the top-left corner is far from every keypoint"


def test_validation_error_reaches_the_client(client) -> None:
    workflow = with_tiny_models(load_api_workflow("bolid_keypoint_weighting"))
    workflow["7"]["inputs"]["keypoints_json"] = "[0.5, 0.5]"
    with pytest.raises(WorkflowError, match=r"(?s)HTTP 400.*Keypoints view 0 is not 17"):
        client.queue(workflow)


def test_the_main_jobs_preflight_lists_every_missing_file_at_once(client, scenario_assets) -> None:
    # ComfyUI's own check names only the first refused input on each path back from the output (here 8 and 19).
    workflow = with_tiny_models(load_api_workflow("fastface_am2_dcg"))
    assert missing_choices(workflow, client.object_info()) == []
    workflow["6"]["inputs"]["adapter_name"] = "ipadapter/absent.bin"
    workflow["8"]["inputs"]["image"] = "absent.png"
    workflow["19"]["inputs"]["lora_name"] = "absent.safetensors"
    assert missing_choices(workflow, client.object_info()) == [
        MissingChoice("6", "BoLIDAdapterLoader", "adapter_name", "ipadapter/absent.bin"),
        MissingChoice("8", "LoadImage", "image", "absent.png"),
        MissingChoice("19", "LoraLoaderModelOnly", "lora_name", "absent.safetensors"),
    ]


def test_execution_error_reaches_the_client(client) -> None:
    workflow = with_tiny_models(load_api_workflow("bolid_keypoint_weighting"))
    view = json.loads(workflow["7"]["inputs"]["keypoints_json"])
    workflow["7"]["inputs"]["keypoints_json"] = json.dumps([view, view])
    workflow["4"]["inputs"].update(width=64, height=64)
    with pytest.raises(WorkflowError, match="ValueError: Got 1 images but keypoints for 2 views"):
        client.run(workflow, timeout_s=300)


def _decoded(client, workflow: dict, save_node: str) -> np.ndarray:
    entry = client.run(workflow, timeout_s=600)
    (image,) = client.output_images(entry, save_node)
    return np.asarray(Image.open(io.BytesIO(client.fetch_image(image))), dtype=np.int16)


def test_apply_adapter_acts_through_the_graph(client) -> None:
    workflow = with_tiny_models(load_api_workflow("bolid_reference_adapter"))
    workflow["4"]["inputs"].update(width=256, height=192)
    unpatched = json.loads(json.dumps(workflow))
    unpatched["9"]["inputs"]["model"] = ["1", 0]
    workflow["8"]["inputs"]["image_weight"] = 0.0
    baseline, zero = _decoded(client, unpatched, "11"), _decoded(client, workflow, "11")
    assert np.abs(zero - baseline).max() <= 1, "weight 0 must leave the image as the unpatched model makes it"
    workflow["8"]["inputs"]["image_weight"] = 3.0
    difference = np.abs(_decoded(client, workflow, "11") - baseline)
    # Random tiny models saturate the decoded image, which hides most of the change; weight 0 differs
    # from the unpatched run by at most one level anywhere, so these bounds still separate the two.
    assert difference.max() >= 8 and difference.mean() > 0.5, f"no visible effect: {difference.mean():.2f} mean"


def test_adapter_that_does_not_fit_is_a_clear_error(client) -> None:
    workflow = with_tiny_models(load_api_workflow("bolid_reference_adapter"))
    workflow["4"]["inputs"].update(width=64, height=64)
    del workflow["8"]["inputs"]["image"]
    with pytest.raises(WorkflowError, match="Connect at least one input this adapter uses: image"):
        client.run(workflow, timeout_s=300)
    workflow["7"]["inputs"]["adapter_name"] = "ipadapter/../../secrets.safetensors"
    with pytest.raises(WorkflowError, match=r"not in list|paths outside it are refused"):
        client.run(workflow, timeout_s=300)


def test_views_to_saved_body_then_text_and_body_alone(client, comfy_server) -> None:
    from bolid_core.body import load_body_id

    saved = comfy_server.base_directory / "models" / "bolid" / "bodies" / "e2e_body.safetensors"
    views = with_tiny_models(load_api_workflow("bolid_body_id_from_views"))
    views["4"]["inputs"].update(width=128, height=128)
    views["12"]["inputs"]["name"] = "e2e_body"
    entry = client.run(views, timeout_s=600)
    body = load_body_id(saved)
    assert body.source_count == 2 and body.encoder != "prior", "the body ID built from 2 views was not saved"
    assert client.output_images(entry, "13") and client.output_images(entry, "17")

    # The body saved a moment ago is in the load node's list, and text plus that body is enough.
    text_only = with_tiny_models(load_api_workflow("bolid_text_and_saved_body"))
    text_only["4"]["inputs"].update(width=128, height=128)
    text_only["6"]["inputs"]["body"] = "e2e_body.safetensors"
    with_body = _decoded(client, text_only, "10")
    text_only["7"]["inputs"]["body_weight"] = 0.0
    without = _decoded(client, text_only, "10")
    assert np.abs(with_body - without).max() > 0, "the saved body had no effect"


def test_body_id_errors_are_clear(client) -> None:
    views = with_tiny_models(load_api_workflow("bolid_body_id_from_views"))
    views["11"]["inputs"]["detection_confidence"] = 1.0
    views["4"]["inputs"].update(width=64, height=64)
    with pytest.raises(WorkflowError, match="No view shows a person"):
        client.run(views, timeout_s=300)
    views["11"]["inputs"]["detection_confidence"] = 1e-4
    views["12"]["inputs"]["name"] = "../../escape"
    with pytest.raises(WorkflowError, match="is not a plain file name"):
        client.run(views, timeout_s=300)


def _only(workflow: dict, class_type: str) -> tuple[str, dict]:
    (found,) = [(node_id, node) for node_id, node in workflow.items() if node["class_type"] == class_type]
    return found


@pytest.mark.parametrize("name", sorted(FASTFACE_PRESETS))
def test_fastface_workflow_is_wired_as_published(name: str) -> None:
    """The FastFace configs (configs/fastface/am1_and_dcg.json, am2_and_dcg.json) use FaceID-Plus-v2 with its LoRA
    at scale 1.0, ip_adapter_scale 0.8, pass no negative prompt (diffusers SDXL then uses zero embeddings, pooled
    included), DCG type 3 with a = [1, 1.5, 1.5, 1], b = [1, 3, 3, 1], rescale 0.75, 4 steps; they differ only in
    the AM transform."""
    workflow = load_api_workflow(name)
    base_id, _ = _only(workflow, "CheckpointLoaderSimple")
    lora_id, lora = _only(workflow, "LoraLoaderModelOnly")
    assert lora["inputs"] == {"model": [base_id, 0], "lora_name": FACEID_LORA, "strength_model": 1.0}
    _, apply_adapter = _only(workflow, "BoLIDApplyAdapter")
    assert apply_adapter["inputs"]["model"] == [lora_id, 0] and apply_adapter["inputs"]["face_weight"] == 0.8
    _, manipulation = _only(workflow, "BoLIDFastFaceAttention")
    assert manipulation["inputs"]["preset"] == FASTFACE_PRESETS[name]
    _, guider = _only(workflow, "BoLIDDecoupledCFGGuider")
    assert guider["inputs"]["variant"] == "id_then_text" and guider["inputs"]["rescale_phi"] == 0.75
    alpha, beta = ([float(v) for v in guider["inputs"][key].split(",")] for key in ("alpha", "beta"))
    assert alpha == [1.0, 1.5, 1.5, 1.0] and beta == [1.0, 3.0, 3.0, 1.0]
    _, scheduler = _only(workflow, "BasicScheduler")
    assert scheduler["inputs"]["steps"] == len(alpha) == 4
    negative_source = workflow[guider["inputs"]["negative"][0]]
    assert negative_source["class_type"] == "ConditioningZeroOut"
    assert workflow[negative_source["inputs"]["conditioning"][0]]["class_type"] == "CLIPTextEncode"


def test_fastface_workflows_differ_only_in_the_am_preset() -> None:
    am1, am2 = (load_api_workflow(name) for name in sorted(FASTFACE_PRESETS))
    for workflow in (am1, am2):
        _only(workflow, "BoLIDFastFaceAttention")[1]["inputs"]["preset"] = None
        _only(workflow, "SaveImage")[1]["inputs"]["filename_prefix"] = None
    assert am1 == am2


def test_am1_and_am2_change_the_fastface_image(client) -> None:
    images = {}
    for name in sorted(FASTFACE_PRESETS):
        workflow = with_tiny_models(load_api_workflow(name))
        _only(workflow, "EmptyLatentImage")[1]["inputs"].update(width=128, height=128)
        images[name] = _decoded(client, workflow, _only(workflow, "SaveImage")[0])
    am1, am2 = images.values()
    assert np.abs(am1 - am2).max() > 0, "AM1 and AM2 gave the same image: the preset did not reach the sampler"


def test_fastface_guider_gets_zero_negative(client) -> None:
    workflow = with_tiny_models(load_api_workflow(FASTFACE_WORKFLOW))
    _, guider = _only(workflow, "BoLIDDecoupledCFGGuider")
    prompt = {}
    for name in ("positive", "negative"):
        probe = {"class_type": "BoLIDTestConditioningProbe", "inputs": {"conditioning": guider["inputs"][name]}}
        prompt.update(upstream({**workflow, f"probe_{name}": probe}, f"probe_{name}"))
    entry = client.run(prompt, timeout_s=300)
    (positive,) = entry["outputs"]["probe_positive"]["bolid_conditioning"]
    (negative,) = entry["outputs"]["probe_negative"]["bolid_conditioning"]
    assert positive["context_abs_max"] > 0 and positive["pooled_abs_max"] > 0, "the probe sees the positive prompt"
    assert negative["context_shape"] == positive["context_shape"] and negative["pooled_shape"] == [1, 1280]
    assert negative["context_abs_max"] == 0.0 and negative["pooled_abs_max"] == 0.0


def test_fastface_workflow_applies_every_lora_key(client, comfy_server) -> None:
    """The shipped LoRA node loads the test LoRA (the published key names) without skipping a key."""
    log_start = comfy_server.log_path.stat().st_size
    workflow = with_tiny_models(load_api_workflow(FASTFACE_WORKFLOW))
    lora_id, _ = _only(workflow, "LoraLoaderModelOnly")
    workflow[lora_id]["inputs"]["strength_model"] = 0.999  # a value no earlier run cached, so the node runs here
    client.run(workflow, timeout_s=600)
    with open(comfy_server.log_path, "rb") as log:
        log.seek(log_start)
        new_lines = log.read().decode(errors="replace")
    skipped = [line for line in new_lines.splitlines() if "lora key not loaded" in line or "NOT LOADED" in line]
    assert not skipped, f"ComfyUI skipped LoRA keys: {skipped[:4]}"


def test_reference_image_and_body_each_act(client) -> None:
    """Z' = Attn(text) + λ_ref·Attn(ref) + λ_b·Attn(body): both weights 0 is the unpatched model; each source alone
    changes the image, and the two together differ from either alone."""
    workflow = with_tiny_models(load_api_workflow("bolid_reference_and_body"))
    workflow["4"]["inputs"].update(width=128, height=128)
    apply_id, _ = _only(workflow, "BoLIDApplyAdapter")
    sampler_id, _ = _only(workflow, "KSampler")
    save_id, _ = _only(workflow, "SaveImage")

    def decoded(image_weight: float, body_weight: float, patched: bool = True) -> np.ndarray:
        graph = json.loads(json.dumps(workflow))
        graph[apply_id]["inputs"].update(image_weight=image_weight, body_weight=body_weight)
        if not patched:
            graph[sampler_id]["inputs"]["model"] = graph[apply_id]["inputs"]["model"]
        return _decoded(client, graph, save_id)

    unpatched, neither = decoded(0.0, 0.0, patched=False), decoded(0.0, 0.0)
    assert np.abs(neither - unpatched).max() <= 1, "weights 0 must leave the image as the unpatched model makes it"
    image_only, body_only, both = decoded(3.0, 0.0), decoded(0.0, 3.0), decoded(3.0, 3.0)
    for label, image in (("reference image", image_only), ("body ID", body_only)):
        assert np.abs(image - unpatched).max() > 1, f"the {label} alone had no effect"
    assert np.abs(both - image_only).max() > 1 and np.abs(both - body_only).max() > 1, "one source was dropped"


@pytest.fixture()
def loss_listener(comfy_server, client):
    from test_server_training import LossListener

    listening = LossListener(comfy_server, client.client_id)
    yield listening
    listening.close()


def test_resume_workflow_continues_the_training_run(client, comfy_server, loss_listener) -> None:
    """The training workflow's run, then the resume workflow on it: the steps reported go on from the checkpoint
    (tiny runs: 2 steps, then on to 4) instead of starting again at 1."""
    name = "scenario_resume"
    first = with_tiny_models(load_api_workflow("train_bolid_adapter"))
    _only(first, "BoLIDTrainAdapter")[1]["inputs"]["adapter_name"] = name
    client.run(first, timeout_s=600)
    resumed = with_tiny_models(load_api_workflow("train_bolid_adapter_resume"))
    _, node = _only(resumed, "BoLIDTrainAdapter")
    assert node["inputs"]["resume"] != "none", "the resume workflow starts a new run"
    node["inputs"].update(adapter_name=name, resume=name)
    client.run(resumed, timeout_s=600)
    deadline = time.monotonic() + 10
    while len(loss_listener.steps(name)) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loss_listener.steps(name) == [1, 2, 3, 4], "the resumed run did not continue from step 2"
    assert (comfy_server.base_directory / "models" / "bolid" / f"{name}.safetensors").is_file()


def test_evaluation_workflow_scores_every_image_of_the_folder(client, scenario_assets) -> None:
    """The folder holds the reference face itself and an image with no face: 2 images, 1 failure, and ArcFace
    similarity 1 on the image with a face."""
    workflow = with_tiny_models(load_api_workflow("fastface_evaluation_folder"))
    _, folder_loader = _only(workflow, "LoadImageDataSetFromFolder")
    assert folder_loader["inputs"]["folder"] == EVAL_FOLDER
    entry = client.run(workflow, timeout_s=600)
    text_id, _ = _only(workflow, TEXT_OUTPUT)
    (shown,) = entry["outputs"][text_id]["text"]
    report = json.loads(shown)
    assert report["images"] == len(EVAL_IMAGES)
    assert report["face_fail_cnt"] == sum(not faces for faces in EVAL_IMAGES.values())
    assert report["id_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert -1.0 <= report["clip_score"] <= 1.0 and report["face_style_score"] is not None


def test_converted_workflow_is_what_the_converter_makes(client) -> None:
    """workflows/api/ipadapter_plus_faceid_converted.json is `python -m bolid_core.convert` of the peer-layout
    source, with every peer node mapped, and the widgets it leaves out written as their defaults (as every shipped
    API file has them); regenerate it with those commands when either changes."""
    source = json.loads(PEER_SOURCE.read_text())
    assert {"IPAdapterUnifiedLoaderFaceID", "IPAdapterFaceID"} <= {node["class_type"] for node in source.values()}
    result = convert_workflow(source)
    assert not result.unmapped, [str(finding) for finding in result.unmapped]
    assert with_widget_defaults(result.workflow, client.object_info()) == load_api_workflow(CONVERTED_WORKFLOW), (
        f"run `python -m bolid_core.convert {PEER_SOURCE.relative_to(REPO_ROOT)} -o "
        f"workflows/api/{CONVERTED_WORKFLOW}.json`, then `python -m bolid_dev.ui_workflow --write-defaults`"
    )
    assert not any(node["class_type"].startswith("IPAdapter") for node in result.workflow.values())


def test_converted_workflow_face_acts(client) -> None:
    """The converted FaceID graph on the tiny models: its face weight changes the image."""
    workflow = with_tiny_models(load_api_workflow(CONVERTED_WORKFLOW))
    _only(workflow, "EmptyLatentImage")[1]["inputs"].update(width=128, height=128)
    _only(workflow, "KSampler")[1]["inputs"]["steps"] = 4
    apply_id, _ = _only(workflow, "BoLIDApplyAdapter")
    save_id, _ = _only(workflow, "SaveImage")
    with_face = _decoded(client, workflow, save_id)
    workflow[apply_id]["inputs"]["face_weight"] = 0.0
    assert np.abs(_decoded(client, workflow, save_id) - with_face).max() > 0, "the face had no effect"
