"""Tier 2: the embeds nodes as ComfyUI registered them: encode in batches and tiles (a fake CLIP vision that
records what it sees), save and load image/face embeddings in models/bolid/embeds, and the negative-noise node."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bolid_core.identity.embeds import FaceEmbeds


class RecordingClipVision:
    """Stands in for ComfyUI's CLIP vision: keeps every batch it is given; each image's outputs depend on its own
    pixels only: image_embeds = (mean of channels 0, 1, 2, min of channel 0, min of channel 1, side), hidden states
    = the per-channel means of its 3 horizontal bands."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def encode_image(self, image: torch.Tensor) -> SimpleNamespace:
        self.batches.append(image.clone())
        flat = image.flatten(1, 2)
        side = torch.full((image.shape[0], 1), float(image.shape[1]))
        embeds = torch.cat(
            [flat.mean(1), flat[..., 0].amin(1, keepdim=True), flat[..., 1].amin(1, keepdim=True), side], 1
        )
        bands = torch.stack([band.mean((1, 2)) for band in image.tensor_split(3, dim=1)], dim=1)
        return SimpleNamespace(image_embeds=embeds.double(), penultimate_hidden_states=bands.double())


def coordinate_images(count: int, height: int, width: int) -> torch.Tensor:
    """Pixels that say where they are: channel 0 = row / height, 1 = column / width, 2 = (image + 1) / count."""
    rows = (torch.arange(height, dtype=torch.float32) / height).view(1, height, 1).expand(count, height, width)
    cols = (torch.arange(width, dtype=torch.float32) / width).view(1, 1, width).expand(count, height, width)
    which = ((torch.arange(count, dtype=torch.float32) + 1) / count).view(count, 1, 1).expand(count, height, width)
    return torch.stack([rows, cols, which], dim=-1).contiguous()


def encode(comfy_nodes: dict, clip, image, tiles=1, batch=0, negative=None):
    (embeds,) = comfy_nodes["BoLIDEncodeImage"].execute(clip, image, tiles, batch, negative).result
    return embeds


def test_encode_batch_sizes_give_equal_embeds(comfy_nodes: dict) -> None:
    images = torch.rand(5, 40, 40, 3, generator=torch.Generator().manual_seed(0))
    results = {}
    for batch, chunks in ((0, [5]), (1, [1] * 5), (2, [2, 2, 1]), (9, [5])):
        clip = RecordingClipVision()
        results[batch] = encode(comfy_nodes, clip, images, batch=batch)
        assert [b.shape[0] for b in clip.batches] == chunks, f"encode_batch_size {batch}"
        assert torch.equal(torch.cat(clip.batches), images), "every image, once, in order"
    for batch in (1, 2, 9):
        assert torch.equal(results[batch].image_embeds, results[0].image_embeds)
        assert torch.equal(results[batch].hidden_states, results[0].hidden_states)
    assert results[0].image_embeds.dtype == torch.float32 and results[0].references == 5
    assert results[0].negative_image_embeds is None


def test_tiles_cover_the_whole_image(comfy_nodes: dict) -> None:
    """Two 64 tall, 32 wide images, tiles = 2: per image the whole image padded to 64², then tiles (0-32) and
    (32-64) of rows; with encode_batch_size 2 CLIP sees [2 wholes], then [2 tiles] twice."""
    images = coordinate_images(2, 64, 32)
    clip = RecordingClipVision()
    embeds = encode(comfy_nodes, clip, images, tiles=2, batch=2)
    assert [tuple(b.shape) for b in clip.batches] == [(2, 64, 64, 3), (2, 32, 32, 3), (2, 32, 32, 3)]
    wholes, tiles = clip.batches[0], torch.cat(clip.batches[1:])
    padded = torch.zeros(2, 64, 64, 3)
    padded[:, :, 16:48] = images
    assert torch.equal(wholes, padded), "the whole image, centred, black margins, nothing cut"
    assert torch.equal(tiles, torch.stack([images[0, :32], images[0, 32:], images[1, :32], images[1, 32:]]))
    for index in range(2):
        mine = tiles[2 * index : 2 * index + 2]
        seen = {(round(float(p[0]) * 64), round(float(p[1]) * 32)) for p in mine.reshape(-1, 3)}
        assert seen == {(r, c) for r in range(64) for c in range(32)}, "every pixel of the image is in a tile"
    assert embeds.references == 6
    # references per image: whole (side 64, min row 0), tile at row 0, tile at row 32 (min row 0.5)
    sides = embeds.image_embeds[:, 5].tolist()
    min_rows = embeds.image_embeds[:, 3].tolist()
    assert sides == [64, 32, 32, 64, 32, 32]
    assert min_rows == [0.0, 0.0, 0.5, 0.0, 0.0, 0.5]
    assert embeds.image_embeds[:, 2].tolist()[:3] == pytest.approx([0.25, 0.5, 0.5]), "image 1's: ¼ of 64² is black"
    assert embeds.hidden_states.shape == (6, 3, 3)


def test_tiles_of_a_square_image_and_the_negative(comfy_nodes: dict) -> None:
    images = coordinate_images(1, 48, 48)
    negative = torch.full((1, 30, 50, 3), 0.25)
    clip = RecordingClipVision()
    embeds = encode(comfy_nodes, clip, images, tiles=2, negative=negative)
    assert [tuple(b.shape) for b in clip.batches] == [(1, 48, 48, 3), (4, 24, 24, 3), (1, 30, 50, 3)]
    assert torch.equal(clip.batches[0], images), "a square image needs no padding"
    corners = [(0, 0), (0, 24), (24, 0), (24, 24)]
    for tile, (top, left) in zip(clip.batches[1], corners, strict=True):
        assert torch.equal(tile, images[0, top : top + 24, left : left + 24])
    assert torch.equal(clip.batches[2], negative), "the negative image is encoded whole, untiled"
    assert embeds.references == 5
    torch.testing.assert_close(embeds.negative_image_embeds[0, :3], torch.full((3,), 0.25))


def test_untiled_encoding_is_comfyuis(comfy_nodes: dict) -> None:
    images = coordinate_images(2, 64, 32)
    clip = RecordingClipVision()
    embeds = encode(comfy_nodes, clip, images, tiles=1)
    assert len(clip.batches) == 1 and torch.equal(clip.batches[0], images), "the image as given: CLIP crops it"
    assert embeds.references == 2


@pytest.fixture()
def bolid_folder(comfy_nodes: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import folder_paths

    (tmp_path / "bolid").mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "bolid", ([str(tmp_path / "bolid")], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    yield tmp_path / "bolid"
    folder_paths.filename_list_cache.clear()


def options(node) -> list[str]:
    import folder_paths

    folder_paths.filename_list_cache.clear()
    (combo,) = node.define_schema().inputs
    return combo.options


def test_save_then_load_image_and_face_embeds(comfy_nodes: dict, bolid_folder: Path) -> None:
    images = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    embeds = encode(comfy_nodes, RecordingClipVision(), images, negative=torch.zeros(1, 32, 32, 3))
    save, load = comfy_nodes["BoLIDSaveImageEmbeds"], comfy_nodes["BoLIDLoadImageEmbeds"]
    (first,) = save.execute(embeds, "refs").result
    (second,) = save.execute(embeds, "refs").result
    assert (first, second) == ("refs_00001.safetensors", "refs_00002.safetensors")
    assert (bolid_folder / "embeds" / first).is_file()
    assert options(load) == [first, second]
    (loaded,) = load.execute(first).result
    for name in ("image_embeds", "hidden_states", "negative_image_embeds", "negative_hidden_states"):
        assert torch.equal(getattr(loaded, name), getattr(embeds, name)), name

    g = torch.Generator().manual_seed(2)
    face = FaceEmbeds(torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=1), torch.rand(2, 8, 8, 3))
    (face_file,) = comfy_nodes["BoLIDSaveFaceEmbeds"].execute(face, "me").result
    (loaded_face,) = comfy_nodes["BoLIDLoadFaceEmbeds"].execute(face_file).result
    assert torch.equal(loaded_face.arcface, face.arcface) and torch.equal(loaded_face.crops, face.crops)
    assert loaded_face.norms is None and loaded_face.weights is None
    with pytest.raises(ValueError, match="BoLID Load Face Embeds"):
        load.execute(face_file)

    # saved embeddings are neither adapters nor body encoders
    from bolid_core.comfy.folders import body_encoder_choices, model_choices

    (bolid_folder / "adapter.safetensors").write_bytes(b"x")
    folder_paths_names = model_choices("bolid")
    assert folder_paths_names == ["bolid/adapter.safetensors"]
    assert body_encoder_choices() == ["adapter.safetensors"]


def touch_later(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_load_is_fingerprinted_by_the_file(comfy_nodes: dict, bolid_folder: Path) -> None:
    from bolid_core.adapter.embeds_files import save_image_embeds
    from bolid_core.adapter.image_embeds import ImageEmbeds

    load = comfy_nodes["BoLIDLoadImageEmbeds"]
    path = bolid_folder / "embeds" / "mine.safetensors"
    save_image_embeds(ImageEmbeds(torch.zeros(1, 4), torch.zeros(1, 2, 4)), path)
    first = load.fingerprint_inputs(embeds="mine.safetensors")
    assert load.fingerprint_inputs(embeds="mine.safetensors") == first
    save_image_embeds(ImageEmbeds(torch.ones(1, 4), torch.ones(1, 2, 4)), path)  # same size, replaced
    touch_later(path)
    second = load.fingerprint_inputs(embeds="mine.safetensors")
    assert second != first, "a replaced file is never served from the cache"
    (loaded,) = load.execute("mine.safetensors").result
    assert torch.equal(loaded.image_embeds, torch.ones(1, 4))
    path.unlink()
    assert load.fingerprint_inputs(embeds="mine.safetensors") not in (first, second)
    with pytest.raises(FileNotFoundError, match=r"not found in .*embeds"):
        load.execute("mine.safetensors")
    for hostile in ("../adapter.safetensors", "/etc/passwd", "sub/x.safetensors", "a\x00b"):
        assert load.fingerprint_inputs(embeds=hostile).startswith("invalid:")
        with pytest.raises(ValueError, match=r"plain file name|NUL"):
            load.execute(hostile)
        with pytest.raises(ValueError, match=r"plain file name|NUL"):
            comfy_nodes["BoLIDSaveImageEmbeds"].execute(loaded, hostile)


def test_negative_noise_node(comfy_nodes: dict) -> None:
    node = comfy_nodes["BoLIDNegativeImageNoise"]
    (out,) = node.execute("fade", 1.0, 0, 5).result
    expected = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, expected), "fade at strength 1 from black: the seed's uniform noise"
    (from_image,) = node.execute("dissolve", 0.0, 0, 5, torch.full((2, 100, 150, 3), 0.5)).result
    torch.testing.assert_close(from_image, torch.full((2, 224, 224, 3), 0.5))
    assert node.validate_inputs(strength=float("nan")) != True  # noqa: E712 - a message, not a bool
    assert node.validate_inputs(strength=0.5) is True
    with pytest.raises(ValueError, match="strength"):
        node.execute("fade", float("nan"), 0, 5)
    with pytest.raises(ValueError, match="noise type"):
        node.execute("swirl", 0.5, 0, 5)


def test_tiles_through_a_real_clip_vision(comfy_nodes: dict) -> None:
    """ComfyUI's own CLIP vision (tiny): each reference equals that crop encoded alone, whatever the batch size."""
    from bolid_test_models.tiny_models import tiny_clip_vision

    clip = tiny_clip_vision()
    images = torch.rand(2, 96, 40, 3, generator=torch.Generator().manual_seed(3))
    padded = torch.zeros(2, 96, 96, 3)
    padded[:, :, 28:68] = images
    crops = []
    for index in range(2):  # tiles = 2: side min(40, 48) = 40; rows at 0, 28, 56 (3 squares cover 96)
        crops += [padded[index : index + 1]] + [images[index : index + 1, top : top + 40] for top in (0, 28, 56)]
    expected = [clip.encode_image(crop) for crop in crops]
    for batch in (0, 1, 3):
        embeds = encode(comfy_nodes, clip, images, tiles=2, batch=batch)
        assert embeds.references == 8
        for index, alone in enumerate(expected):
            torch.testing.assert_close(embeds.image_embeds[index], alone.image_embeds[0].float(), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(
                embeds.hidden_states[index], alone.penultimate_hidden_states[0].float(), rtol=1e-4, atol=1e-5
            )
