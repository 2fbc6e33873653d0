"""Model folders the pack reads from, registered with ComfyUI's folder_paths."""

from __future__ import annotations

import os
import re
from pathlib import Path

import folder_paths

from ..file_names import check_name

# Our own folders and the file types listed in their combos. `ipadapter` and `clip_vision` are
# reused as ComfyUI and IPAdapter_plus define them.
MODEL_FOLDERS: dict[str, set[str]] = {
    "bolid": {".safetensors"},
    "ultralytics": {".pt", ".onnx"},  # both checked before ultralytics reads them: bolid_core/body/pose.py
    "insightface": set(),
    "ipadapter": {".safetensors", ".bin"},
    "clip_scorers": set(),  # transformers CLIP folders for the FastFace metrics
    "aesthetic_predictors": {".safetensors", ".pth", ".pt"},  # LAION aesthetic predictors (AE)
    "image_reward": {".safetensors", ".pth", ".pt"},  # ImageReward.pt, with bert-base-uncased's vocab.txt beside it
}


# The miniature models the pack ships (README, "The miniature"), laid out as ComfyUI's models/ folder.
SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "miniature_models"


def register_model_folders() -> None:
    """Add models/<name> for each of our folders; keeps paths a user set in extra_model_paths.yaml. The pack's shipped
    miniature models come last, so a user's file of the same name wins."""
    for name, extensions in MODEL_FOLDERS.items():
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        folder_paths.folder_names_and_paths[name][1].update(extensions)
    shipped = SHIPPED_MODELS / "bolid"
    if shipped.is_dir() and str(shipped) not in folder_paths.get_folder_paths("bolid"):
        folder_paths.add_model_folder_path("bolid", str(shipped))


def model_files(folder: str) -> list[str]:
    """Combo entries for one model folder: its files, relative to it."""
    return folder_paths.get_filename_list(folder)


def model_choices(*folders: str) -> list[str]:
    """Combo entries "<folder>/<file>" for the model files of several model folders (models/bolid's saved bodies and
    miniature base models are not adapters or encoders, so they are left out)."""
    return [f"{folder}/{name}" for folder in folders for name in model_files(folder) if not _reserved(folder, name)]


def resolve_model_choice(choice: str, folders: tuple[str, ...]) -> str:
    """Full path of a combo entry "<folder>/<file>". Only names inside the given model folders resolve."""
    check_name(choice, "model")
    folder, _, name = choice.partition("/")
    if folder not in folders or not name:
        raise ValueError(f"'{choice}' is not a model of {', '.join(folders)}: pick one from the list.")
    return resolve_model_file(folder, name)


def resolve_model_file(folder: str, name: str) -> str:
    """Full path of `name` inside the model folder `folder`; names that leave the folder are refused."""
    check_name(name, f"models/{folder}")
    if not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise ValueError(f"'{name}': model names are relative to models/{folder}; paths outside it are refused.")
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        places = ", ".join(folder_paths.get_folder_paths(folder))
        raise FileNotFoundError(
            f"'{name}' is not in models/{folder} ({places}). Put the file there, then refresh the editor (R)."
        )
    return path


def file_fingerprint(path: str | None) -> str:
    """For fingerprint_inputs: changes when the file is replaced, edited or deleted, so ComfyUI's cache never
    serves a result made from an old file. A folder (an insightface pack, a CLIP folder) changes when any file
    in it does."""
    if path is None or not os.path.exists(path):
        return f"missing:{path}"
    if not os.path.isdir(path):
        stat = os.stat(path)
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
    entries = []
    for parent, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            stat = os.stat(os.path.join(parent, name))
            entries.append(f"{os.path.relpath(os.path.join(parent, name), path)}:{stat.st_size}:{stat.st_mtime_ns}")
    return f"{path}|" + "|".join(entries)


def model_file_fingerprint(folder: str, name: str) -> str:
    """file_fingerprint of a combo entry of one model folder; a name that does not resolve is fingerprinted as
    missing, and execute then says why."""
    try:
        return file_fingerprint(resolve_model_file(folder, name))
    except (ValueError, FileNotFoundError):
        return f"missing:{folder}/{name}"


def model_choice_fingerprint(choice: str, folders: tuple[str, ...]) -> str:
    """file_fingerprint of a combo entry "<folder>/<file>"."""
    try:
        return file_fingerprint(resolve_model_choice(choice, folders))
    except (ValueError, FileNotFoundError):
        return f"missing:{choice}"


# Saved body IDs live in models/bolid/bodies, saved image and face embeddings in models/bolid/embeds and the miniature
# base models in models/bolid/miniature; everything else in models/bolid is an adapter or a body encoder.
BODIES_SUBFOLDER = "bodies"
EMBEDS_SUBFOLDER = "embeds"
MINIATURE_SUBFOLDER = "miniature"
_SAVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}")


def _reserved(folder: str, name: str) -> bool:
    subfolder = name.replace("\\", "/").split("/", 1)[0]
    return folder == "bolid" and subfolder in (BODIES_SUBFOLDER, EMBEDS_SUBFOLDER, MINIATURE_SUBFOLDER)


def body_encoder_choices() -> list[str]:
    return [name for name in folder_paths.get_filename_list("bolid") if not _reserved("bolid", name)]


def body_id_choices() -> list[str]:
    prefix = f"{BODIES_SUBFOLDER}/"
    return [name[len(prefix) :] for name in folder_paths.get_filename_list("bolid") if name.startswith(prefix)]


def saved_body_id_path(name: str) -> str:
    """The saved body ID `name` in any of the bolid model folders (a user's models/bolid first, then, e.g., the
    pack's shipped miniature bodies); a missing one is an error naming where it was looked for."""
    path = body_id_path(name)
    if os.path.isfile(path):
        return path
    found = folder_paths.get_full_path("bolid", f"{BODIES_SUBFOLDER}/{os.path.basename(path)}")
    if found is None:
        places = ", ".join(os.path.join(p, BODIES_SUBFOLDER) for p in folder_paths.get_folder_paths("bolid"))
        raise FileNotFoundError(f"Saved body ID '{name}' not found in {places}: save it with BoLID Save Body ID first.")
    return found


def body_id_path(name: str) -> str:
    """models/bolid/bodies/<name>.safetensors for a plain file name (where Save Body ID writes); anything path-like
    is refused."""
    check_name(name, "body ID")
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    if not _SAVE_NAME.fullmatch(stem) or stem.endswith("."):
        raise ValueError(
            f"'{name}' is not a plain file name: use letters, digits, spaces, '.', '_' or '-' (no folders)."
        )
    bodies = os.path.realpath(os.path.join(folder_paths.get_folder_paths("bolid")[0], BODIES_SUBFOLDER))
    path = os.path.realpath(os.path.join(bodies, f"{stem}.safetensors"))
    if os.path.commonpath([path, bodies]) != bodies:
        raise ValueError(f"'{name}' leaves models/bolid/{BODIES_SUBFOLDER}; refused.")
    return path


def embeds_choices() -> list[str]:
    """Saved embeddings (image and face) in models/bolid/embeds of every bolid model folder, by file name."""
    prefix = f"{EMBEDS_SUBFOLDER}/"
    names = folder_paths.get_filename_list("bolid")
    return sorted({name[len(prefix) :] for name in names if name.startswith(prefix) and "/" not in name[len(prefix) :]})


def saved_embeds_path(name: str) -> str:
    """The saved embeddings file `name` (a plain file name) in models/bolid/embeds, a user's folder first; a missing
    one is an error naming where it was looked for."""
    stem = _plain_stem(name, "embeddings file")
    found = folder_paths.get_full_path("bolid", f"{EMBEDS_SUBFOLDER}/{stem}.safetensors")
    if found is None:
        places = ", ".join(os.path.join(p, EMBEDS_SUBFOLDER) for p in folder_paths.get_folder_paths("bolid"))
        raise FileNotFoundError(
            f"Saved embeddings '{name}' not found in {places}: save them with a BoLID Save ... Embeds node first, "
            "then refresh the editor (R)."
        )
    return found


def new_embeds_path(filename_prefix: str) -> str:
    """models/bolid/embeds/<prefix>_<counter>.safetensors in the user's bolid folder, the counter one past the
    highest taken (as ComfyUI numbers saved images); a prefix that is not a plain file name is refused."""
    stem = _plain_stem(filename_prefix, "embeddings file")
    folder = os.path.realpath(os.path.join(folder_paths.get_folder_paths("bolid")[0], EMBEDS_SUBFOLDER))
    numbered = re.compile(rf"{re.escape(stem)}_(\d+)\.safetensors")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    taken = [int(match.group(1)) for name in names if (match := numbered.fullmatch(name))]
    path = os.path.realpath(os.path.join(folder, f"{stem}_{max(taken, default=0) + 1:05}.safetensors"))
    if os.path.dirname(path) != folder:
        raise ValueError(f"'{filename_prefix}' leaves models/bolid/{EMBEDS_SUBFOLDER}; refused.")
    return path


STANDARD_FACE_PACKS = ("buffalo_l", "antelopev2")


def insightface_root() -> str:
    """models/insightface: packs live in its models/<name>/ subfolder, as insightface lays them out."""
    return folder_paths.get_folder_paths("insightface")[0]


def insightface_packs() -> list[str]:
    """Pack folders found under models/insightface/models, plus the standard names (so a missing one can be
    picked and its error says where the files go)."""
    packs = os.path.join(insightface_root(), "models")
    found = sorted(entry.name for entry in os.scandir(packs) if entry.is_dir()) if os.path.isdir(packs) else []
    return found + [name for name in STANDARD_FACE_PACKS if name not in found]


def clip_scorer_choices() -> list[str]:
    """Folders under models/clip_scorers, each a transformers CLIP (config.json, weights, tokenizer)."""
    root = folder_paths.get_folder_paths("clip_scorers")[0]
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir()) if os.path.isdir(root) else []


def clip_scorer_path(name: str) -> str:
    check_name(name, "CLIP scorer")
    root = os.path.realpath(folder_paths.get_folder_paths("clip_scorers")[0])
    path = os.path.realpath(os.path.join(root, name))
    if not name or os.path.commonpath([path, root]) != root or path == root:
        raise ValueError(f"'{name}' is not a folder inside models/clip_scorers; pick one from the list.")
    return path


# Training: datasets are folders of input/bolid_datasets; runs (checkpoints, cache) live in output/bolid_training,
# never in models/bolid, whose combos list every .safetensors below it.
DATASETS_FOLDER = "bolid_datasets"
TRAINING_FOLDER = "bolid_training"
TRAINING_CACHE = ".cache"


def dataset_choices() -> list[str]:
    root = os.path.join(folder_paths.get_input_directory(), DATASETS_FOLDER)
    if not os.path.isdir(root):
        return []
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))


def dataset_path(name: str) -> str:
    check_name(name, "dataset")
    root = os.path.realpath(os.path.join(folder_paths.get_input_directory(), DATASETS_FOLDER))
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([path, root]) != root or path == root or not os.path.isdir(path):
        raise ValueError(f"'{name}' is not a folder of input/{DATASETS_FOLDER}; pick one from the list.")
    return path


def _plain_stem(name: str, what: str) -> str:
    check_name(name, what)
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    if not _SAVE_NAME.fullmatch(stem) or stem.endswith("."):
        raise ValueError(
            f"'{name}' is not a plain file name: use letters, digits, spaces, '.', '_' or '-' (no folders)."
        )
    return stem


def adapter_save_path(name: str) -> str:
    """models/bolid/<name>.safetensors for a plain name; anything path-like is refused."""
    stem = _plain_stem(name, "adapter")
    root = os.path.realpath(folder_paths.get_folder_paths("bolid")[0])
    path = os.path.realpath(os.path.join(root, f"{stem}.safetensors"))
    if os.path.dirname(path) != root:
        raise ValueError(f"'{name}' leaves models/bolid; refused.")
    return path


def training_root() -> str:
    return os.path.join(folder_paths.get_output_directory(), TRAINING_FOLDER)


def training_run_dir(name: str) -> str:
    """output/bolid_training/<adapter name>: the run's checkpoints."""
    return os.path.join(training_root(), _plain_stem(name, "adapter"))


def training_cache_dir() -> str:
    """One cache for every run: its entries are keyed by image content and encoder, so runs share them."""
    return os.path.join(training_root(), TRAINING_CACHE)


def resumable_runs() -> list[str]:
    from ..train.state import latest_checkpoint

    root = training_root()
    if not os.path.isdir(root):
        return []
    runs = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith(".") and _SAVE_NAME.fullmatch(entry.name):
            if latest_checkpoint(os.path.join(entry.path, "checkpoints")) is not None:
                runs.append(entry.name)
    return runs


def training_config_choices() -> list[str]:
    root = os.path.join(folder_paths.get_folder_paths("bolid")[0], "training")
    if not os.path.isdir(root):
        return []
    return sorted(e.name for e in os.scandir(root) if e.is_file() and e.name.endswith((".toml", ".yaml", ".yml")))


def training_config_path(name: str) -> str:
    check_name(name, "training config")
    root = os.path.realpath(os.path.join(folder_paths.get_folder_paths("bolid")[0], "training"))
    path = os.path.realpath(os.path.join(root, name))
    if os.path.dirname(path) != root or not os.path.isfile(path):
        raise ValueError(f"'{name}' is not a config file of models/bolid/training; pick one from the list.")
    return path
