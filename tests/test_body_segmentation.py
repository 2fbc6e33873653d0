"""Tier 1: person masks through ultralytics' real segmentation predictor, on random-weight YOLO-seg models built
here (tests/segmentation_factories.py says why they are re-normalised and named), checked against ultralytics' own
results; the checked loading of .pt and .onnx files; the order text."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pickle_payloads import ConstructorCall, ExecPayload, checkpoint_with
from segmentation_factories import person_seg_model, plain_seg_model

from bolid_core.body.pose import PoseModelError, load_pose_model
from bolid_core.body.segmentation import (
    SegmentationModel,
    SegmentationModelError,
    load_segmentation_model,
    parse_order,
    person_masks,
)

os.environ["YOLO_OFFLINE"] = "true"


@pytest.fixture(scope="module")
def seg_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return person_seg_model(tmp_path_factory.mktemp("ultralytics") / "yolo11n-seg.pt")


def noise_image(height: int = 160, width: int = 224, seed: int = 0) -> torch.Tensor:
    return torch.rand((height, width, 3), generator=torch.Generator().manual_seed(seed))


def as_bgr(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray((image.numpy() * 255).round().astype(np.uint8)[..., ::-1])


def ultralytics_people(path: Path, image: torch.Tensor, **settings):
    """ultralytics' own prediction on the picked file, as a user of ultralytics would run it."""
    from ultralytics import YOLO

    (result,) = YOLO(str(path)).predict([as_bgr(image)], classes=[0], retina_masks=True, verbose=False, **settings)
    return result


def expected_selection(boxes: list[list[float]], scores: list[float], max_people: int) -> list[int]:
    """The max_people highest scores (ties: the earlier one), then by box centre x, centre y, rank: a plain loop."""
    remaining = list(range(len(scores)))
    top: list[int] = []
    while remaining and len(top) < max_people:
        best = remaining[0]
        for index in remaining[1:]:
            if scores[index] > scores[best]:
                best = index
        top.append(best)
        remaining.remove(best)
    keyed = []
    for rank, index in enumerate(top):
        x0, y0, x1, y1 = boxes[index]
        keyed.append(((x0 + x1) / 2, (y0 + y1) / 2, rank, index))
    return [index for *_, index in sorted(keyed)]


@pytest.mark.parametrize(("image_size", "max_people"), [(640, 5), (224, 3)])
def test_people_are_ultralytics_own_masks_at_image_size(seg_model_file: Path, image_size: int, max_people: int) -> None:
    model = load_segmentation_model(seg_model_file)
    assert model.person_class == 0 and model.task == "segment"
    image = noise_image()
    found = person_masks(model, image, confidence=1e-4, max_people=max_people, image_size=image_size)

    result = ultralytics_people(seg_model_file, image, conf=1e-4, imgsz=image_size)
    assert len(result.boxes) > max_people, "the test needs more people than max_people to check the selection"
    assert bool((result.boxes.cls == 0).all())
    boxes, scores = result.boxes.xyxy.tolist(), result.boxes.conf.tolist()
    chosen = expected_selection(boxes, scores, max_people)
    assert found.masks.shape == (max_people, 160, 224) and found.masks.dtype == torch.float32
    torch.testing.assert_close(found.boxes, torch.tensor([boxes[i] for i in chosen]), rtol=0, atol=0)
    torch.testing.assert_close(found.scores, torch.tensor([scores[i] for i in chosen]), rtol=0, atol=0)
    expected_masks = result.masks.data[chosen].float()
    assert torch.equal(found.masks, expected_masks)

    # Independently of ultralytics: left to right by box centre, binary, non-empty, and inside each person's box.
    centres = [(b[0] + b[2]) / 2 for b in found.boxes.tolist()]
    assert centres == sorted(centres)
    assert set(found.masks.unique().tolist()) <= {0.0, 1.0}
    for mask, (x0, y0, x1, y1) in zip(found.masks, found.boxes.tolist(), strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert len(ys) > 0
        assert int(x0) - 1 <= xs.min() and xs.max() <= int(x1) + 1
        assert int(y0) - 1 <= ys.min() and ys.max() <= int(y1) + 1


class FixedBoxes(SimpleNamespace):
    def __len__(self) -> int:
        return len(self.conf)


class FixedPeople:
    """Stands in for ultralytics' YOLO: gives the same people, in the order given (not by score), to any image."""

    task = "segment"

    def __init__(self, boxes: list[list[float]], scores: list[float], height: int, width: int) -> None:
        masks = torch.zeros((len(boxes), height, width), dtype=torch.uint8)
        for index, (x0, y0, x1, y1) in enumerate(boxes):
            masks[index, int(y0) : int(y1), int(x0) : int(x1)] = 1
        self.result = SimpleNamespace(
            boxes=FixedBoxes(xyxy=torch.tensor(boxes), conf=torch.tensor(scores)),
            masks=SimpleNamespace(data=masks),
        )
        self.calls: list[dict] = []

    def predict(self, images: list, **settings) -> list:
        self.calls.append(settings)
        return [self.result]


def test_the_most_confident_people_numbered_by_centre_x_then_y() -> None:
    boxes = [
        [0, 0, 10, 40],  # 0: leftmost, least confident but one: dropped by max_people=3
        [40, 0, 60, 40],  # 1: centre (50, 20)
        [45, 40, 55, 60],  # 2: centre (50, 50): same x as 1, lower down, so after it
        [0, 20, 20, 60],  # 3: centre (10, 40)
        [80, 0, 100, 60],  # 4: least confident: dropped
    ]
    fake = FixedPeople(boxes, [0.2, 0.9, 0.5, 0.7, 0.1], 64, 100)
    model = SegmentationModel(fake, person_class=3)
    found = person_masks(model, torch.rand(64, 100, 3), confidence=0.05, max_people=3, image_size=320)
    assert fake.calls == [dict(conf=0.05, imgsz=320, classes=[3], retina_masks=True, verbose=False)]
    assert found.boxes.tolist() == [boxes[3], boxes[1], boxes[2]]
    assert found.scores.tolist() == pytest.approx([0.7, 0.9, 0.5])
    assert torch.equal(found.masks, fake.result.masks.data[[3, 1, 2]].float())
    again = person_masks(model, torch.rand(64, 100, 3), confidence=0.05, max_people=3, order="2,0")
    assert again.boxes.tolist() == [boxes[2], boxes[3]]


def test_order_reorders_and_picks_people(seg_model_file: Path) -> None:
    model = load_segmentation_model(seg_model_file)
    image = noise_image()
    left_to_right = person_masks(model, image, confidence=1e-4, max_people=3)
    for order, picked in (("2,0,1", [2, 0, 1]), (" 1 , 0 ", [1, 0]), ("2", [2]), ([0, 2], [0, 2])):
        found = person_masks(model, image, confidence=1e-4, max_people=3, order=order)
        assert torch.equal(found.masks, left_to_right.masks[picked])
        assert torch.equal(found.boxes, left_to_right.boxes[picked])
    with pytest.raises(ValueError, match=r"names person 3, but 3 people were found, numbered 0 to 2"):
        person_masks(model, image, confidence=1e-4, max_people=3, order="3,0")


def test_one_image_in_a_batch_of_one_grey_or_rgba(seg_model_file: Path) -> None:
    model = load_segmentation_model(seg_model_file)
    image = noise_image()
    single = person_masks(model, image, confidence=1e-4, max_people=2, image_size=224)
    batched = person_masks(model, image[None], confidence=1e-4, max_people=2, image_size=224)
    assert torch.equal(single.masks, batched.masks)
    rgba = torch.cat([image, torch.ones(160, 224, 1)], dim=-1)
    assert torch.equal(person_masks(model, rgba, confidence=1e-4, max_people=2, image_size=224).masks, single.masks)
    grey = person_masks(model, image[..., :1], confidence=1e-4, max_people=2, image_size=224)
    assert grey.masks.shape[1:] == (160, 224)
    with pytest.raises(ValueError, match="got a batch of 2"):
        person_masks(model, torch.stack([image, image]), confidence=1e-4)
    with pytest.raises(ValueError, match="too small to find people"):
        person_masks(model, torch.rand(20, 40, 3), confidence=1e-4)
    with pytest.raises(ValueError, match=r"shaped \(H, W, 3\)"):
        person_masks(model, torch.rand(160, 224), confidence=1e-4)
    for value in (float("nan"), float("inf"), 0.0, 1.5):
        with pytest.raises(ValueError, match="confidence must be a finite number"):
            person_masks(model, image, confidence=value)
    with pytest.raises(ValueError, match="max_people must be"):
        person_masks(model, image, max_people=0)


def test_no_person_says_what_to_try(seg_model_file: Path) -> None:
    model = load_segmentation_model(seg_model_file)
    with pytest.raises(ValueError, match=r"No person found in the image at confidence 0.999: lower the confidence"):
        person_masks(model, noise_image(), confidence=0.999)


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [("", 3, [0, 1, 2]), ("  ", 2, [0, 1]), ("2,0,1", 3, [2, 0, 1]), ("1", 3, [1]), (" 1 ,0", 2, [1, 0]),
     ("+1", 2, [1]), ("", 0, [])],
)  # fmt: skip
def test_parse_order(text: str, count: int, expected: list[int]) -> None:
    assert parse_order(text, count) == expected


@pytest.mark.parametrize(
    ("text", "count", "message"),
    [
        ("0,0", 2, "names person 0 twice"),
        ("1,2", 2, "names person 2, but 2 people were found, numbered 0 to 1"),
        ("-1", 2, "names person -1"),
        ("0,a", 2, "'a' is not a person number"),
        ("1.5", 3, "'1.5' is not a person number"),
        ("0,,1", 3, "'' is not a person number"),
        ("0", 0, "no people were found"),
    ],
)
def test_parse_order_errors(text: str, count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_order(text, count)


# --- checked loading -----------------------------------------------------------------------------------------------


SEG_CONSTRUCTOR_CALL = ConstructorCall("SegmentationModel", "yolo11n-seg.yaml")


def test_a_payload_in_a_pt_file_never_runs(seg_model_file: Path, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    with pytest.raises(SegmentationModelError) as error:
        load_segmentation_model(checkpoint_with(seg_model_file, tmp_path, ExecPayload(marker)))
    assert not marker.exists(), "the pickle payload ran"
    message = str(error.value)
    assert "refers to builtins.exec, which a YOLO segmentation checkpoint never holds" in message
    assert "export it to ONNX" in message
    assert not [entry for entry in torch.serialization.get_safe_globals() if isinstance(entry, tuple)]


def test_calling_an_allowed_class_is_refused(seg_model_file: Path, tmp_path: Path) -> None:
    with pytest.raises(SegmentationModelError, match=r"calls ultralytics\.nn\.tasks\.SegmentationModel\(\.\.\.\)"):
        load_segmentation_model(checkpoint_with(seg_model_file, tmp_path, SEG_CONSTRUCTOR_CALL))


def test_ultralytics_never_unpickles_the_file_itself(seg_model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ultralytics.nn.tasks

    opened: list[str] = []
    real_load = torch.load

    def recording_load(file, *args, **kwargs):
        opened.append(str(file))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setattr(ultralytics.nn.tasks.torch, "load", recording_load, raising=False)
    assert load_segmentation_model(seg_model_file).task == "segment"
    assert str(seg_model_file) not in opened, "ultralytics read the picked file, not the checked bytes"


def test_pose_detect_and_nameless_models_are_refused(seg_model_file: Path, tmp_path: Path) -> None:
    from ultralytics import YOLO

    torch.manual_seed(0)
    YOLO("yolo11n-pose.yaml").save(str(tmp_path / "yolo11n-pose.pt"))
    YOLO("yolo11n.yaml").save(str(tmp_path / "yolo11n.pt"))
    with pytest.raises(SegmentationModelError, match=r"is a YOLO pose model; person regions need a -seg model"):
        load_segmentation_model(tmp_path / "yolo11n-pose.pt")
    with pytest.raises(SegmentationModelError, match=r"is a YOLO detect model; person regions need a -seg model"):
        load_segmentation_model(tmp_path / "yolo11n.pt")
    with pytest.raises(SegmentationModelError, match=r"has no 'person' class \(its classes: '0', '1'"):
        load_segmentation_model(plain_seg_model(tmp_path / "plain-seg.pt"))
    # The pose loader names a segmentation model as such, still refusing it before anything is unpickled.
    with pytest.raises(PoseModelError, match=r"yolo11n-seg\.pt is a YOLO segment model; the body ID needs a -pose"):
        load_pose_model(seg_model_file)
    with pytest.raises(FileNotFoundError, match=r"yolo11n-seg\.pt"):
        load_segmentation_model(tmp_path / "missing.pt")
    (tmp_path / "model.pth").write_bytes(b"x")
    with pytest.raises(SegmentationModelError, match=r"\.pt or \.onnx"):
        load_segmentation_model(tmp_path / "model.pth")
    (tmp_path / "noise.pt").write_bytes(b"not a zip at all")
    with pytest.raises(SegmentationModelError, match=r"noise\.pt (was refused|is not a readable)"):
        load_segmentation_model(tmp_path / "noise.pt")


# --- .onnx ---------------------------------------------------------------------------------------------------------


def _no_subprocess(*args, **kwargs):
    raise AssertionError(f"ultralytics tried to run {args[:1]}")


@pytest.fixture(scope="module")
def onnx_seg_file(seg_model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random YOLO11-seg exported to ONNX here at 224 px, offline, with every pip install refused."""
    import ultralytics.utils.checks
    from ultralytics import YOLO

    pytest.importorskip("onnx", reason="exporting to ONNX needs the onnx package")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ultralytics.utils.checks, "AUTOINSTALL", False)
        patch.setattr(subprocess, "check_output", _no_subprocess)
        patch.setattr(subprocess, "run", _no_subprocess)
        exported = YOLO(str(seg_model_file)).export(format="onnx", imgsz=224, simplify=False, dynamic=False)
    path = tmp_path_factory.mktemp("onnx") / "yolo11n-seg.onnx"
    Path(exported).replace(path)
    return path


def test_onnx_model_gives_ultralytics_own_masks(onnx_seg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "check_output", _no_subprocess)
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    model = load_segmentation_model(onnx_seg_file)
    assert model.task == "segment" and model.person_class == 0 and model.fixed_image_size == (224, 224)
    image = noise_image()
    found = person_masks(model, image, confidence=1e-4, max_people=2)
    result = ultralytics_people(onnx_seg_file, image, conf=1e-4, imgsz=224)
    chosen = expected_selection(result.boxes.xyxy.tolist(), result.boxes.conf.tolist(), 2)
    assert found.masks.shape == (2, 160, 224)
    assert torch.equal(found.masks, result.masks.data[chosen].float().cpu())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("names", "__import__('pathlib').Path({marker!r}).touch()", "metadata field 'names' is not a plain value"),
        ("names", "{{0: 'cat', 1: 'dog'}}", "has no 'person' class"),
        ("task", "pose", "is a YOLO pose model; person regions need a -seg model"),
    ],
)
def test_onnx_metadata_is_checked_before_ultralytics_evaluates_it(
    onnx_seg_file: Path, tmp_path: Path, field: str, value: str, message: str
) -> None:
    import onnx

    marker = tmp_path / "metadata-ran"
    proto = onnx.load(str(onnx_seg_file))
    for entry in proto.metadata_props:
        if entry.key == field:
            entry.value = value.format(marker=str(marker))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, str(tampered))
    with pytest.raises(SegmentationModelError, match=message):
        load_segmentation_model(tampered)
    assert not marker.exists()
