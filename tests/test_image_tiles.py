"""Square tiles covering a whole image: exact boxes, coverage, even spacing, crops and padding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bolid_core.image_tiles import TileBox, crop_tiles, pad_to_square, square_tiles


def boxes(height: int, width: int, tiles: int) -> list[tuple[int, int, int]]:
    return [(b.top, b.left, b.size) for b in square_tiles(height, width, tiles)]


def test_exact_boxes() -> None:
    # a 512 wide, 1024 tall full-body reference: two 512² squares, head and feet kept
    assert boxes(1024, 512, 2) == [(0, 0, 512), (512, 0, 512)]
    # three along the long side: side ⌈1024/3⌉ = 342; rows at 0, 341, 682; columns at 0 and 512 - 342 = 170
    assert boxes(1024, 512, 3) == [(top, left, 342) for top in (0, 341, 682) for left in (0, 170)]
    assert boxes(512, 512, 2) == [(0, 0, 256), (0, 256, 256), (256, 0, 256), (256, 256, 256)]
    # very wide: squares never exceed the short side, so more than `tiles` go along the long side
    assert boxes(512, 2048, 2) == [(0, 0, 512), (0, 512, 512), (0, 1024, 512), (0, 1536, 512)]
    assert boxes(300, 500, 1) == [(0, 0, 300), (0, 200, 300)]
    assert boxes(100, 100, 3) == [(top, left, 34) for top in (0, 33, 66) for left in (0, 33, 66)]
    assert boxes(224, 224, 1) == [(0, 0, 224)]


@pytest.mark.parametrize(("height", "width"), [(1, 1), (7, 3), (224, 225), (480, 640), (1000, 333), (97, 1601)])
@pytest.mark.parametrize("tiles", [1, 2, 3, 5, 16])
def test_tiles_cover_the_image_evenly_with_the_fewest_squares(height: int, width: int, tiles: int) -> None:
    found = square_tiles(height, width, tiles)
    side = found[0].size
    assert all(b.size == side for b in found)
    assert side <= min(height, width)
    covered = torch.zeros(height, width, dtype=torch.int32)
    for b in found:
        assert 0 <= b.top and b.bottom <= height and 0 <= b.left and b.right <= width
        covered[b.top : b.bottom, b.left : b.right] += 1
    assert bool((covered > 0).all()), "every pixel is in a tile"
    for starts, length in ((sorted({b.top for b in found}), height), (sorted({b.left for b in found}), width)):
        assert starts[0] == 0 and starts[-1] == length - side
        assert len(starts) == math.ceil(length / side), "the fewest squares that cover"
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert not gaps or max(gaps) - min(gaps) <= 1, "evenly spaced"
    assert len(found) == len({(b.top, b.left) for b in found})


def test_refusals() -> None:
    for tiles in (0, 17, 1.5, "2"):
        with pytest.raises(ValueError, match="tiles"):
            square_tiles(64, 64, tiles)
    with pytest.raises(ValueError, match="pixels"):
        square_tiles(0, 64, 2)


def test_crops_and_padding() -> None:
    images = torch.arange(2 * 6 * 4 * 3, dtype=torch.float32).reshape(2, 6, 4, 3)
    found = [TileBox(0, 0, 4), TileBox(2, 0, 4)]
    crops = crop_tiles(images, found)
    assert crops.shape == (4, 4, 4, 3)
    expected = [images[0, 0:4], images[0, 2:6], images[1, 0:4], images[1, 2:6]]
    for crop, want in zip(crops, expected, strict=True):
        assert torch.equal(crop, want)
    square = pad_to_square(images)
    assert square.shape == (2, 6, 6, 3)
    assert torch.equal(square[:, :, 1:5], images)
    assert bool((square[:, :, 0] == 0).all()) and bool((square[:, :, 5] == 0).all())
    wide = pad_to_square(torch.ones(1, 3, 8, 3))
    assert torch.equal(wide[0, :, :, 0], torch.tensor([[0.0] * 8] * 2 + [[1.0] * 8] * 3 + [[0.0] * 8] * 3))
