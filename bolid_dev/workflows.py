"""Shipped workflows: loading them and pointing them at a checkpoint or at the tiny test models."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from safetensors import safe_open

from .runtime import REPO_ROOT

WORKFLOWS_DIR = REPO_ROOT / "workflows"
API_WORKFLOWS_DIR = WORKFLOWS_DIR / "api"
DEFAULT_WORKFLOW = "bolid_keypoint_weighting"
MINIATURE_WORKFLOW = "bolid_miniature_body_id"  # the main job without an SDXL checkpoint: the shipped miniature
BASE_MODEL_LOADER = "CheckpointLoaderSimple"
TINY_LOADER = "BoLIDTestTinyCheckpoint"
# Other loaders of downloaded models and their tiny stand-ins; same outputs in the same order.
TINY_STAND_INS = {BASE_MODEL_LOADER: TINY_LOADER, "CLIPVisionLoader": "BoLIDTestTinyClipVision"}
# Loads a full-size CLIP vision by name: on tiny models its files load through other nodes (_without_unified_loaders).
UNIFIED_LOADER = "BoLIDUnifiedLoader"
# Random-weight detectors score near zero: the thresholds they can meet, so the graph runs on through.
RANDOM_MODEL_SETTINGS = {
    "BoLIDBodyIDFromImages": {"detection_confidence": 1e-4, "keypoint_confidence": 0.3},
    "BoLIDPersonRegions": {"confidence": 1e-4},
    # The shipped training runs are thousands of steps at 1024²; on tiny models a few steps at 64² show it works.
    "BoLIDTrainAdapter": {"resolution": 64, "grad_accumulation": 1, "checkpoint_every": 1000},
}
TRAINING_NODE = "BoLIDTrainAdapter"
SHIPPED_STEPS_PER_TINY_STEP = 1000  # 2000 shipped steps train 2 tiny ones; a resume to 4000 continues them to 4
# Workflows that read what another one writes: run those first (the resumed run is the one the training run starts).
PREREQUISITES = {"train_bolid_adapter_resume": ("train_bolid_adapter",)}
_SDXL_ADM_WIDTH = 2816  # SDXL's label_emb input: pooled CLIP-G (1280) + 6 size/crop embeddings


def load_api_workflow(name: str) -> dict:
    return json.loads((API_WORKFLOWS_DIR / f"{name}.json").read_text())


def api_workflow_names() -> list[str]:
    return sorted(path.stem for path in API_WORKFLOWS_DIR.glob("*.json"))


def with_tiny_models(workflow: dict, seed: int = 0) -> dict:
    """The same graph on tiny random models: base-model and CLIP-vision loaders swapped for tiny ones (a unified
    loader for its preset's adapter file, LoRA file and the tiny CLIP vision), detection thresholds lowered to what
    random detectors reach, training runs shortened."""
    swapped = _without_unified_loaders(workflow, seed)
    for node in swapped.values():
        if node["class_type"] in TINY_STAND_INS:
            node["class_type"] = TINY_STAND_INS[node["class_type"]]
            node["inputs"] = {"seed": seed}
        node["inputs"].update(RANDOM_MODEL_SETTINGS.get(node["class_type"], {}))
        if node["class_type"] == TRAINING_NODE and isinstance(node["inputs"].get("steps"), int):
            node["inputs"]["steps"] = max(1, node["inputs"]["steps"] // SHIPPED_STEPS_PER_TINY_STEP)
    return swapped


def _without_unified_loaders(workflow: dict, seed: int) -> dict:
    """Each BoLIDUnifiedLoader as the nodes that load the same files: BoLIDAdapterLoader for its preset's adapter,
    LoraLoaderModelOnly for its LoRA (when its strength is not 0) and the tiny CLIP vision; its three outputs (model,
    adapter, clip_vision) are rewired to them."""
    from bolid_core.adapter.presets import preset_file_names

    swapped = copy.deepcopy(workflow)
    for node_id, node in workflow.items():
        if node["class_type"] != UNIFIED_LOADER:
            continue
        inputs = node["inputs"]
        files = preset_file_names(inputs["preset"], "SDXL")
        model = inputs["model"]
        swapped[node_id] = {
            "class_type": "BoLIDAdapterLoader",
            "inputs": {"adapter_name": f"ipadapter/{files['ipadapter']}"},
        }
        swapped[f"{node_id}_clip_vision"] = {"class_type": TINY_STAND_INS["CLIPVisionLoader"], "inputs": {"seed": seed}}
        if "loras" in files and inputs.get("lora_strength", 0.0) != 0.0:
            lora = {"model": model, "lora_name": files["loras"], "strength_model": inputs["lora_strength"]}
            swapped[f"{node_id}_lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": lora}
            model = [f"{node_id}_lora", 0]
        outputs = {0: model, 1: [node_id, 0], 2: [f"{node_id}_clip_vision", 0]}
        for other_id, other in swapped.items():
            if other_id == node_id or other_id.startswith(f"{node_id}_"):
                continue
            for name, value in other["inputs"].items():
                if isinstance(value, list) and value[0] == node_id:
                    other["inputs"][name] = outputs[value[1]]
    return swapped


def upstream(workflow: dict, node_id: str) -> dict:
    """The node and everything it reads from (a copy), so a prompt runs just that part of the graph."""
    picked, pending = {}, [node_id]
    while pending:
        current = pending.pop()
        if current not in picked:
            picked[current] = workflow[current]
            pending += [value[0] for value in workflow[current]["inputs"].values() if isinstance(value, list)]
    return copy.deepcopy(picked)


def with_checkpoint(workflow: dict, checkpoint_name: str) -> dict:
    pointed = copy.deepcopy(workflow)
    for node in pointed.values():
        if node["class_type"] == BASE_MODEL_LOADER:
            node["inputs"]["ckpt_name"] = checkpoint_name
    return pointed


def is_sdxl_checkpoint(path: Path) -> bool:
    """True for a single-file SDXL checkpoint (UNet with SDXL's 2816-wide ADM input)."""
    try:
        with safe_open(str(path), framework="pt") as checkpoint:
            key = "model.diffusion_model.label_emb.0.0.weight"
            return key in checkpoint.keys() and checkpoint.get_slice(key).get_shape()[1] == _SDXL_ADM_WIDTH
    except (OSError, ValueError, RuntimeError):
        return False


def find_sdxl_checkpoint(checkpoints_dir: Path) -> str | None:
    """The first SDXL checkpoint under `checkpoints_dir`, as the name ComfyUI's combo lists it."""
    if not checkpoints_dir.is_dir():
        return None
    for path in sorted(checkpoints_dir.rglob("*")):
        if path.suffix in (".safetensors", ".sft") and is_sdxl_checkpoint(path):
            return path.relative_to(checkpoints_dir).as_posix()
    return None
