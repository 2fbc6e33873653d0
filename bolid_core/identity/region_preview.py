"""Preview of identity regions: each region tinted in its identity's colour, outlined and numbered.

Overlaps are resolved as the attention resolves them (region_owners at the preview resolution), so what is shown
is what each identity will reach. Shapes and text are drawn without anti-aliasing: every pixel carries an exact
colour, which the tests read back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..images import to_uint8_bgr
from .regions import as_mask_stack, common_batch, region_owners

PREVIEW_MAX_SIDE = 512
# RGB, indexed by region number (identity i is always REGION_PALETTE[i % len]). No white: white is the label.
REGION_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (128, 0, 0),
    (170, 255, 195),
    (0, 0, 128),
)
LABEL_COLOUR = (255, 255, 255)
LABEL_SHADOW_COLOUR = (0, 0, 0)
CANVAS_COLOUR = (48, 48, 48)  # the dark canvas when no image is given
# Integer blends, rounded half up: inside region i a pixel goes halfway to its colour,
# (pixel + colour + 1) // 2; background keeps 3/8 of its value, (3 * pixel + 4) // 8.
BACKGROUND_KEEP_EIGHTHS = 3


def region_colour(index: int) -> tuple[int, int, int]:
    return REGION_PALETTE[index % len(REGION_PALETTE)]


def tint(pixels: np.ndarray, colour: Sequence[int]) -> np.ndarray:
    return ((pixels.astype(np.int32) + np.asarray(colour, np.int32) + 1) // 2).astype(np.uint8)


def darken(pixels: np.ndarray) -> np.ndarray:
    return ((pixels.astype(np.int32) * BACKGROUND_KEEP_EIGHTHS + 4) // 8).astype(np.uint8)


def _preview_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, PREVIEW_MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def draw_regions_preview(
    images: torch.Tensor | None,
    masks: Sequence[torch.Tensor],
    size_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """(B, h, w, 3) in [0, 1], at most 512 px on the longer side: regions tinted, outlined and numbered 0, 1, ...

    images: (B, H, W, 3) in [0, 1], or None for a dark canvas of size_hw (default: the first mask's size).
    masks: one (1 or B, H, W) mask per region, in apply order, at any resolution.
    """
    import cv2

    stacks = [as_mask_stack(m, f"Region mask {i}") for i, m in enumerate(masks)]
    mask_batch = common_batch([s.shape[0] for s in stacks])
    if images is not None:
        pixels = np.ascontiguousarray(to_uint8_bgr(images)[..., ::-1])
        batch = common_batch([pixels.shape[0], mask_batch], "The images and the region masks")
        height, width = _preview_size(*pixels.shape[1:3])
        canvases = [cv2.resize(p, (width, height), interpolation=cv2.INTER_AREA) for p in pixels]
        canvases = [canvases[i if len(canvases) > 1 else 0] for i in range(batch)]
    else:
        if size_hw is not None:
            if len(size_hw) != 2 or min(int(v) for v in size_hw) < 1:
                raise ValueError(f"The preview size must be two positive sides (height, width); got {size_hw}.")
            source_hw = (int(size_hw[0]), int(size_hw[1]))
        elif stacks:
            source_hw = tuple(stacks[0].shape[1:])
        else:
            raise ValueError("A region preview with no image and no region needs a size: give size_hw.")
        batch = mask_batch
        height, width = _preview_size(*source_hw)
        canvases = [np.full((height, width, 3), CANVAS_COLOUR, np.uint8) for _ in range(batch)]

    owners = region_owners(stacks, (height, width)).cpu().numpy().reshape(-1, height, width)
    long_side = max(height, width)
    line = max(1, round(2 * long_side / PREVIEW_MAX_SIDE))
    font_scale = max(0.5, 1.2 * long_side / PREVIEW_MAX_SIDE)
    text_thickness = max(1, round(3 * long_side / PREVIEW_MAX_SIDE))
    previews = []
    for index in range(batch):
        canvas = canvases[index]
        owner = owners[index if owners.shape[0] > 1 else 0]
        out = darken(canvas)
        for region in range(len(stacks)):
            inside = owner == region
            out[inside] = tint(canvas[inside], region_colour(region))
        for region in range(len(stacks)):
            inside = (owner == region).astype(np.uint8)
            contours, _ = cv2.findContours(inside, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, region_colour(region), line, cv2.LINE_8)
        for region in range(len(stacks)):
            ys, xs = np.nonzero(owner == region)
            if len(ys) == 0:
                continue  # this region owns no pixel here: nothing of it reaches the attention either
            label = str(region)
            (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_thickness)
            origin = (round(float(xs.mean()) - text_w / 2), round(float(ys.mean()) + text_h / 2))
            # Rendered as a coverage mask and thresholded: some OpenCV builds anti-alias text whatever the line type.
            glyph = np.zeros((height, width), np.uint8)
            cv2.putText(glyph, label, origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 255, text_thickness, cv2.LINE_8)
            ink = (glyph >= 128).astype(np.uint8)
            out[cv2.dilate(ink, np.ones((3, 3), np.uint8)) > 0] = LABEL_SHADOW_COLOUR
            out[ink > 0] = LABEL_COLOUR
        previews.append(torch.from_numpy(np.ascontiguousarray(out)).float() / 255.0)
    return torch.stack(previews)
