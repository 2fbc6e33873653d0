"""Gaussian keypoint weighting of a view (BoLID, eqs. 11-13).

    w_i(p)   = exp(-||p - k_i||^2 / (2 sigma^2))          (11)  one Gaussian per visible keypoint
    W(p)     = max_i w_i(p),  W_norm = W / max_p W(p)      (12)
    I_w(p)   = I(p) * (alpha + (1 - alpha) * W_norm(p))    (13)

Pixel p is taken at its centre, (column + 0.5, row + 0.5), in the same pixel units as the keypoints.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .keypoints import PoseKeypoints


class WeightedViews(NamedTuple):
    images: torch.Tensor  # (views, H, W, C), eq. 13
    weight_maps: torch.Tensor  # (views, H, W), W_norm of eq. 12
    views_without_keypoints: list[int]  # these views were left unweighted (W_norm = 1)


def keypoint_weight_map(keypoints: PoseKeypoints, height: int, width: int, sigma_px: float) -> torch.Tensor:
    """W_norm of eq. 12 for every view: (views, height, width), float32, peak 1.

    Since exp is decreasing, max_i w_i = exp(-min_i d_i^2 / 2 sigma^2): only the nearest visible
    keypoint matters, so memory stays at one (views, H, W) map whatever the number of keypoints.
    A view with no visible keypoint gets a map of ones (nothing to emphasise).
    """
    if not math.isfinite(sigma_px) or sigma_px <= 0:  # a NaN sigma would give a map of ones: weighting off
        raise ValueError(f"sigma must be a positive, finite number; got {sigma_px}.")
    if height < 1 or width < 1:
        raise ValueError(f"View size must be at least 1x1; got {height}x{width}.")
    points = keypoints.in_pixels(height, width)
    device = points.device
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    inf = torch.tensor(float("inf"), device=device)
    nearest_sq = torch.full((points.shape[0], height, width), float("inf"), device=device)
    for k in range(points.shape[1]):
        x, y, confidence = points[:, k, 0], points[:, k, 1], points[:, k, 2]
        dy_sq = (ys[None, :] - y[:, None]) ** 2  # (views, H)
        dx_sq = (xs[None, :] - x[:, None]) ** 2  # (views, W)
        d_sq = dy_sq[:, :, None] + dx_sq[:, None, :]
        d_sq = torch.where((confidence > 0)[:, None, None], d_sq, inf)
        nearest_sq = torch.minimum(nearest_sq, d_sq)
    weight = torch.exp(-nearest_sq / (2.0 * sigma_px**2))  # eqs. 11-12: W
    peak = weight.amax(dim=(1, 2), keepdim=True)
    # A view whose visible keypoints all lie many sigmas off-canvas underflows to 0: treat as empty.
    return torch.where(peak > 0, weight / peak.clamp_min(torch.finfo(weight.dtype).tiny), torch.ones_like(weight))


def weight_views(images: torch.Tensor, keypoints: PoseKeypoints, sigma_px: float, alpha: float) -> WeightedViews:
    """Apply eq. 13 to channels-last `images` (views, H, W, C).

    `keypoints` has one view per image, or a single view used for all images.
    """
    if images.ndim != 4:
        raise ValueError(f"Images must be shaped (views, height, width, channels); got {tuple(images.shape)}.")
    if not 0.0 <= alpha <= 1.0:  # also refuses NaN
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}.")
    if not torch.isfinite(images).all():
        raise ValueError("The images hold NaN or infinite values: check the node that made them.")
    count, height, width, _ = images.shape
    if keypoints.num_views not in (1, count):
        raise ValueError(
            f"Got {count} images but keypoints for {keypoints.num_views} views: give one keypoint set per "
            "image, or a single set for all of them."
        )
    keypoints = PoseKeypoints(keypoints.points.to(images.device))
    weight_maps = keypoint_weight_map(keypoints, height, width, sigma_px).expand(count, height, width)
    has_points = keypoints.visible.any(dim=1).expand(count)
    factor = alpha + (1.0 - alpha) * weight_maps
    weighted = (images.float() * factor[..., None]).to(images.dtype)
    empty = [i for i in range(count) if not has_points[i]]
    return WeightedViews(weighted, weight_maps.contiguous(), empty)
