"""COCO-17 pose keypoints from Ultralytics YOLO11-pose, offline, batched over views.

ultralytics is imported only when a model is loaded. YOLO_OFFLINE stops its settings sync and
downloads; the pack draws its own previews, so ultralytics' plotting (which fetches a font) never runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..images import to_uint8_bgr
from .keypoints import NUM_KEYPOINTS, PoseKeypoints

VIEW_CHUNK = 8  # views per predict call: bounds memory for any number of views


class PoseModelError(RuntimeError):
    """A pose model file that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class ViewPoses:
    """One person per view: keypoints (zeroed where the view has no person), a confidence per view, notes."""

    keypoints: PoseKeypoints  # (views, 17, 3), x/y as fractions of the view
    confidence: torch.Tensor  # (views,) mean confidence of the visible keypoints; 0 for a view with no person
    empty_views: list[int]
    notes: list[str]


def load_pose_model(path: str | os.PathLike):
    """A YOLO pose model from a local .pt file (trusted: .pt files are pickles; pick them from models/ultralytics)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Pose model {path} not found: put a YOLO11-pose .pt file (e.g. yolo11n-pose.pt) there."
        )
    from ultralytics import YOLO

    model = YOLO(str(path), task="pose")
    if model.task != "pose":
        raise PoseModelError(
            f"{path.name} is a YOLO {model.task} model; the body ID needs a -pose model (yolo11n-pose.pt)."
        )
    return model


def _pick_person(result, view: int) -> tuple[torch.Tensor, float, str | None]:
    """The largest, most confident person: score = box area x box confidence."""
    boxes = result.boxes
    if boxes is None or len(boxes) == 0 or result.keypoints is None:
        return torch.zeros(NUM_KEYPOINTS, 3), 0.0, None
    xywhn = boxes.xywhn.float().cpu()
    scores = xywhn[:, 2] * xywhn[:, 3] * boxes.conf.float().cpu()
    best = int(scores.argmax())
    xyn = result.keypoints.xyn[best].float().cpu()
    conf = result.keypoints.conf
    kp_conf = conf[best].float().cpu() if conf is not None else torch.ones(NUM_KEYPOINTS)
    note = None
    if len(boxes) > 1:
        note = f"view {view}: {len(boxes)} people found; used the largest, most confident one (person {best})."
    return torch.cat([xyn, kp_conf[:, None]], dim=1), float(boxes.conf[best]), note


def detect_poses(
    model,
    views: torch.Tensor,
    *,
    detection_confidence: float = 0.25,
    keypoint_confidence: float = 0.5,
    image_size: int = 640,
    progress: Callable[[int, int], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> ViewPoses:
    """Keypoints of one person per view of `views` (N, H, W, C) in [0, 1]; invisible points are zeroed."""
    if views.ndim != 4 or views.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"Views must be an IMAGE shaped (N, H, W, 3), (N, H, W, 1) or (N, H, W, 4); got {tuple(views.shape)}."
        )
    if min(views.shape[1:3]) < 32:
        raise ValueError(
            f"Views of {views.shape[2]}x{views.shape[1]} px are too small for pose detection: use at least 32 px."
        )
    points, confidences, notes, empty = [], [], [], []
    for start in range(0, views.shape[0], VIEW_CHUNK):
        if check_interrupt is not None:
            check_interrupt()
        chunk = list(to_uint8_bgr(views[start : start + VIEW_CHUNK]))
        results = model.predict(chunk, conf=detection_confidence, imgsz=image_size, verbose=False)
        for offset, result in enumerate(results):
            index = start + offset
            keypoints, _, note = _pick_person(result, index)
            visible = keypoints[:, 2] >= keypoint_confidence
            keypoints = torch.where(visible[:, None], keypoints, torch.zeros(()))
            points.append(keypoints)
            confidences.append(float(keypoints[visible, 2].mean()) if visible.any() else 0.0)
            if not visible.any():
                empty.append(index)
                notes.append(f"view {index}: no person found; skipped.")
            elif note:
                notes.append(note)
        if progress is not None:
            progress(min(start + VIEW_CHUNK, views.shape[0]), views.shape[0])
    return ViewPoses(PoseKeypoints(torch.stack(points)), torch.tensor(confidences), empty, notes)
