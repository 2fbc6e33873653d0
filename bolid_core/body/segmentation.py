"""People in one image, one mask each, from an Ultralytics YOLO segmentation model (.pt or .onnx), offline.

The regions of multi-identity attention (FaceStudio) come from here: every person the model finds, as ultralytics'
own masks at the image's size, numbered left to right. Model files are checked exactly as pose models are
(bolid_core/body/pose.py): a .pt file is unpickled only against an allow-list, an .onnx file's metadata must be plain
values, and ultralytics only ever reads a private copy of the checked bytes.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..images import to_uint8_bgr
from .pose import (
    POSE_CHECKPOINT_MODULES,
    SEGMENTATION_CHECKPOINT_MODULES,
    YoloFileRules,
    checked_checkpoint_model,
    checked_onnx,
    offline_ultralytics,
    yolo_from_checked_checkpoint,
    yolo_from_checked_onnx,
)

SEGMENTATION_MODEL_SUFFIXES = (".pt", ".onnx")
PERSON_CLASS_NAME = "person"
DEFAULT_IMAGE_SIZE = 640  # the size YOLO-seg models are trained at
MIN_IMAGE_SIDE = 32


class SegmentationModelError(RuntimeError):
    """A segmentation model file that cannot be used; the message says what to do."""


# Pose and detect classes are allowed too, so that a pose or detect model is named as such instead of refused as a
# foreign pickle; it is then refused by its model class, before ultralytics sees it.
SEGMENTATION_FILE_RULES = YoloFileRules(
    "segmentation", "segment", "yolo11n-seg.pt", "person regions need a -seg model (yolo11n-seg.pt)",
    POSE_CHECKPOINT_MODULES + SEGMENTATION_CHECKPOINT_MODULES, ("task", "names"), SegmentationModelError,
)  # fmt: skip


@dataclass(frozen=True)
class SegmentationModel:
    """An ultralytics YOLO segmentation model and the index of its person class; an ONNX export with fixed shapes
    runs at its own size."""

    yolo: Any
    person_class: int
    fixed_image_size: tuple[int, int] | None = None  # (height, width)

    @property
    def task(self) -> str:
        return self.yolo.task


@dataclass(frozen=True)
class PersonMasks:
    """The people found in one image, numbered left to right (or in the order asked for)."""

    masks: torch.Tensor  # (N, H, W) float32 in {0, 1}, at the image's size
    boxes: torch.Tensor  # (N, 4) x0, y0, x1, y1 in pixels of the image
    scores: torch.Tensor  # (N,) the model's confidence


def load_segmentation_model(path: str | os.PathLike) -> SegmentationModel:
    """A YOLO segmentation model with a "person" class, from a local .pt or .onnx file; never downloads."""
    offline_ultralytics()
    path = Path(path)
    if path.suffix.lower() not in SEGMENTATION_MODEL_SUFFIXES:
        raise SegmentationModelError(
            f"{path.name} is not a segmentation model file: use a YOLO11-seg .pt or .onnx file (yolo11n-seg.pt)."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"Segmentation model {path} not found: put a YOLO11-seg .pt or .onnx file (e.g. yolo11n-seg.pt) there."
        )
    data = path.read_bytes()  # read once: the bytes checked are the bytes ultralytics loads
    rules = SEGMENTATION_FILE_RULES
    if path.suffix.lower() == ".onnx":
        checked = checked_onnx(data, path.name, rules)
        names = checked.literals.get("names")
        person = _person_class(names, path.name)
        yolo = yolo_from_checked_onnx(data, path.name, rules)
        model = SegmentationModel(yolo, person, checked.fixed_image_size)
    else:
        network = checked_checkpoint_model(data, path.name, rules)
        person = _person_class(getattr(network, "names", None), path.name)
        model = SegmentationModel(yolo_from_checked_checkpoint(data, path.name, rules.task), person)
    if model.task != rules.task:
        raise SegmentationModelError(f"{path.name} is a YOLO {model.task} model; {rules.needs}.")
    return model


def _person_class(names: Any, file_name: str) -> int:
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict):
        raise SegmentationModelError(
            f"{file_name} has no class names: use a YOLO-seg model saved or exported by ultralytics (yolo11n-seg.pt)."
        )
    numbered = sorted((index, name) for index, name in names.items() if isinstance(index, int))
    for index, name in numbered:
        if isinstance(name, str) and name.strip().lower() == PERSON_CLASS_NAME:
            return index
    shown = ", ".join(repr(names[key]) for key in list(names)[:8]) + (", ..." if len(names) > 8 else "")
    raise SegmentationModelError(
        f"{file_name} has no 'person' class (its classes: {shown}): use a model trained on people, such as the COCO "
        "YOLO11-seg models (yolo11n-seg.pt)."
    )


def parse_order(text: str, count: int) -> list[int]:
    """Which people, in which order, by their left-to-right numbers 0..count-1.

    "" keeps all, left to right. "2,0,1" reorders them. A shorter list keeps only the people it names, in its order:
    "1" is person 1 alone, "1,0" the two leftmost swapped, with anyone else dropped.
    """
    if not isinstance(text, str):
        raise ValueError(f"order must be text such as '1,0'; got {type(text).__name__}.")
    if not text.strip():
        return list(range(count))
    numbers: list[int] = []
    for token in text.split(","):
        token = token.strip()
        if not re.fullmatch(r"[+-]?\d+", token):
            raise ValueError(
                f"order {text!r}: {token!r} is not a person number. Give numbers from the preview, separated by "
                "commas, e.g. '1,0'; leave it empty for left to right."
            )
        number = int(token)
        if not 0 <= number < count:
            found = f"{count} people were found, numbered 0 to {count - 1}" if count else "no people were found"
            raise ValueError(
                f"order {text!r} names person {number}, but {found} left to right: use only those numbers, or raise "
                "max_people / lower the confidence to find more."
            )
        if number in numbers:
            raise ValueError(f"order {text!r} names person {number} twice: name each person at most once.")
        numbers.append(number)
    return numbers


def left_to_right(boxes: torch.Tensor) -> list[int]:
    """Indices of `boxes` (N, 4: x0, y0, x1, y1) by box centre x, ties by centre y, then by index."""
    centres = ((boxes[:, 0] + boxes[:, 2]) / 2).tolist(), ((boxes[:, 1] + boxes[:, 3]) / 2).tolist()
    return sorted(range(boxes.shape[0]), key=lambda i: (centres[0][i], centres[1][i], i))


def person_masks(
    model: SegmentationModel,
    image: torch.Tensor,
    *,
    confidence: float = 0.25,
    max_people: int = 2,
    order: str | Sequence[int] | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> PersonMasks:
    """The people in one image (H, W, C) or (1, H, W, C) in [0, 1], C = 1, 3 or 4, through ultralytics' predictor.

    The max_people most confident people are kept, numbered left to right; `order` (text for parse_order, or a list
    of those numbers) then reorders or picks among them. Masks are ultralytics' own at the image's size
    (retina_masks: prototypes upsampled to the letterboxed input, then cropped to each box).
    """
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"The image must be one IMAGE shaped (H, W, 3) or (1, H, W, 3); got {shape}.")
    batch = image if image.ndim == 4 else image[None]
    if batch.shape[0] != 1:
        raise ValueError(
            f"Person regions are found in one image; got a batch of {batch.shape[0]}. Pick the layout image with "
            "an image-from-batch node."
        )
    if not (isinstance(confidence, (int, float)) and math.isfinite(confidence) and 0.0 < confidence <= 1.0):
        raise ValueError(f"confidence must be a finite number in (0, 1]; got {confidence}.")
    if isinstance(max_people, bool) or not isinstance(max_people, int) or max_people < 1:
        raise ValueError(f"max_people must be a whole number of at least 1; got {max_people!r}.")
    height, width = batch.shape[1:3]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"An image of {width}x{height} px is too small to find people in: use at least {MIN_IMAGE_SIDE} px."
        )
    (bgr,) = to_uint8_bgr(batch)
    (result,) = model.yolo.predict(
        [bgr], conf=confidence, imgsz=model.fixed_image_size or image_size, classes=[model.person_class],
        retina_masks=True, verbose=False,
    )  # fmt: skip
    if result.boxes is None or len(result.boxes) == 0 or result.masks is None:
        raise ValueError(
            f"No person found in the image at confidence {confidence:g}: lower the confidence, or use a clearer "
            "image in which each person is large, well lit and not cut off."
        )
    boxes = result.boxes.xyxy.float().cpu()
    scores = result.boxes.conf.float().cpu()
    masks = result.masks.data.cpu().float()
    if masks.shape[1:] != (height, width):
        raise RuntimeError(
            f"ultralytics gave masks of {tuple(masks.shape[1:])} for an image of {(height, width)}: this ultralytics "
            "version does not honour retina_masks; install the version requirements.txt names."
        )
    kept = torch.argsort(scores, descending=True, stable=True)[:max_people]
    numbered = kept[left_to_right(boxes[kept])]
    if order is None or isinstance(order, str):
        picked = parse_order(order or "", len(numbered))
    else:
        picked = parse_order(",".join(str(int(n)) for n in order), len(numbered))
    chosen = numbered[picked]
    return PersonMasks(masks[chosen], boxes[chosen], scores[chosen])
