"""Tier 2: the segmentation loader and BoLID Person Regions through their execute, with files in models/ultralytics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from segmentation_factories import person_seg_model, plain_seg_model

NODE_IDS = ("BoLIDSegmentationModelLoader", "BoLIDPersonRegions")


@pytest.fixture()
def nodes(comfy_nodes: dict) -> dict:
    """The node classes as the pack registered them with ComfyUI."""
    return {node_id: comfy_nodes[node_id] for node_id in NODE_IDS}


@pytest.fixture(scope="module")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("ultralytics-built")
    person_seg_model(folder / "yolo11n-seg.pt")
    plain_seg_model(folder / "plain-seg.pt")
    torch.manual_seed(0)
    YOLO("yolo11n-pose.yaml").save(str(folder / "yolo11n-pose.pt"))
    return folder


@pytest.fixture()
def ultralytics_folder(comfy_nodes: dict, built_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import folder_paths

    folder = tmp_path / "ultralytics"
    folder.mkdir()
    for file in built_models.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ultralytics", ([str(folder)], {".pt", ".onnx"}))
    folder_paths.filename_list_cache.clear()
    yield folder
    folder_paths.filename_list_cache.clear()


def layout_image() -> torch.Tensor:
    return torch.rand((1, 160, 224, 3), generator=torch.Generator().manual_seed(0))


def ultralytics_left_to_right(path: Path, image: torch.Tensor, max_people: int) -> torch.Tensor:
    """ultralytics' own masks of the max_people most confident people, sorted by box centre x in a plain loop."""
    from ultralytics import YOLO

    bgr = np.ascontiguousarray((image[0].numpy() * 255).round().astype(np.uint8)[..., ::-1])
    (result,) = YOLO(str(path)).predict([bgr], conf=1e-4, classes=[0], retina_masks=True, verbose=False)
    scores = result.boxes.conf.tolist()
    top = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:max_people]
    centre = {i: (result.boxes.xyxy[i, 0].item() + result.boxes.xyxy[i, 2].item()) / 2 for i in top}
    ordered = sorted(top, key=lambda i: centre[i])
    assert len(set(centre.values())) == len(top), "the test image needs distinct box centres"
    return result.masks.data[ordered].float()


def test_person_regions_give_one_mask_per_person_left_to_right(nodes: dict, ultralytics_folder: Path) -> None:
    loader, regions = nodes["BoLIDSegmentationModelLoader"], nodes["BoLIDPersonRegions"]
    assert {"yolo11n-seg.pt", "yolo11n-pose.pt"} <= set(loader.GET_SCHEMA().inputs[0].options)
    (model,) = loader.execute(segmentation_model="yolo11n-seg.pt").result
    image = layout_image()
    masks, preview = regions.execute(model, image, confidence=1e-4, max_people=3, order="").result
    expected = ultralytics_left_to_right(ultralytics_folder / "yolo11n-seg.pt", image, 3)
    assert masks.shape == (3, 160, 224) and masks.dtype == torch.float32
    assert torch.equal(masks, expected)
    assert preview.shape == (1, 160, 224, 3) and preview.dtype == torch.float32
    assert 0.0 <= float(preview.min()) and float(preview.max()) <= 1.0

    reordered, _ = regions.execute(model, image, confidence=1e-4, max_people=3, order="2,0,1").result
    assert torch.equal(reordered, expected[[2, 0, 1]])
    picked, picked_preview = regions.execute(model, image, confidence=1e-4, max_people=3, order="1").result
    assert torch.equal(picked, expected[[1]]) and picked_preview.shape == (1, 160, 224, 3)
    with pytest.raises(ValueError, match="names person 1 twice"):
        regions.execute(model, image, confidence=1e-4, max_people=3, order="1,1")


def test_preview_tints_each_person_in_their_own_colour(nodes: dict, ultralytics_folder: Path) -> None:
    from bolid_core.identity.region_preview import REGION_PALETTE

    (model,) = nodes["BoLIDSegmentationModelLoader"].execute(segmentation_model="yolo11n-seg.pt").result
    image = layout_image()
    masks, preview = nodes["BoLIDPersonRegions"].execute(model, image, confidence=1e-4, max_people=2, order="").result
    pixels = (preview[0] * 255).round().to(torch.int64)
    original = (image[0] * 255).round().to(torch.int64)
    for person, mask in enumerate(masks):
        only_this = (mask > 0) & (masks.sum(0) == 1)
        ys, xs = torch.nonzero(only_this, as_tuple=True)
        assert len(ys) > 0
        colour = torch.tensor(REGION_PALETTE[person])
        tinted = (original[ys, xs] + colour + 1) // 2  # halfway to the person's colour, rounded half up
        # Inside: the tint; on the outline: the colour itself; a few pixels carry the number's label instead.
        matches = ((pixels[ys, xs] == tinted).all(-1) | (pixels[ys, xs] == colour).all(-1)).float().mean()
        assert matches > 0.8, f"person {person}: {matches:.0%} of their pixels carry their colour"


def test_one_image_only_and_clear_errors(nodes: dict, ultralytics_folder: Path) -> None:
    loader, regions = nodes["BoLIDSegmentationModelLoader"], nodes["BoLIDPersonRegions"]
    (model,) = loader.execute(segmentation_model="yolo11n-seg.pt").result
    with pytest.raises(ValueError, match="got a batch of 2"):
        regions.execute(model, layout_image().repeat(2, 1, 1, 1), confidence=1e-4, max_people=2, order="")
    with pytest.raises(ValueError, match=r"No person found .* lower the confidence"):
        regions.execute(model, layout_image(), confidence=0.999, max_people=2, order="")
    assert "confidence" in regions.validate_inputs(confidence=float("nan"))
    assert regions.validate_inputs(confidence=0.25) is True
    with pytest.raises(ValueError, match="confidence is nan"):
        regions.execute(model, layout_image(), confidence=float("nan"), max_people=2, order="")
    with pytest.raises(RuntimeError, match="is a YOLO pose model; person regions need a -seg model"):
        loader.execute(segmentation_model="yolo11n-pose.pt")
    with pytest.raises(RuntimeError, match="has no 'person' class"):
        loader.execute(segmentation_model="plain-seg.pt")


@pytest.mark.parametrize("name", ["../yolo11n-seg.pt", "/etc/passwd", "sub/../../x.pt"])
def test_paths_outside_the_folder_are_refused(nodes: dict, ultralytics_folder: Path, name: str) -> None:
    loader = nodes["BoLIDSegmentationModelLoader"]
    (ultralytics_folder.parent / "yolo11n-seg.pt").write_bytes((ultralytics_folder / "yolo11n-seg.pt").read_bytes())
    with pytest.raises(ValueError, match="refused"):
        loader.execute(segmentation_model=name)
    assert loader.fingerprint_inputs(segmentation_model=name).startswith("missing:")


def test_loader_fingerprint_follows_the_file(nodes: dict, ultralytics_folder: Path) -> None:
    loader = nodes["BoLIDSegmentationModelLoader"]
    path = ultralytics_folder / "yolo11n-seg.pt"
    first = loader.fingerprint_inputs(segmentation_model="yolo11n-seg.pt")
    assert loader.fingerprint_inputs(segmentation_model="yolo11n-seg.pt") == first
    path.write_bytes((ultralytics_folder / "plain-seg.pt").read_bytes())
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert loader.fingerprint_inputs(segmentation_model="yolo11n-seg.pt") != first
    path.unlink()
    assert loader.fingerprint_inputs(segmentation_model="yolo11n-seg.pt").startswith("missing:")
    with pytest.raises(FileNotFoundError, match="not in models/ultralytics"):
        loader.execute(segmentation_model="yolo11n-seg.pt")
