"""Noise images for an adapter's unconditional branch: a negative image that is "not the reference".

The four kinds IPAdapter_plus users know (its IPAdapterNoise), on a 224² CLIP-vision-sized image: black when no image
is given, else the image's centre square resized to 224. Unlike there, the randomness comes from a seed, not from a
hash of the image, so two nodes with different seeds give different noise for the same image.
"""

from __future__ import annotations

import enum
import math

import torch
import torch.nn.functional as F

from .choices import enum_member

CLIP_SIZE = 224
MAX_BLUR = 32
SHUFFLE_ALPHA = 75.0  # elastic displacement: up to alpha / 2 pixels before smoothing (torchvision ElasticTransform)
SHUFFLE_SIGMA = 3.5  # displacement smoothing at strength 0; none at strength 1
SHUFFLE_NOISE = 0.75  # gaussian noise scale at strength 1


class NoiseType(str, enum.Enum):
    FADE = "fade"  # x·(1−s) + s·U[0,1)
    DISSOLVE = "dissolve"  # each value replaced by U[0,1) with probability s
    GAUSSIAN = "gaussian"  # x + s·N(0,1)
    SHUFFLE = "shuffle"  # elastic warp (smoother as s falls), flipped both ways, then x·(1−n) + n, n = 0.75·s·N(0,1)


def negative_noise(
    noise_type: NoiseType | str, strength: float, blur: int, seed: int, image: torch.Tensor | None = None
) -> torch.Tensor:
    """(n, 224, 224, 3) in [0, 1]: the noise image(s). The random draws, in order, from one torch.Generator seeded
    with `seed`: fade U; dissolve U (the mask), then U; gaussian N; shuffle U (x displacement), U (y), 2 × U
    (unused), then N. This is the order of IPAdapter_plus's draws after its torch.manual_seed(hash of the image), so
    with `seed` set to that hash the noise is the same."""
    if not isinstance(strength, (int, float)) or not math.isfinite(strength) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength is {strength!r}: give a number from 0 to 1.")
    if not isinstance(blur, int) or not 0 <= blur <= MAX_BLUR:
        raise ValueError(f"blur is {blur!r}: give a whole number from 0 to {MAX_BLUR}.")
    base = clip_sized(image)
    generator = torch.Generator().manual_seed(seed)
    noise_type = enum_member(NoiseType, noise_type, "noise type")
    if noise_type is NoiseType.FADE:
        out = base * (1 - strength) + _uniform(base, generator) * strength
    elif noise_type is NoiseType.DISSOLVE:
        mask = (_uniform(base, generator) < strength).to(base.dtype)
        out = base * (1 - mask) + _uniform(base, generator) * mask
    elif noise_type is NoiseType.GAUSSIAN:
        out = base + _normal(base, generator) * strength
    else:
        sigma = (1 - strength) * SHUFFLE_SIGMA
        displacement = elastic_displacement(generator, CLIP_SIZE, CLIP_SIZE, SHUFFLE_ALPHA, sigma)
        warped = warp(base, displacement).flip(1, 2)  # flipped upside down and left to right
        torch.rand(2, generator=generator)  # drawn (and unused) where the peer's two flips draw: a seed gives its noise
        # Filled through a channels-last view of channels-first memory, as the peer's randn_like of its permuted image:
        # torch then draws value by value (not its vectorised path), so a seed gives the peer's noise.
        n, height, width, channels = warped.shape
        noise = torch.empty((n, channels, height, width)).movedim(1, -1).normal_(generator=generator)
        noise = noise * (strength * SHUFFLE_NOISE)
        out = warped * (1 - noise) + noise
    out = out.clamp(0, 1)
    if blur > 0:
        kernel = blur if blur % 2 == 1 else blur + 1
        out = gaussian_blur(out.movedim(-1, 1), kernel, default_blur_sigma(kernel)).movedim(1, -1)
    return out


def clip_sized(image: torch.Tensor | None, size: int = CLIP_SIZE) -> torch.Tensor:
    """Black (1, size, size, 3) without an image; else each image's centre square resized to size² (bicubic,
    antialiased)."""
    if image is None:
        return torch.zeros((1, size, size, 3))
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] == 0 or image.shape[-1] < 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"The image must be an IMAGE batch shaped (n ≥ 1, H, W, 3); got {shape}.")
    pixels = image[..., :3].float().cpu().movedim(-1, 1)
    height, width = pixels.shape[-2:]
    side = min(height, width)
    top, left = round((height - side) / 2), round((width - side) / 2)
    pixels = pixels[..., top : top + side, left : left + side]
    if side != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return pixels.movedim(1, -1).contiguous()


def default_blur_sigma(kernel_size: int) -> float:
    """The σ image libraries pick for a Gaussian kernel of this size (OpenCV's rule, also torchvision's default)."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


def gaussian_blur(images: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """images (n, C, H, W) blurred by a normalised kernel_size² Gaussian of σ, edges reflected."""
    half = kernel_size // 2
    offsets = torch.arange(kernel_size, dtype=images.dtype) - (kernel_size - 1) / 2
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = weights / weights.sum()
    channels = images.shape[1]
    rows = weights.view(1, 1, kernel_size, 1).expand(channels, 1, kernel_size, 1)
    cols = weights.view(1, 1, 1, kernel_size).expand(channels, 1, 1, kernel_size)
    padded = F.pad(images, (half, half, half, half), mode="reflect")
    return F.conv2d(F.conv2d(padded, rows, groups=channels), cols, groups=channels)


def elastic_displacement(
    generator: torch.Generator, height: int, width: int, alpha: float, sigma: float
) -> torch.Tensor:
    """(1, H, W, 2) offsets in grid_sample's [-1, 1] units: U[-1, 1) per pixel, smoothed by a Gaussian of σ (kernel
    8σ+1, made odd) when σ > 0, times alpha / width for x, alpha / height for y; x drawn first (torchvision's
    ElasticTransform, which IPAdapter_plus's shuffle uses, draws them so)."""
    offsets = []
    for size in (width, height):
        field = torch.rand((1, 1, height, width), generator=generator) * 2 - 1
        if sigma > 0:
            kernel = int(8 * sigma + 1)
            kernel += 1 - kernel % 2
            field = gaussian_blur(field, kernel, sigma)
        offsets.append(field * alpha / size)
    return torch.cat(offsets, dim=1).permute(0, 2, 3, 1)


def warp(images: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """images (n, H, W, C) sampled bilinearly at pixel centres + displacement (1, H, W, 2). Outside is black, and a
    sample partly outside is multiplied once more by the share of it inside (torchvision's elastic transform with
    fill 0, which the peer's shuffle uses, darkens the edges so)."""
    n, height, width, _ = images.shape
    ys = torch.linspace((1 - height) / height, (height - 1) / height, height)
    xs = torch.linspace((1 - width) / width, (width - 1) / width, width)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0) + displacement
    with_coverage = torch.cat([images.movedim(-1, 1), images.new_ones((n, 1, height, width))], dim=1)
    sampled = F.grid_sample(
        with_coverage, grid.expand(n, -1, -1, -1), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return (sampled[:, :-1] * sampled[:, -1:]).movedim(1, -1)


def _uniform(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(like.shape, generator=generator, dtype=like.dtype)


def _normal(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype)
