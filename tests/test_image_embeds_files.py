"""Saved image and face embeddings: exact round trips, safetensors only, and clear refusals of bad files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bolid_core.adapter.embeds_files import load_face_embeds, load_image_embeds, save_face_embeds, save_image_embeds
from bolid_core.adapter.image_embeds import ImageEmbeds
from bolid_core.body import BodyID, save_body_id
from bolid_core.identity.embeds import FaceEmbeds


def image_embeds(negative: bool = True, dtype: torch.dtype = torch.float32) -> ImageEmbeds:
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(3, 16, generator=g), torch.randn(3, 5, 8, generator=g)]
    if negative:
        tensors += [torch.randn(1, 16, generator=g), torch.randn(1, 5, 8, generator=g)]
    return ImageEmbeds(*[t.to(dtype) for t in tensors])


def face_embeds(full: bool = True) -> FaceEmbeds:
    g = torch.Generator().manual_seed(1)
    arcface = torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=1)
    if not full:
        return FaceEmbeds(arcface)
    return FaceEmbeds(
        arcface, torch.rand(2, 32, 32, 3, generator=g), torch.tensor([20.5, 17.25]), torch.tensor([0.25, 0.75])
    )


def header(path: Path) -> dict:
    """The safetensors header, read as the format defines it: 8 bytes little-endian length, then JSON."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length])


def test_image_embeds_round_trip_exactly(tmp_path: Path) -> None:
    for embeds in (image_embeds(), image_embeds(negative=False), image_embeds(dtype=torch.float16)):
        path = save_image_embeds(embeds, tmp_path / "one.safetensors")
        loaded = load_image_embeds(path)
        for name in ("image_embeds", "hidden_states", "negative_image_embeds", "negative_hidden_states"):
            want, got = getattr(embeds, name), getattr(loaded, name)
            assert (want is None) == (got is None)
            if want is not None:
                assert got.dtype == want.dtype and torch.equal(got, want), name
    meta = header(tmp_path / "one.safetensors")["__metadata__"]
    assert meta == {"format": "bolid-image-embeds", "format_version": "1"}
    assert [p.name for p in tmp_path.iterdir()] == ["one.safetensors"], "no temporary file left behind"


def test_face_embeds_round_trip_exactly(tmp_path: Path) -> None:
    for embeds in (face_embeds(), face_embeds(full=False)):
        loaded = load_face_embeds(save_face_embeds(embeds, tmp_path / "face.safetensors"))
        for name in ("arcface", "crops", "norms", "weights"):
            want, got = getattr(embeds, name), getattr(loaded, name)
            assert (want is None) == (got is None)
            if want is not None:
                assert torch.equal(got, want), name
    assert header(tmp_path / "face.safetensors")["__metadata__"]["format"] == "bolid-face-embeds"


def write(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    base = {"format": "bolid-image-embeds", "format_version": "1"}
    save_file(tensors, str(path), metadata=base if metadata is None else metadata)
    return path


def test_refusals_name_the_file_and_what_to_do(tmp_path: Path) -> None:
    good = {"image_embeds": torch.zeros(2, 4), "hidden_states": torch.zeros(2, 3, 5)}
    cases = [
        (write(tmp_path / "plain.safetensors", good, {}), "not a file of saved image embeddings"),
        (write(tmp_path / "v2.safetensors", good, {"format": "bolid-image-embeds", "format_version": "2"}), "version"),
        (write(tmp_path / "nohidden.safetensors", {"image_embeds": torch.zeros(2, 4)}), "lacks hidden_states"),
        (write(tmp_path / "extra.safetensors", {**good, "latents": torch.zeros(1)}), "unknown tensors latents"),
        (write(tmp_path / "shape.safetensors", {**good, "image_embeds": torch.zeros(2, 4, 1)}), "must be"),
        (write(tmp_path / "count.safetensors", {**good, "image_embeds": torch.zeros(3, 4)}), "same, non-zero"),
        (write(tmp_path / "nan.safetensors", {**good, "hidden_states": torch.full((2, 3, 5), float("nan"))}), "NaN"),
        (write(tmp_path / "int.safetensors", {**good, "image_embeds": torch.zeros(2, 4, dtype=torch.int64)}), "int64"),
        (
            write(tmp_path / "neg.safetensors", {**good, "negative_image_embeds": torch.zeros(1, 4)}),
            "give both or neither",
        ),
        (
            write(
                tmp_path / "negshape.safetensors",
                {**good, "negative_image_embeds": torch.zeros(1, 7), "negative_hidden_states": torch.zeros(1, 3, 5)},
            ),
            "same CLIP vision model",
        ),
    ]
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x80\x04not a safetensors file at all")  # e.g. a pickle renamed
    cases.append((garbage, "not a readable safetensors file"))
    body = tmp_path / "body.safetensors"
    save_body_id(BodyID(torch.zeros(1, 4), 1, "enc"), body)
    cases.append((body, "bolid-body-id"))
    for path, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            load_image_embeds(path)
        assert path.name in str(caught.value), f"{path.name}: the error names the file"
    with pytest.raises(FileNotFoundError, match="Save Image Embeds"):
        load_image_embeds(tmp_path / "absent.safetensors")


def test_each_loader_points_to_the_other(tmp_path: Path) -> None:
    face = save_face_embeds(face_embeds(), tmp_path / "face.safetensors")
    image = save_image_embeds(image_embeds(), tmp_path / "image.safetensors")
    with pytest.raises(ValueError, match="holds face embeddings: load it with BoLID Load Face Embeds"):
        load_image_embeds(face)
    with pytest.raises(ValueError, match="holds image embeddings: load it with BoLID Load Image Embeds"):
        load_face_embeds(image)
    bad_weights = tmp_path / "weights.safetensors"
    meta = {"format": "bolid-face-embeds", "format_version": "1"}
    write(bad_weights, {"arcface": torch.ones(2, 8), "weights": torch.tensor([0.5, 0.9])}, meta)
    with pytest.raises(ValueError, match="sum to 1"):
        load_face_embeds(bad_weights)
    nan_crops = tmp_path / "crops.safetensors"
    write(nan_crops, {"arcface": torch.ones(1, 8), "crops": torch.full((1, 4, 4, 3), float("nan"))}, meta)
    with pytest.raises(ValueError, match=r"crops\.safetensors: crops holds NaN"):
        load_face_embeds(nan_crops)


def test_saving_refuses_values_changed_to_nan(tmp_path: Path) -> None:
    embeds = image_embeds()
    embeds.hidden_states[0, 0, 0] = float("nan")  # a tensor can change after the dataclass checked it
    with pytest.raises(ValueError, match="NaN"):
        save_image_embeds(embeds, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
