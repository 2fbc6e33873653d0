"""Tier 1: regional multi-identity attention in pure torch: region weights from identity.regions feeding the
segmented softmax of attention.multi_source, against attention written out per token."""

from __future__ import annotations

import math

import pytest
import torch

from bolid_core.attention import SourceKV, adapter_attention, block_grid
from bolid_core.identity.regions import Background, region_weights

HEADS, WIDTH = 2, 32
LATENT = (13, 9)  # odd sides: the UNet's grids are 13x9, 7x5 and 4x3


def plain_attention(q, k, v):
    dim = WIDTH // HEADS
    out = torch.empty_like(q)
    for head in range(HEADS):
        cols = slice(head * dim, (head + 1) * dim)
        out[..., cols] = torch.softmax(q[..., cols] @ k[..., cols].T / math.sqrt(dim), -1) @ v[..., cols]
    return out


def masks() -> list[torch.Tensor]:
    """Person 0 on the left third of a 104 x 72 image, person 1 on the right third; they overlap nowhere."""
    left, right = torch.zeros(1, 104, 72), torch.zeros(1, 104, 72)
    left[..., :24] = 1.0
    right[..., 48:] = 1.0
    return [left, right]


def identities(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, WIDTH, generator=g), torch.randn(4, WIDTH, generator=g)) for _ in range(2)]


def regional(q, kvs, grid, background: Background) -> torch.Tensor:
    weights = region_weights(masks(), grid, background)
    sources = [
        SourceKV(key[None], value[None], torch.ones(1), weights[index]) for index, (key, value) in enumerate(kvs)
    ]
    return adapter_attention(q, sources, HEADS)


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("background", list(Background))
def test_each_token_gets_its_owners_identity_and_the_background_rule(level: int, background: Background) -> None:
    grid = LATENT
    for _ in range(level):
        grid = (math.ceil(grid[0] / 2), math.ceil(grid[1] / 2))
    assert block_grid(LATENT, grid[0] * grid[1]) == grid
    queries = grid[0] * grid[1]
    q = torch.randn(1, queries, WIDTH, generator=torch.Generator().manual_seed(level))
    kvs = identities(1)
    out = regional(q, kvs, grid, background)
    weights = region_weights(masks(), grid, background)
    per_identity = [plain_attention(q[0], key, value) for key, value in kvs]
    for token in range(queries):
        expected = sum(float(weights[i, 0, token]) * per_identity[i][token] for i in range(2))
        torch.testing.assert_close(out[0, token], expected, rtol=1e-5, atol=1e-6)
        inside = [i for i in range(2) if float(weights[i, 0, token]) == 1.0]
        assert len(inside) <= 1, "a token owned by two identities"


@pytest.mark.parametrize("background", list(Background))
def test_changing_identity_1_leaves_region_0_unchanged_to_1e6(background: Background) -> None:
    grid = LATENT
    q = torch.randn(1, grid[0] * grid[1], WIDTH, generator=torch.Generator().manual_seed(5))
    first, second = identities(1), identities(2)
    before = regional(q, first, grid, background)
    after = regional(q, [first[0], second[1]], grid, background)
    owner_0 = region_weights(masks(), grid, Background.NONE)[0, 0] == 1.0
    owner_1 = region_weights(masks(), grid, Background.NONE)[1, 0] == 1.0
    change = (before - after).abs().amax(dim=-1)[0]
    assert owner_0.any() and owner_1.any()
    assert change[owner_0].max() <= 1e-6
    assert change[owner_1].min() > 1e-4
    outside = ~(owner_0 | owner_1)
    if background is Background.NONE:
        assert before[0, outside].abs().max() == 0.0, "background tokens get no identity"
