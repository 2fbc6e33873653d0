"""Model folders the pack reads from, registered with ComfyUI's folder_paths."""

from __future__ import annotations

import os

import folder_paths

# Our own folders and the file types listed in their combos. `ipadapter` and `clip_vision` are
# reused as ComfyUI and IPAdapter_plus define them.
MODEL_FOLDERS: dict[str, set[str]] = {
    "bolid": {".safetensors"},
    "ultralytics": {".pt"},
    "insightface": set(),
    "ipadapter": {".safetensors", ".bin"},
}


def register_model_folders() -> None:
    """Add models/<name> for each of our folders; keeps paths a user set in extra_model_paths.yaml."""
    for name, extensions in MODEL_FOLDERS.items():
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        folder_paths.folder_names_and_paths[name][1].update(extensions)
