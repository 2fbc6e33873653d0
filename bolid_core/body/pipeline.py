"""Views of a person -> BODY_ID: pose keypoints, Gaussian weighting, multi-view VAE aggregation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .body_id import BodyID
from .keypoints import COCO_SKELETON, PoseKeypoints
from .pose import VIEW_CHUNK, ViewPoses
from .vae import BodyVAE, ViewChunk, aggregate_views
from .weighting import weight_views

PREVIEW_MAX_SIDE = 512


@dataclass(frozen=True)
class WeightingParams:
    sigma: float  # fraction of each view's shorter side
    alpha: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.sigma) or self.sigma <= 0:
            raise ValueError(f"sigma must be a positive, finite fraction of the view's shorter side; got {self.sigma}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1]; got {self.alpha}.")


def weighted_chunks(views: torch.Tensor, poses: ViewPoses, weighting: WeightingParams) -> Iterator[ViewChunk]:
    """The weighted views (eq. 13), their keypoints and confidences, VIEW_CHUNK views at a time."""
    sigma_px = weighting.sigma * min(views.shape[1], views.shape[2])
    for start in range(0, views.shape[0], VIEW_CHUNK):
        stop = min(start + VIEW_CHUNK, views.shape[0])
        keypoints = poses.keypoints.select(list(range(start, stop)))
        weighted = weight_views(views[start:stop], keypoints, sigma_px, weighting.alpha).images
        yield weighted, keypoints.points, poses.confidence[start:stop]


def body_id_from_views(
    vae: BodyVAE,
    encoder: str,
    views: torch.Tensor,
    poses: ViewPoses,
    weighting: WeightingParams,
    check_interrupt: Callable[[], None] | None = None,
) -> BodyID:
    posterior = aggregate_views(vae, weighted_chunks(views, poses, weighting), check_interrupt)
    return BodyID(posterior.mu, posterior.views_used, encoder)


def draw_preview(views: torch.Tensor, poses: ViewPoses, weighting: WeightingParams) -> torch.Tensor:
    """Each view (at most 512 px on its longer side) tinted by its weight map, with the skeleton drawn on."""
    import cv2

    scale = min(1.0, PREVIEW_MAX_SIDE / max(views.shape[1], views.shape[2]))
    height, width = max(1, round(views.shape[1] * scale)), max(1, round(views.shape[2] * scale))
    small = F.interpolate(views[..., :3].permute(0, 3, 1, 2).float(), size=(height, width), mode="area")
    small = small.permute(0, 2, 3, 1)
    keypoints = PoseKeypoints(poses.keypoints.points)
    weighted = weight_views(small, keypoints, weighting.sigma * min(height, width), weighting.alpha)
    previews = []
    for index in range(small.shape[0]):
        tint = weighted.weight_maps[index, ..., None] * torch.tensor([0.0, 0.35, 0.6])
        canvas = ((0.7 * weighted.images[index] + tint).clamp(0, 1).numpy() * 255).astype(np.uint8).copy()
        points = keypoints.in_pixels(height, width)[index]
        for a, b in COCO_SKELETON:
            if points[a, 2] > 0 and points[b, 2] > 0:
                start, end = (int(points[a, 0]), int(points[a, 1])), (int(points[b, 0]), int(points[b, 1]))
                cv2.line(canvas, start, end, (255, 200, 40), 2, cv2.LINE_AA)
        for x, y, confidence in points.tolist():
            if confidence > 0:
                cv2.circle(canvas, (int(x), int(y)), 3, (255, 80, 40), -1, cv2.LINE_AA)
        previews.append(torch.from_numpy(canvas).float() / 255.0)
    return torch.stack(previews)
