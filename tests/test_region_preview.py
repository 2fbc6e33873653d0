"""Tier 1: the region preview's exact pixel colours, labels, ownership of overlaps and sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bolid_core.identity.region_preview import CANVAS_COLOUR, LABEL_COLOUR, REGION_PALETTE, draw_regions_preview

WHITE = (255, 255, 255)


def to_uint8(preview: torch.Tensor) -> np.ndarray:
    return (preview.numpy() * 255).round().astype(np.int64)


def rectangle(size_hw, y0, y1, x0, x1, value=1.0, batch=1):
    mask = torch.zeros(batch, *size_hw)
    mask[:, y0:y1, x0:x1] = value
    return mask


def halfway(pixel, colour):
    """The tint written plainly: halfway from the pixel to the region's colour, halves rounded up."""
    return [int(np.floor((p + c) / 2 + 0.5)) for p, c in zip(pixel, colour, strict=True)]


def dimmed(pixel):
    """Background written plainly: 3/8 of the value, halves rounded up."""
    return [int(np.floor(p * 3 / 8 + 0.5)) for p in pixel]


def label_box(centre_yx, radius=14):
    y, x = centre_yx
    return slice(y - radius, y + radius), slice(x - radius, x + radius)


def test_palette_is_distinct_and_never_the_label_colour():
    assert len(REGION_PALETTE) >= 8
    assert len(set(REGION_PALETTE)) == len(REGION_PALETTE)
    assert LABEL_COLOUR == WHITE and WHITE not in REGION_PALETTE


def test_dark_canvas_regions_tinted_outlined_and_numbered():
    size = (120, 160)
    masks = [rectangle(size, 10, 70, 10, 70), rectangle(size, 40, 110, 90, 150)]
    preview = to_uint8(draw_regions_preview(None, masks))
    assert preview.shape == (1, 120, 160, 3)
    image = preview[0]
    boxes, centres = [(10, 70, 10, 70), (40, 110, 90, 150)], [(40, 40), (75, 120)]
    for index, ((y0, y1, x0, x1), centre) in enumerate(zip(boxes, centres, strict=True)):
        expected = halfway(CANVAS_COLOUR, REGION_PALETTE[index])
        interior = np.zeros(size, bool)
        interior[y0 + 3 : y1 - 3, x0 + 3 : x1 - 3] = True
        interior[label_box(centre)] = False
        assert (image[interior] == expected).all()
        # The outline: the region's own corner pixel in the palette colour itself.
        assert image[y0, x0].tolist() == list(REGION_PALETTE[index])
        assert image[y1 - 1, x1 - 1].tolist() == list(REGION_PALETTE[index])
        # The number: label-coloured pixels around the centroid.
        near = image[label_box(centre)]
        assert (near == WHITE).all(-1).sum() >= 10
    white = (image == WHITE).all(-1)
    for centre in centres:
        white[label_box(centre)] = False
    assert not white.any()  # labels only near the centroids
    assert image[115, 5].tolist() == dimmed(CANVAS_COLOUR)


def test_labels_are_the_region_numbers():
    # One region drawn as number 0 against the same region drawn as number 1 (second in the list): the white glyph
    # pixels differ, so the preview writes the index, not a constant mark.
    size = (100, 100)
    region = rectangle(size, 20, 80, 20, 80)
    elsewhere = rectangle(size, 0, 4, 0, 4)
    as_zero = to_uint8(draw_regions_preview(None, [region, elsewhere]))[0]
    as_one = to_uint8(draw_regions_preview(None, [elsewhere, region]))[0]
    glyph_zero = (as_zero[label_box((50, 50))] == WHITE).all(-1)
    glyph_one = (as_one[label_box((50, 50))] == WHITE).all(-1)
    assert glyph_zero.sum() > glyph_one.sum() > 0  # a "0" has more ink than a "1"


def test_image_pixels_tinted_by_owner_and_background_darkened():
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 256, (2, 64, 96, 3), generator=generator)
    images = values.float() / 255
    size = (64, 96)
    # Overlap at columns 40..59: region 1 covers it fully, region 0 at 0.6, so region 1 owns it.
    masks = [rectangle(size, 8, 56, 4, 60, value=0.6), rectangle(size, 8, 56, 40, 92, value=1.0)]
    preview = to_uint8(draw_regions_preview(images, masks))
    assert preview.shape == (2, 64, 96, 3)
    pixels = values.numpy()
    for b in range(2):
        for y, x, owner in [(20, 10, 0), (50, 30, 0), (20, 50, 1), (45, 85, 1), (12, 45, 1)]:
            assert preview[b, y, x].tolist() == halfway(pixels[b, y, x], REGION_PALETTE[owner])
        for y, x in [(2, 2), (60, 50), (30, 94)]:
            assert preview[b, y, x].tolist() == dimmed(pixels[b, y, x])


def test_overlap_tie_goes_to_the_lower_index():
    size = (60, 60)
    masks = [rectangle(size, 0, 60, 0, 40), rectangle(size, 0, 60, 20, 60)]
    image = to_uint8(draw_regions_preview(None, masks, size_hw=size))[0]
    assert image[5, 30].tolist() == halfway(CANVAS_COLOUR, REGION_PALETTE[0])
    assert image[5, 50].tolist() == halfway(CANVAS_COLOUR, REGION_PALETTE[1])


def test_soft_masks_below_half_are_background():
    size = (40, 40)
    image = to_uint8(draw_regions_preview(None, [rectangle(size, 0, 40, 0, 40, value=0.49)]))[0]
    assert (image == dimmed(CANVAS_COLOUR)).all()


def test_region_colour_is_the_same_for_an_index_whatever_the_others():
    size = (50, 50)
    third = rectangle(size, 10, 40, 10, 40)
    others = [rectangle(size, 0, 3, 0, 3), rectangle(size, 47, 50, 47, 50)]
    image = to_uint8(draw_regions_preview(None, [*others, third]))[0]
    assert image[14, 14].tolist() == halfway(CANVAS_COLOUR, REGION_PALETTE[2])


def test_sizes():
    mask = rectangle((600, 1000), 100, 500, 100, 900)
    assert draw_regions_preview(torch.rand(2, 600, 1000, 3), [mask]).shape == (2, 307, 512, 3)
    assert draw_regions_preview(None, [mask]).shape == (1, 307, 512, 3)
    assert draw_regions_preview(None, [mask], size_hw=(100, 60)).shape == (1, 100, 60, 3)
    assert draw_regions_preview(None, [rectangle((10, 8), 0, 5, 0, 8, batch=3)]).shape == (3, 10, 8, 3)
    # Masks at another resolution than the image are resized to the preview.
    preview = to_uint8(draw_regions_preview(torch.zeros(1, 200, 200, 3), [rectangle((20, 20), 0, 10, 0, 20)]))
    assert preview.shape == (1, 200, 200, 3)
    assert preview[0, 50, 50].tolist() == halfway((0, 0, 0), REGION_PALETTE[0])
    assert preview[0, 150, 50].tolist() == [0, 0, 0]


def test_batches_broadcast_and_mismatch_is_a_clear_error():
    size = (32, 32)
    per_image = torch.zeros(2, *size)
    per_image[0, :, :16] = 1
    per_image[1, :, 16:] = 1
    preview = to_uint8(draw_regions_preview(torch.zeros(1, 32, 32, 3), [per_image]))
    assert preview.shape == (2, 32, 32, 3)
    tinted = halfway((0, 0, 0), REGION_PALETTE[0])
    assert preview[0, 4, 6].tolist() == tinted and preview[0, 4, 26].tolist() == [0, 0, 0]
    assert preview[1, 4, 26].tolist() == tinted and preview[1, 4, 6].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="batch sizes"):
        draw_regions_preview(torch.zeros(3, 32, 32, 3), [per_image])
    with pytest.raises(ValueError, match="preview size"):
        draw_regions_preview(None, [per_image], size_hw=(0, 10))
