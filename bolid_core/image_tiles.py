"""Square tiles that cover a whole image, for encoders that only see squares.

CLIP vision resizes an image's short side to 224 and keeps the centre square: a tall full-body reference loses its
head and feet. Covering the image with square tiles (and padding the whole image to a square) keeps every pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_TILES = 16


@dataclass(frozen=True)
class TileBox:
    """A square of side `size` whose top-left pixel is (top, left)."""

    top: int
    left: int
    size: int

    @property
    def bottom(self) -> int:
        return self.top + self.size

    @property
    def right(self) -> int:
        return self.left + self.size


def tile_side(height: int, width: int, tiles: int) -> int:
    """`tiles` squares along the long side, never larger than the short side (a very long image gets more)."""
    return min(height, width, math.ceil(max(height, width) / tiles))


def tile_starts(length: int, side: int) -> list[int]:
    """Starts of the fewest squares of `side` covering [0, length), evenly spaced: the first at 0, the last at
    length - side, neighbours overlapping by the same amount (to the pixel)."""
    count = math.ceil(length / side)
    if count == 1:
        return [0]
    spare = length - side
    return [(i * spare + (count - 1) // 2) // (count - 1) for i in range(count)]


def square_tiles(height: int, width: int, tiles: int) -> list[TileBox]:
    """Square boxes covering the whole height × width image, row by row (top to bottom, left to right).

    tiles ≥ 1 is how many squares go along the long side; the short side gets as many as its length needs. A square
    image with tiles = k gets a k × k grid; a 512 × 1024 image with tiles = 2 gets two 512² squares.
    """
    if height < 1 or width < 1:
        raise ValueError(f"An image to tile must have pixels; got {height} × {width}.")
    if not isinstance(tiles, int) or not 1 <= tiles <= MAX_TILES:
        raise ValueError(f"tiles is {tiles!r}: give a whole number from 1 to {MAX_TILES}.")
    side = tile_side(height, width, tiles)
    return [TileBox(top, left, side) for top in tile_starts(height, side) for left in tile_starts(width, side)]


def crop_tiles(images: torch.Tensor, boxes: list[TileBox]) -> torch.Tensor:
    """images (n, H, W, C) → (n · len(boxes), side, side, C): each image's tiles in `boxes` order, image by image."""
    crops = [images[:, box.top : box.bottom, box.left : box.right] for box in boxes]
    return torch.stack(crops, dim=1).flatten(0, 1)


def pad_to_square(images: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """images (n, H, W, C) centred in (n, S, S, C), S = max(H, W), the margins `fill` (black, as a padded crop for
    CLIP vision is usually made): the whole image, nothing cut."""
    n, height, width, channels = images.shape
    side = max(height, width)
    square = images.new_full((n, side, side, channels), fill)
    top, left = (side - height) // 2, (side - width) // 2
    square[:, top : top + height, left : left + width] = images
    return square
