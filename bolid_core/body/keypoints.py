"""COCO-17 pose keypoints as the pack passes them around."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
NUM_KEYPOINTS = len(COCO_KEYPOINT_NAMES)

# Limbs as index pairs, for drawing skeletons.
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
    (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip


@dataclass(frozen=True)
class PoseKeypoints:
    """One person's COCO-17 keypoints per view.

    `points` is (views, 17, 3): x and y as fractions of the view's width and height (so the same
    keypoints fit any resolution) and a confidence in [0, 1]. A point with confidence 0 is
    invisible and carries no position: it is stored as (0, 0, 0), as the paper zeroes them.
    """

    points: torch.Tensor

    def __post_init__(self) -> None:
        p = self.points
        if p.ndim != 3 or p.shape[1:] != (NUM_KEYPOINTS, 3):
            raise ValueError(
                f"Pose keypoints must be shaped (views, {NUM_KEYPOINTS}, 3) as (x, y, confidence); "
                f"got {tuple(p.shape)}."
            )
        if p.shape[0] == 0:
            raise ValueError("Pose keypoints hold no view: give at least one view of 17 keypoints.")
        if not torch.isfinite(p).all():
            raise ValueError("Pose keypoints contain NaN or infinite values.")

    @property
    def num_views(self) -> int:
        return self.points.shape[0]

    @property
    def visible(self) -> torch.Tensor:
        """(views, 17) bool: which points have a position."""
        return self.points[..., 2] > 0

    def zero_invisible(self, min_confidence: float) -> PoseKeypoints:
        """Zero every point whose confidence is below `min_confidence`."""
        keep = self.points[..., 2:3] >= min_confidence
        return PoseKeypoints(torch.where(keep & (self.points[..., 2:3] > 0), self.points, 0.0))

    def in_pixels(self, height: int, width: int) -> torch.Tensor:
        """(views, 17, 3) with x, y in pixels of a `height` x `width` view."""
        scale = self.points.new_tensor([width, height, 1.0])
        return self.points * scale

    def select(self, view_indices: list[int]) -> PoseKeypoints:
        return PoseKeypoints(self.points[view_indices])


def parse_keypoints_json(text: str) -> PoseKeypoints:
    """Keypoints from JSON: one view or a list of views.

    A view is 17 `[x, y, confidence]` triples (or the same 51 numbers flat), in COCO order, with x
    and y as fractions of the image's width and height.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"Keypoints are not valid JSON: {error.msg} at line {error.lineno}.") from None
    if not isinstance(data, list) or not data:
        raise ValueError("Keypoints JSON must be a list: one view of 17 [x, y, confidence] triples, or a list of them.")
    views = [data] if _is_view(data) else data
    points = []
    for index, view in enumerate(views):
        if not _is_view(view):
            raise ValueError(
                f"Keypoints view {index} is not 17 [x, y, confidence] triples (or 51 numbers) in COCO order: "
                f"{', '.join(COCO_KEYPOINT_NAMES)}."
            )
        points.append(torch.tensor(view, dtype=torch.float32).reshape(NUM_KEYPOINTS, 3))
    stacked = torch.stack(points)
    if ((stacked[..., 2] < 0) | (stacked[..., 2] > 1)).any():
        raise ValueError("Keypoint confidences must lie in [0, 1].")
    return PoseKeypoints(stacked).zero_invisible(min_confidence=1e-6)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_view(value: object) -> bool:
    if not isinstance(value, list):
        return False
    if len(value) == NUM_KEYPOINTS * 3 and all(_is_number(v) for v in value):
        return True
    return len(value) == NUM_KEYPOINTS and all(
        isinstance(p, list) and len(p) == 3 and all(_is_number(v) for v in p) for p in value
    )
