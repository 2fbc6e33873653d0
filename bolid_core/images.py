"""ComfyUI IMAGE tensors as the detectors read them."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8_bgr(images: torch.Tensor) -> np.ndarray:
    """(N, H, W, C) floats in [0, 1] → (N, H, W, 3) uint8 BGR (OpenCV's layout); grey repeated, alpha dropped."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"Images must be an IMAGE tensor shaped (N, H, W, 3), (N, H, W, 1) or (N, H, W, 4); got {shape}."
        )
    if images.shape[0] == 0:
        raise ValueError("Images: the batch is empty.")
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return np.ascontiguousarray(pixels[..., 2::-1])  # RGB(A) → BGR
