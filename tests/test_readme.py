"""README.md for users: its model table holds every model file a shipped API workflow names (in the right folder,
with a source and the nodes that read it), its workflow table every shipped workflow, and its links and pictures
point at something."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bolid_core.adapter.presets import ModelFamily, Preset, preset_files
from bolid_dev.preflight import readme_model_table

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
API_WORKFLOWS = sorted((REPO_ROOT / "workflows" / "api").glob("*.json"))

# (class_type, input) → the models/ folder its value names a file or folder of. Written out here, not read from the
# pack, so a loader whose folder changes, or a new loader, is noticed.
MODEL_INPUTS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("VAELoader", "vae_name"): "vae",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("BoLIDPoseModelLoader", "pose_model"): "ultralytics",
    ("BoLIDSegmentationModelLoader", "segmentation_model"): "ultralytics",
    ("BoLIDBodyEncoderLoader", "body_encoder"): "bolid",
    ("BoLIDLoadBodyID", "body"): "bolid/bodies",
    ("BoLIDInsightFaceLoader", "model_pack"): "insightface/models",
    ("BoLIDMiniatureModelLoader", "model_name"): "bolid/miniature",
    ("BoLIDFastFaceMetrics", "clip_model"): "clip_scorers",
    ("BoLIDFastFaceMetrics", "aesthetic_model"): "aesthetic_predictors",
    ("BoLIDFastFaceMetrics", "image_reward_model"): "image_reward",
    ("BoLIDLoadImageEmbeds", "embeds"): "bolid/embeds",
    ("BoLIDLoadFaceEmbeds", "embeds"): "bolid/embeds",
    ("BoLIDTrainAdapter", "config"): "bolid/training",
}
NO_FILE = {"none", "defaults"}  # the combos' "no model" entries
ADAPTER_LOADER = ("BoLIDAdapterLoader", "adapter_name")  # "<folder>/<file>"
UNIFIED_LOADER = ("BoLIDUnifiedLoader", "preset")  # files found by name, per preset
# String inputs of loader nodes that name no file.
NOT_FILES = {("BoLIDInsightFaceLoader", "provider")}
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".ckpt", ".gguf", ".sft")
CORE_DISPLAY_NAMES = {
    "CheckpointLoaderSimple": "Load Checkpoint",
    "CLIPVisionLoader": "Load CLIP Vision",
    "LoraLoader": "Load LoRA",
    "LoraLoaderModelOnly": "LoraLoaderModelOnly",
    "VAELoader": "Load VAE",
    "UNETLoader": "Load Diffusion Model",
}


def models_used(workflow: dict) -> set[tuple[str, str, str]]:
    """(folder, file, class_type) of every model a workflow's loaders name."""
    used = set()
    for node in workflow.values():
        kind = node["class_type"]
        for name, value in node["inputs"].items():
            if not isinstance(value, str) or value in NO_FILE:
                continue
            if (kind, name) == ADAPTER_LOADER:
                folder, _, file = value.partition("/")
                used.add((folder, file, kind))
            elif (kind, name) == UNIFIED_LOADER:
                files = preset_files(Preset(value), ModelFamily.SDXL)
                for expected in (files.adapter, files.clip_vision, files.lora):
                    if expected is not None:
                        used.add((expected.folder.value, expected.name, kind))
            elif (kind, name) in MODEL_INPUTS:
                used.add((MODEL_INPUTS[(kind, name)], value, kind))
            elif value.endswith(MODEL_SUFFIXES) or ("Loader" in kind and (kind, name) not in NOT_FILES):
                raise AssertionError(f"{kind}.{name} = {value!r} looks like a model: add it to MODEL_INPUTS")
    return used


def display_names() -> dict[str, str]:
    """class_type → display name: the pack's from the README's generated node reference, core's from above."""
    generated = re.findall(r"<b>(.*?)</b> \(<code>(\w+)</code>\)", README.read_text())
    return {**CORE_DISPLAY_NAMES, **{class_type: name for name, class_type in generated}}


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda path: path.stem)
def test_every_model_a_workflow_names_is_in_the_readme_table(path: Path) -> None:
    rows = readme_model_table()
    names = display_names()
    for folder, file, class_type in sorted(models_used(json.loads(path.read_text()))):
        matching = [row for row in rows if f"`{file}`" in row["File"]]
        assert matching, f"{path.name}: {file} ({class_type}) is not in README's model table"
        row = matching[0]
        assert row["Folder"] == f"`models/{folder}`", f"{file}: README says {row['Folder']}, the loader reads {folder}"
        assert row["Where to get it"], f"{file}: say where to get it"
        assert names[class_type] in row["Used by"], f"{file}: 'Used by' should name {names[class_type]}"


def test_table_lists_each_file_once() -> None:
    files = [file for row in readme_model_table() for file in re.findall(r"`([^`]+)`", row["File"])]
    assert files and len(files) == len(set(files))


def test_models_used_reads_every_kind_of_loader() -> None:
    workflow = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.safetensors"}},
        "2": {"class_type": "BoLIDAdapterLoader", "inputs": {"adapter_name": "ipadapter/a.bin"}},
        "3": {"class_type": "BoLIDUnifiedLoader", "inputs": {"model": ["1", 0], "preset": "plus"}},
        "4": {"class_type": "BoLIDFastFaceMetrics", "inputs": {"clip_model": "clip", "aesthetic_model": "none"}},
        "5": {"class_type": "BoLIDInsightFaceLoader", "inputs": {"model_pack": "buffalo_l", "provider": "CPU"}},
    }
    assert models_used(workflow) == {
        ("checkpoints", "base.safetensors", "CheckpointLoaderSimple"),
        ("ipadapter", "a.bin", "BoLIDAdapterLoader"),
        ("ipadapter", "ip-adapter-plus_sdxl_vit-h.safetensors", "BoLIDUnifiedLoader"),
        ("clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "BoLIDUnifiedLoader"),
        ("clip_scorers", "clip", "BoLIDFastFaceMetrics"),
        ("insightface/models", "buffalo_l", "BoLIDInsightFaceLoader"),
    }
    with pytest.raises(AssertionError, match="add it to MODEL_INPUTS"):
        models_used({"1": {"class_type": "SomeNewLoader", "inputs": {"model": "x.safetensors"}}})


def test_workflow_table_lists_every_shipped_workflow() -> None:
    section = README.read_text().split("\n## Workflows\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    assert {path.stem for path in API_WORKFLOWS} <= listed


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than - and _ dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_and_pictures_point_at_something() -> None:
    text = README.read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    anchors = {_slug(line.lstrip("#")) for line in prose.splitlines() if line.startswith("#")}
    targets = re.findall(r"\]\(([^)\s]+)\)", prose)
    assert targets
    for target in targets:
        if target.startswith(("http://", "https://")):
            continue
        if target.startswith("#"):
            assert target[1:] in anchors, f"README links to {target}, which is no heading"
        else:
            assert (REPO_ROOT / target).exists(), f"README points at {target}, which is not in the repository"


def test_slug_follows_github() -> None:
    assert _slug(" Coming from IPAdapter_plus") == "coming-from-ipadapter_plus"
    assert _slug(" Save / Load (JSON)") == "save--load-json"
