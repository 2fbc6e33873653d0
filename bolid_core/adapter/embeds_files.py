"""Saved image and face embeddings: safetensors files with a format and version in their metadata, never pickle.

Written atomically (bolid_core.files); on load the format, version, tensor names, shapes, dtypes and values are
checked before anything reaches an adapter, and each refusal names the file and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..files import save_safetensors_atomic
from ..identity.embeds import FaceEmbeds
from .image_embeds import ImageEmbeds

IMAGE_EMBEDS_FORMAT = "bolid-image-embeds"
FACE_EMBEDS_FORMAT = "bolid-face-embeds"
EMBEDS_FORMAT_VERSION = 1

IMAGE_TENSORS = ("image_embeds", "hidden_states")
IMAGE_OPTIONAL = ("negative_image_embeds", "negative_hidden_states")
FACE_TENSORS = ("arcface",)
FACE_OPTIONAL = ("crops", "norms", "weights")

_WHAT = {IMAGE_EMBEDS_FORMAT: "image embeddings", FACE_EMBEDS_FORMAT: "face embeddings"}
_LOADER = {IMAGE_EMBEDS_FORMAT: "BoLID Load Image Embeds", FACE_EMBEDS_FORMAT: "BoLID Load Face Embeds"}
_SAVER = {IMAGE_EMBEDS_FORMAT: "BoLID Save Image Embeds", FACE_EMBEDS_FORMAT: "BoLID Save Face Embeds"}


def save_image_embeds(embeds: ImageEmbeds, path: str | os.PathLike) -> Path:
    names = IMAGE_TENSORS + IMAGE_OPTIONAL
    return _save({name: getattr(embeds, name) for name in names}, path, IMAGE_EMBEDS_FORMAT)


def load_image_embeds(path: str | os.PathLike) -> ImageEmbeds:
    tensors = _read(path, IMAGE_EMBEDS_FORMAT, IMAGE_TENSORS, IMAGE_OPTIONAL)
    return _build(ImageEmbeds, tensors, path, IMAGE_EMBEDS_FORMAT)


def save_face_embeds(embeds: FaceEmbeds, path: str | os.PathLike) -> Path:
    names = FACE_TENSORS + FACE_OPTIONAL
    return _save({name: getattr(embeds, name) for name in names}, path, FACE_EMBEDS_FORMAT)


def load_face_embeds(path: str | os.PathLike) -> FaceEmbeds:
    tensors = _read(path, FACE_EMBEDS_FORMAT, FACE_TENSORS, FACE_OPTIONAL)
    return _build(FaceEmbeds, tensors, path, FACE_EMBEDS_FORMAT)


def _save(tensors: dict[str, torch.Tensor | None], path: str | os.PathLike, file_format: str) -> Path:
    kept = {name: value for name, value in tensors.items() if value is not None}
    for name, value in kept.items():  # checked again: a tensor can change after its dataclass was built
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise ValueError(f"The {_WHAT[file_format]} to save hold NaN, infinite or non-float {name}: encode again.")
    metadata = {"format": file_format, "format_version": str(EMBEDS_FORMAT_VERSION)}
    return save_safetensors_atomic(kept, path, metadata)


def _read(
    path: str | os.PathLike, file_format: str, required: tuple[str, ...], optional: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    path = Path(path)
    what = _WHAT[file_format]
    if not path.is_file():
        raise FileNotFoundError(f"Saved {what} {path} not found: save them with {_SAVER[file_format]} first.")
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = dict(file.metadata() or {})
            found = metadata.get("format")
            if found != file_format:
                if found in _LOADER:
                    raise ValueError(f"{path.name} holds {_WHAT[found]}: load it with {_LOADER[found]}.")
                raise ValueError(
                    f"{path.name} is not a file of saved {what} (format {found or 'not given'}); pick one written "
                    f"by {_SAVER[file_format]}."
                )
            version = metadata.get("format_version", "")
            if version != str(EMBEDS_FORMAT_VERSION):
                raise ValueError(
                    f"{path.name} is {what} format version {version or 'not given'}; this pack reads version "
                    f"{EMBEDS_FORMAT_VERSION}. Update the pack, or save the embeddings again."
                )
            names = set(file.keys())
            missing = [name for name in required if name not in names]
            unknown = sorted(names - set(required) - set(optional))
            if missing or unknown:
                raise ValueError(
                    f"{path.name} lacks {', '.join(missing) or 'nothing'} and holds unknown tensors "
                    f"{', '.join(unknown) or 'none'}: it was not written by {_SAVER[file_format]}; save it again."
                )
            tensors = {name: file.get_tensor(name) for name in sorted(names)}
    except SafetensorError as error:
        raise ValueError(f"{path.name} is not a readable safetensors file ({error}); save the {what} again.") from None
    for name, value in tensors.items():
        if not value.is_floating_point():
            raise ValueError(f"{path.name}: {name} is {value.dtype}, not floating point; save the {what} again.")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{path.name}: {name} holds NaN or infinite values; save the {what} again.")
    return tensors


def _build(kind: type, tensors: dict[str, torch.Tensor], path: str | os.PathLike, file_format: str):
    try:
        return kind(**tensors)
    except ValueError as error:  # the dataclass's own shape checks, with the file named
        raise ValueError(f"{Path(path).name}: {error} Save the {_WHAT[file_format]} again.") from None
