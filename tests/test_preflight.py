"""Tier 1: the main job's check of a workflow's files before it is queued: every combo value the server does not
offer, in both /object_info forms, and where README's model table says each file goes."""

from __future__ import annotations

from pathlib import Path

from bolid_dev.object_info import combo_options
from bolid_dev.preflight import MissingChoice, describe_missing, missing_choices, readme_model_rows

OBJECT_INFO = {
    "LoadImage": {"input": {"required": {"image": [["a.png", "b.png"], {"image_upload": True}]}}},
    "LoraLoaderModelOnly": {
        "input": {"required": {"model": ["MODEL"], "lora_name": [["x.safetensors"]], "strength_model": ["FLOAT", {}]}}
    },
    "BoLIDAdapterLoader": {"input": {"required": {"adapter_name": ["COMBO", {"options": ["ipadapter/a.bin"]}]}}},
    "BoLIDApplyAdapter": {
        "input": {
            "required": {"weight": ["FLOAT", {}]},
            "optional": {"weight_type": ["COMBO", {"options": ["linear"]}]},
        }
    },
}


def test_combo_options_reads_both_forms() -> None:
    assert combo_options([["a", "b"], {}]) == ["a", "b"]
    assert combo_options(["COMBO", {"options": ["c"]}]) == ["c"]
    assert combo_options(["COMBO", {"multiselect": True}]) is None
    assert combo_options(["FLOAT", {"default": 1.0}]) is None
    assert combo_options(["STRING", {}]) is None
    assert combo_options(None) is None


def test_every_value_not_offered_is_listed_in_node_order() -> None:
    prompt = {
        "10": {"class_type": "BoLIDApplyAdapter", "inputs": {"weight": 1.0, "weight_type": "ease in"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "9": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": "y.safetensors"}},
        "1": {"class_type": "BoLIDAdapterLoader", "inputs": {"adapter_name": "ipadapter/b.bin"}},
        "4": {"class_type": "SomeOtherPacksNode", "inputs": {"name": "anything"}},
    }
    assert missing_choices(prompt, OBJECT_INFO) == [
        MissingChoice("1", "BoLIDAdapterLoader", "adapter_name", "ipadapter/b.bin"),
        MissingChoice("2", "LoadImage", "image", "face.png"),
        MissingChoice("9", "LoraLoaderModelOnly", "lora_name", "y.safetensors"),
        MissingChoice("10", "BoLIDApplyAdapter", "weight_type", "ease in"),
    ]


def test_the_message_says_where_each_file_goes_and_where_to_get_it(tmp_path: Path) -> None:
    missing = [
        MissingChoice("6", "BoLIDAdapterLoader", "adapter_name", "ipadapter/ip-adapter-faceid-plusv2_sdxl.bin"),
        MissingChoice("8", "LoadImage", "image", "bolid_face.png"),
        MissingChoice("19", "LoraLoaderModelOnly", "lora_name", "ip-adapter-faceid-plusv2_sdxl_lora.safetensors"),
        MissingChoice("11", "BoLIDApplyAdapter", "weight_type", "ease in"),
    ]
    text = describe_missing("fastface_am2_dcg", missing, readme_model_rows(), tmp_path)
    faceid = "https://huggingface.co/h94/IP-Adapter-FaceID/blob/main"
    assert text.splitlines() == [
        f"fastface_am2_dcg names 4 file(s) that ComfyUI in {tmp_path} does not have:",
        "  - models/ipadapter/ip-adapter-faceid-plusv2_sdxl.bin (node 6, BoLIDAdapterLoader.adapter_name): get it from"
        f" h94/IP-Adapter-FaceID ({faceid}/ip-adapter-faceid-plusv2_sdxl.bin)",
        "  - input/bolid_face.png (node 8, LoadImage.image): an image of your own",
        "  - models/loras/ip-adapter-faceid-plusv2_sdxl_lora.safetensors (node 19, LoraLoaderModelOnly.lora_name): get"
        f" it from h94/IP-Adapter-FaceID ({faceid}/ip-adapter-faceid-plusv2_sdxl_lora.safetensors)",
        "  - ease in (node 11, BoLIDApplyAdapter.weight_type): not offered; pick one of the node's files instead",
        'Put each file there (README, "Models"), or pick files you have in the workflow, then run this again.',
    ]


def test_readme_rows_of_a_folder_model() -> None:
    row = readme_model_rows()["buffalo_l"]
    assert row.folder == "models/insightface/models"
    assert row.source.startswith(
        "insightface's model zoo (https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip)"
    )
