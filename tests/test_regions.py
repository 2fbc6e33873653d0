"""Tier 1: region ownership and per-identity weights on UNet grids, against naive per-token loops and hand cases."""

from __future__ import annotations

import math

import pytest
import torch

from bolid_core.attention.masks import block_grid
from bolid_core.body.body_id import BodyID
from bolid_core.identity.embeds import FaceEmbeds
from bolid_core.identity.regions import Background, Region, RegionSet, region_owners, region_weights

FACE = FaceEmbeds(arcface=torch.nn.functional.normalize(torch.randn(1, 512), dim=-1))
BODY = BodyID(c_body=torch.zeros(1, 8), source_count=1, encoder="test-encoder")


def _cell_bounds(index: int, source: int, target: int) -> tuple[int, int]:
    """Adaptive average pooling's cell, as PyTorch documents it: [floor(i*S/T), ceil((i+1)*S/T))."""
    return (index * source) // target, math.ceil((index + 1) * source / target)


def naive_owners(masks, grid_hw):
    """Per token: each region's coverage is the mean of its mask pixels in the token's cell; the largest wins
    when it is >= 0.5, the first region listed on equal coverage."""
    height, width = grid_hw
    batch = max(m.shape[0] for m in masks)
    owners = []
    for b in range(batch):
        row = []
        for y in range(height):
            for x in range(width):
                best, owner = -1.0, -1
                for index, mask in enumerate(masks):
                    pixels = mask[b if mask.shape[0] > 1 else 0]
                    y0, y1 = _cell_bounds(y, pixels.shape[0], height)
                    x0, x1 = _cell_bounds(x, pixels.shape[1], width)
                    coverage = float(pixels[y0:y1, x0:x1].double().mean())
                    if coverage > best:
                        best, owner = coverage, index
                row.append(owner if best >= 0.5 else -1)
        owners.append(row)
    return owners


def naive_weights(masks, grid_hw, background):
    height, width = grid_hw
    owners = naive_owners(masks, grid_hw)
    count = len(masks)
    weights = torch.zeros(count, len(owners), height * width)
    for b, row in enumerate(owners):
        owned = [(t, o) for t, o in enumerate(row) if o >= 0]
        for token, owner in enumerate(row):
            if owner >= 0:
                weights[owner, b, token] = 1.0
            elif background == Background.AVERAGE:
                weights[:, b, token] = 1.0 / count
            elif background == Background.NEAREST and owned:
                y, x = divmod(token, width)
                # Squared Euclidean distance between token centres; the lower region on equal distance.
                _, nearest = min(((y - t // width) ** 2 + (x - t % width) ** 2, o) for t, o in owned)
                weights[nearest, b, token] = 1.0
    return weights


def blobby_masks(count, batch, size_hw, cells_hw, seed, soft=False, knockout=0.3):
    """Masks made of random blocks with random pixels knocked out, so cell coverage spreads around 0.5."""
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for _ in range(count):
        blocks = (torch.rand(batch, 1, *cells_hw, generator=generator) > 0.4).float()
        mask = torch.nn.functional.interpolate(blocks, size=size_hw, mode="nearest")[:, 0]
        mask = mask * (torch.rand(batch, *size_hw, generator=generator) > knockout).float()
        if soft:
            mask = mask * (0.5 + 0.5 * torch.rand(batch, *size_hw, generator=generator))
        masks.append(mask)
    return masks


# ---- ownership and weights against the naive loop --------------------------------------------------------------


@pytest.mark.parametrize("grid_hw", [(12, 8), (6, 4), (3, 2)])
@pytest.mark.parametrize("soft", [False, True])
def test_owners_match_naive_loop_integer_factors(grid_hw, soft):
    masks = blobby_masks(3, 2, (48, 32), (5, 3), seed=1 + soft, soft=soft)
    assert region_owners(masks, grid_hw).tolist() == naive_owners(masks, grid_hw)


def test_owners_match_naive_loop_with_frequent_ties_and_exact_halves():
    # 0/1 pixels in 2x2 cells: coverages are multiples of 1/4, so ties and exactly 0.5 are common.
    generator = torch.Generator().manual_seed(7)
    masks = [(torch.rand(1, 16, 16, generator=generator) > 0.5).float() for _ in range(3)]
    owners = region_owners(masks, (8, 8))
    assert owners.tolist() == naive_owners(masks, (8, 8))
    assert (owners == -1).any() and (owners == 0).any() and (owners == 2).any()


@pytest.mark.parametrize("grid_hw", [(7, 5), (4, 3), (20, 13)])
def test_owners_match_naive_adaptive_cells_for_other_factors(grid_hw):
    masks = blobby_masks(2, 1, (26, 18), (4, 3), seed=3)
    assert region_owners(masks, grid_hw).tolist() == naive_owners(masks, grid_hw)


@pytest.mark.parametrize("background", list(Background))
@pytest.mark.parametrize("grid_hw", [(12, 8), (6, 4), (3, 2)])
def test_weights_match_naive_loop(background, grid_hw):
    masks = blobby_masks(3, 2, (48, 32), (4, 3), seed=11)
    weights = region_weights(masks, grid_hw, background)
    assert weights.dtype == torch.float32
    assert torch.equal(weights, naive_weights(masks, grid_hw, background))


# ---- hand-made exact cases ---------------------------------------------------------------------------------------


def test_two_halves():
    left = torch.zeros(8, 8)
    left[:, :4] = 1
    right = 1 - left
    assert region_owners([left, right], (4, 4)).tolist() == [[0, 0, 1, 1] * 4]
    assert region_owners([left, right], (1, 2)).tolist() == [[0, 1]]
    # Odd grid: the middle column's cells straddle the halves (adaptive cells overlap), half each -> tie -> 0.
    assert region_owners([left, right], (1, 3)).tolist() == [[0, 0, 1]]
    weights = region_weights([left, right], (2, 2), Background.NONE)
    assert weights.tolist() == [[[1, 0, 1, 0]], [[0, 1, 0, 1]]]


def test_overlap_larger_coverage_wins_ties_go_to_the_lower_index():
    full = torch.ones(2, 2)
    three_quarters = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    half = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    quarter = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert region_owners([three_quarters, full], (1, 1)).tolist() == [[1]]
    assert region_owners([full, three_quarters], (1, 1)).tolist() == [[0]]
    assert region_owners([full, full], (1, 1)).tolist() == [[0]]
    assert region_owners([half, torch.full((2, 2), 0.5)], (1, 1)).tolist() == [[0]]
    assert region_owners([quarter, torch.full((2, 2), 0.3)], (1, 1)).tolist() == [[-1]]
    assert region_owners([quarter, half], (1, 1)).tolist() == [[1]]  # exactly 0.5 is enough


def test_region_vanishing_at_a_coarse_grid():
    small = torch.zeros(8, 8)
    small[:2, :2] = 1
    big = torch.zeros(8, 8)
    big[4:, 4:] = 1
    assert (region_owners([small, big], (8, 8)) == 0).sum() == 4
    assert region_owners([small, big], (4, 4))[0].tolist()[0] == 0
    assert region_owners([small, big], (2, 2)).tolist() == [[-1, -1, -1, 1]]
    assert region_weights([small, big], (2, 2), Background.AVERAGE).tolist() == [
        [[0.5, 0.5, 0.5, 0.0]],
        [[0.5, 0.5, 0.5, 1.0]],
    ]
    assert region_weights([small, big], (2, 2), Background.NEAREST).tolist() == [[[0, 0, 0, 0]], [[1, 1, 1, 1]]]


def test_nearest_on_a_strip_with_known_distances():
    first, second = torch.zeros(1, 9), torch.zeros(1, 9)
    first[0, 0] = 1
    second[0, 6:] = 1
    # Background x=1..5: distances to region 0 are x, to region 1 are 6 - x; x = 3 is a tie -> region 0.
    weights = region_weights([first, second], (1, 9), Background.NEAREST)
    assert weights[:, 0].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1, 1]]
    # The same strip with the indices swapped: the tie at x = 3 still goes to the lower index, now on the right.
    weights = region_weights([second, first], (1, 9), Background.NEAREST)
    assert weights[:, 0].tolist() == [[0, 0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0, 0]]


def test_nearest_is_euclidean_not_chebyshev_or_manhattan():
    grid = (4, 8)
    corner, far_right = torch.zeros(4, 8), torch.zeros(4, 8)
    far_right[3, 7] = 1  # region 0
    corner[0, 0] = 1  # region 1
    owners = region_weights([far_right, corner], grid, Background.NEAREST).argmax(0)[0].reshape(grid)
    # Token (3, 3): to (3, 7) is 4; to (0, 0) is sqrt(18) ~ 4.24 (Chebyshev would say 3, Manhattan 6).
    assert owners[3, 3] == 0
    # Token (2, 3): to (3, 7) is sqrt(17) ~ 4.12; to (0, 0) sqrt(13) ~ 3.61 (Manhattan would say 5 vs 5 -> 0).
    assert owners[2, 3] == 1


def test_nearest_without_any_owned_token_gives_no_identity():
    mask = torch.zeros(2, 8, 8)
    mask[0, :4, :4] = 1  # image 1 has nothing of this region
    weights = region_weights([mask], (2, 2), Background.NEAREST)
    assert weights[0, 0].tolist() == [1, 1, 1, 1]
    assert weights[0, 1].tolist() == [0, 0, 0, 0]


def test_average_is_one_over_n_and_none_is_zero():
    masks = [torch.zeros(6, 6) for _ in range(3)]
    masks[0][:3, :3] = 1
    masks[1][:3, 3:] = 1
    masks[2][3:, :3] = 1
    average = region_weights(masks, (2, 2), Background.AVERAGE)
    assert torch.equal(average[:, 0, 3], torch.full((3,), 1 / 3, dtype=torch.float32))
    assert average[:, 0, :3].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    none = region_weights(masks, (2, 2), Background.NONE)
    assert none[:, 0, 3].tolist() == [0, 0, 0]
    assert region_weights(masks, (2, 2), "average").tolist() == average.tolist()


# ---- disjointness on every SDXL grid of an odd latent --------------------------------------------------------


@pytest.mark.parametrize("background", list(Background))
def test_regions_are_disjoint_on_every_grid_of_an_odd_latent(background):
    latent_hw = (13, 9)
    masks = blobby_masks(3, 2, (104, 72), (5, 4), seed=5, soft=True, knockout=0.15)
    grids = [block_grid(latent_hw, q) for q in (13 * 9, 7 * 5, 4 * 3)]
    assert grids == [(13, 9), (7, 5), (4, 3)]
    for grid in grids:
        owners = region_owners(masks, grid)
        weights = region_weights(masks, grid, background)
        assert weights.shape == (3, 2, grid[0] * grid[1])
        inside = owners >= 0
        assert inside.any()
        assert ((weights != 0).sum(0)[inside] == 1).all()
        for region in range(3):
            others = [r for r in range(3) if r != region]
            assert (weights[others][:, owners == region] == 0.0).all()  # exactly zero, not small
            assert (weights[region][owners == region] == 1.0).all()
        if background is not Background.AVERAGE:
            assert ((weights != 0).sum(0) <= 1).all()


# ---- batches ------------------------------------------------------------------------------------------------------


def test_mask_batch_of_one_is_shared_by_every_image():
    shared = torch.zeros(1, 8, 8)
    shared[:, :, :4] = 1
    per_image = blobby_masks(1, 3, (8, 8), (2, 2), seed=9)[0]
    owners = region_owners([shared, per_image], (4, 4))
    assert owners.shape == (3, 16)
    for b in range(3):
        assert owners[b].tolist() == region_owners([shared[0], per_image[b]], (4, 4))[0].tolist()


def test_mask_batch_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="batch sizes"):
        region_owners([torch.ones(2, 8, 8), torch.ones(3, 8, 8)], (4, 4))
    with pytest.raises(ValueError, match="batch sizes"):
        region_weights([torch.ones(2, 8, 8), torch.ones(3, 8, 8)], (4, 4), Background.NONE)
    with pytest.raises(ValueError, match="batch sizes"):
        RegionSet((Region(torch.ones(2, 8, 8), face=FACE), Region(torch.ones(3, 8, 8), face=FACE)))


def test_mask_shape_errors_in_the_maths():
    with pytest.raises(ValueError, match=r"\(H, W\) or \(batch, H, W\)"):
        region_owners([torch.ones(1, 8, 8, 3)], (4, 4))
    with pytest.raises(ValueError, match="positive sides"):
        region_owners([torch.ones(8, 8)], (0, 4))


# ---- Region and RegionSet ---------------------------------------------------------------------------------------


def test_region_accepts_a_plain_mask_and_normalises_it():
    region = Region(torch.ones(8, 6, dtype=torch.bool), body=BODY)
    assert region.mask.shape == (1, 8, 6)
    assert region.mask.dtype == torch.float32
    assert Region(torch.full((2, 4, 4), 0.5), face=FACE, body=BODY).batch == 2


@pytest.mark.parametrize(
    ("mask", "kwargs", "message"),
    [
        (torch.ones(1, 1, 8, 8), {"face": FACE}, "shaped"),
        (torch.ones(0, 8, 8), {"face": FACE}, "non-empty"),
        (torch.ones(8), {"face": FACE}, "shaped"),
        ("a mask", {"face": FACE}, "MASK tensor"),
        (torch.full((8, 8), float("nan")), {"face": FACE}, "NaN"),
        (torch.full((8, 8), float("inf")), {"face": FACE}, "NaN or infinite"),
        (torch.full((8, 8), 1.5), {"face": FACE}, r"\[0, 1\]"),
        (torch.full((8, 8), -0.1), {"face": FACE}, r"\[0, 1\]"),
        (torch.zeros(8, 8), {"face": FACE}, "empty"),
        (torch.ones(8, 8), {}, "needs an identity"),
        (torch.ones(8, 8), {"face": torch.ones(1, 512)}, "FACE_EMBEDS"),
        (torch.ones(8, 8), {"body": torch.ones(1, 8)}, "BODY_ID"),
    ],
)
def test_invalid_regions_are_clear_errors(mask, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Region(mask, **kwargs)


def test_region_set_added_leaves_the_old_set_untouched():
    empty = RegionSet()
    first = Region(torch.ones(4, 4), face=FACE)
    second = Region(torch.ones(4, 4), body=BODY)
    one = empty.added(first)
    two = one.added(second)
    assert len(empty) == 0 and len(one) == 1 and len(two) == 2
    assert one.regions == (first,) and two.regions == (first, second)
    assert two.masks[1] is second.mask
    assert RegionSet([first]).regions == (first,)
    with pytest.raises(ValueError, match="regions only"):
        RegionSet((torch.ones(4, 4),))
