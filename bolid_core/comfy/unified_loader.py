"""The unified loader: a preset's adapter, CLIP vision and FaceID LoRA, found by name in ComfyUI's model folders
(bolid_core/adapter/presets.py says which files), loaded and checked against each other and the model."""

from __future__ import annotations

import os
from dataclasses import dataclass

import comfy.clip_vision
import comfy.sd
import folder_paths
import torch
from safetensors.torch import load_file

from ..adapter import Adapter, AdapterFormatError, load_adapter
from ..adapter.presets import (
    ModelFamily,
    Preset,
    PresetFilesMissing,
    PresetPicks,
    PresetUnavailableError,
    check_adapter,
    check_clip_vision,
    find_preset_files,
    model_family,
    unsupported_layout,
)
from ..files import PlainWeightsError, load_plain_weights
from .folders import file_fingerprint


def _listed(folder: str) -> list[str]:
    return folder_paths.get_filename_list(folder) if folder in folder_paths.folder_names_and_paths else []


def _places(folder: str) -> list[str]:
    return folder_paths.get_folder_paths(folder) if folder in folder_paths.folder_names_and_paths else []


def family_of(model) -> ModelFamily:
    return model_family(model.model.model_config.unet_config.get("context_dim"))


@dataclass(frozen=True)
class PresetPaths:
    picks: PresetPicks
    adapter: str
    clip_vision: str | None
    lora: str | None


def preset_paths(preset: Preset, family: ModelFamily, with_lora: bool) -> PresetPaths:
    """Full paths of the files `preset` picks on `family`; PresetFilesMissing names each missing one."""
    picks = find_preset_files(preset, family, _listed, _places, with_lora=with_lora)

    def full(folder: str, name: str | None) -> str | None:
        return None if name is None else folder_paths.get_full_path(folder, name)

    files = picks.files
    return PresetPaths(
        picks,
        full(files.adapter.folder.value, picks.adapter),
        full(files.clip_vision.folder.value, picks.clip_vision),
        full(files.lora.folder.value, picks.lora) if files.lora is not None else None,
    )


def load_clip_vision_file(path: str):
    clip_vision = comfy.clip_vision.load(path)
    if clip_vision is None:
        raise ValueError(
            f"{os.path.basename(path)} is not a CLIP vision model ComfyUI recognises (ViT-H, ViT-bigG, ViT-L, SigLIP "
            "or DINOv2 weights): replace it with the encoder the preset names."
        )
    return clip_vision


def clip_vision_widths(clip_vision) -> tuple[int, int] | None:
    """(image embeds width, hidden width) of a ComfyUI CLIP vision model; None when it has no CLIP projection."""
    projection = clip_vision.get_sd().get("visual_projection.weight")
    return None if projection is None else (projection.shape[0], projection.shape[1])


def load_lora_file(path: str) -> dict[str, torch.Tensor]:
    """A LoRA's tensors without running any pickle: safetensors, or a tensor-only .bin/.pt read with weights_only."""
    name = os.path.basename(path)
    if name.lower().endswith((".safetensors", ".sft")):
        return load_file(path)
    try:
        state = load_plain_weights(path)
    except PlainWeightsError as error:
        raise ValueError(str(error)) from error
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"{name} is not a flat set of LoRA tensors; use the published .safetensors LoRA.")
    return state


def _patch_count(model) -> int:
    return sum(len(patches) for patches in model.patches.values())


def apply_lora(model, lora: dict[str, torch.Tensor], strength: float, name: str):
    """`model` cloned with the LoRA's weight patches at `strength` (the input model is left as it was)."""
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0)
    if _patch_count(patched) == _patch_count(model):
        raise ValueError(
            f"None of the {len(lora)} tensors of {name} fit this model's layers: it is a LoRA for another model "
            "family. Put the LoRA paired with the preset's adapter for this model in models/loras."
        )
    return patched


def load_preset(model, preset: Preset | str, lora_strength: float) -> tuple[object, Adapter, object | None]:
    """(model with the FaceID LoRA applied when the preset has one and lora_strength is not 0, adapter, CLIP vision;
    None for FaceID/portrait when no CLIP vision file is there, since they read none)."""
    preset = Preset(preset)
    family = family_of(model)
    paths = preset_paths(preset, family, with_lora=lora_strength != 0)
    adapter_name = os.path.basename(paths.adapter)
    unsupported = unsupported_layout(preset)
    if unsupported is not None:
        raise ValueError(unsupported)
    try:
        adapter = load_adapter(paths.adapter)
    except AdapterFormatError as error:
        raise AdapterFormatError(f"The '{preset.value}' preset picked {paths.adapter}: {error}") from error
    check_adapter(preset, family, adapter.spec, adapter_name)
    clip_vision = None
    if paths.clip_vision is not None:
        clip_vision = load_clip_vision_file(paths.clip_vision)
        widths = clip_vision_widths(clip_vision)
        if widths is not None:
            check_clip_vision(preset, adapter.spec, os.path.basename(paths.clip_vision), widths)
    if paths.lora is not None:
        model = apply_lora(model, load_lora_file(paths.lora), lora_strength, os.path.basename(paths.lora))
    return model, adapter, clip_vision


def preset_fingerprint(preset: str, lora_strength: float | None) -> str:
    """The files the preset would pick, for either model family (the model arrives over a link, unknown here):
    a replaced, added or removed file changes it, so ComfyUI's cache never serves an old load."""
    parts = []
    for family in ModelFamily:
        try:
            paths = preset_paths(Preset(preset), family, with_lora=lora_strength != 0)
        except (ValueError, PresetUnavailableError, PresetFilesMissing) as error:
            parts.append(f"{family.value}:unavailable:{type(error).__name__}")
            continue
        files = (paths.adapter, paths.clip_vision, paths.lora)
        parts.append(f"{family.value}:" + "|".join(file_fingerprint(path) for path in files if path is not None))
    return "\n".join(parts)
