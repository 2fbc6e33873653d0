"""Spatial masks resized to the query grid of a UNet block."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def block_grid(latent_hw: tuple[int, int], queries: int) -> tuple[int, int]:
    """The (height, width) of a block with `queries` positions, for a latent of `latent_hw`.

    SDXL's UNet halves each side with stride-2 convolutions that round up, so odd sizes shrink as
    ceil(n / 2) at every level; the level is the one whose grid has `queries` positions.
    """
    height, width = latent_hw
    while height * width > queries:
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    if height * width != queries:
        raise ValueError(f"No UNet level of a {latent_hw[0]}x{latent_hw[1]} latent has {queries} positions.")
    return height, width


def mask_to_queries(mask: torch.Tensor, latent_hw: tuple[int, int], queries: int) -> torch.Tensor:
    """(batch, H, W) mask at any resolution -> (batch, queries) weights on this block's grid."""
    height, width = block_grid(latent_hw, queries)
    resized = F.interpolate(mask[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return resized.reshape(mask.shape[0], queries)
