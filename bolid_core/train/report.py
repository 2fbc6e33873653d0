"""What a finished run shows its user: the loss history drawn as an image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

PLOT_SIZE = (512, 256)  # width, height
_MARGIN = 12
_BACKGROUND, _LINE, _TEXT = (24, 24, 24), (79, 195, 247), (220, 220, 220)


def loss_plot(history: Sequence[dict[str, float]], size: tuple[int, int] = PLOT_SIZE) -> torch.Tensor:
    """(1, H, W, 3) float image in [0, 1]: the total loss per step as a line scaled to its range, and a caption with
    the first and last values. An empty history gives the blank plot."""
    width, height = size
    image = Image.new("RGB", size, _BACKGROUND)
    draw = ImageDraw.Draw(image)
    values = [record["loss"] for record in history if "loss" in record]
    if values:
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        points = [
            (_MARGIN + (width - 2 * _MARGIN) * i / max(1, len(values) - 1),
             height - _MARGIN - (height - 2 * _MARGIN) * (value - low) / span)
            for i, value in enumerate(values)
        ]  # fmt: skip
        draw.line(points if len(points) > 1 else points * 2, fill=_LINE, width=2)
        draw.text((_MARGIN, 2), f"loss {values[0]:.4g} -> {values[-1]:.4g} ({len(values)} steps)", fill=_TEXT)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
