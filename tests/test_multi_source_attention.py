"""Tier 1: the adapter terms of Z' = Attn(Q,K_t,V_t) + sum_s lambda_s Attn(Q,K_s,V_s), against a per-head loop."""

from __future__ import annotations

import math

import pytest
import torch

from bolid_core.attention import MapHook, SourceKV, adapter_attention


def reference(query, sources, heads):
    """The formula one sample, one head and one source at a time."""
    batch, queries, width = query.shape
    dim = width // heads
    out = torch.zeros(batch, queries, width, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            cols = slice(h * dim, (h + 1) * dim)
            q = query[b, :, cols].double()
            for source in sources:
                kb = 0 if source.key.shape[0] == 1 else b
                k, v = source.key[kb, :, cols].double(), source.value[kb, :, cols].double()
                attn = torch.softmax(q @ k.T / math.sqrt(dim), dim=-1)
                term = attn @ v
                if source.hook is not None:
                    term = source.hook.transform(attn[None, None])[0, 0] @ v
                if source.hook is not None and source.hook.output_adain is not None:
                    w, plain = source.hook.output_adain, attn @ v  # AdaIN over head_dim, before lambda and mask
                    ratio = plain.std(-1, keepdim=True) / (term.std(-1, keepdim=True) + 1e-6)
                    rescaled = (term - term.mean(-1, keepdim=True)) * ratio + plain.mean(-1, keepdim=True)
                    term = w * term + (1 - w) * rescaled
                weight = float(source.scale[b])
                if source.mask is not None:
                    mb = 0 if source.mask.shape[0] == 1 else b
                    weight = weight * source.mask[mb].double()[:, None]
                out[b, :, cols] += weight * term
    return out


def make_source(generator, batch, tokens, width, scale, **extra):
    key = torch.randn((batch, tokens, width), generator=generator)
    value = torch.randn((batch, tokens, width), generator=generator)
    return SourceKV(key, value, torch.as_tensor(scale, dtype=torch.float32), **extra)


@pytest.mark.parametrize(("heads", "tokens"), [(1, (4,)), (2, (4, 16)), (5, (3, 7, 1))])
def test_matches_per_head_loop(heads: int, tokens: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(heads)
    width, batch, queries = heads * 8, 3, 10
    query = torch.randn((batch, queries, width), generator=generator)
    sources = [make_source(generator, batch, t, width, [0.5 + i, -0.3, 2.0]) for i, t in enumerate(tokens)]
    result = adapter_attention(query, sources, heads)
    torch.testing.assert_close(result.double(), reference(query, sources, heads), rtol=1e-5, atol=1e-5)


def test_mask_hook_shared_kv_and_per_sample_off() -> None:
    generator = torch.Generator().manual_seed(11)
    batch, queries, width, heads = 2, 12, 16, 2
    query = torch.randn((batch, queries, width), generator=generator)
    mask = (torch.arange(queries) < 5).float()[None]
    body = make_source(generator, 1, 6, width, [1.0, 0.0], mask=mask)  # off for sample 1
    image = make_source(generator, batch, 4, width, [0.7, 1.3], hook=MapHook(lambda a: a.pow(1.3) * 1.45))
    result = adapter_attention(query, [body, image], heads)
    torch.testing.assert_close(result.double(), reference(query, [body, image], heads), rtol=1e-5, atol=1e-5)
    only_image = adapter_attention(query, [image], heads)
    torch.testing.assert_close(result[1], only_image[1])
    torch.testing.assert_close(result[0, 5:], only_image[0, 5:])  # masked-out queries get no body term


def test_all_scales_zero_adds_nothing_and_width_mismatch_is_clear() -> None:
    generator = torch.Generator().manual_seed(2)
    query = torch.randn((2, 5, 16), generator=generator)
    off = make_source(generator, 2, 4, 16, [0.0, 0.0])
    assert torch.count_nonzero(adapter_attention(query, [off], heads=2)) == 0
    wrong = make_source(generator, 2, 4, 24, [1.0, 1.0])
    with pytest.raises(ValueError, match="does not match this layer's width 16"):
        adapter_attention(query, [wrong], heads=2)


def test_several_adain_sources_with_masks_share_one_matmul() -> None:
    """Two sources with output AdaIN (their shifts summed into one extra column), one plain source, a mask,
    shared K/V and a sample with a source off."""
    generator = torch.Generator().manual_seed(13)
    batch, queries, width, heads = 2, 12, 24, 3
    query = torch.randn((batch, queries, width), generator=generator, dtype=torch.float64)
    mask = (torch.arange(queries) % 3 != 0).double()[None]
    face = make_source(generator, batch, 4, width, [1.1, 0.0], mask=mask, hook=MapHook(lambda a: 1.5 * a**1.3, 0.7))
    image = make_source(generator, 1, 5, width, [0.6, 0.9], hook=MapHook(lambda a: 1.2 * a**2, 0.4))
    body = make_source(generator, batch, 3, width, [0.5, 1.5])
    sources = [
        SourceKV(s.key.double(), s.value.double() * 3 - 1, s.scale.double(), s.mask, s.hook)
        for s in (face, image, body)
    ]
    result = adapter_attention(query, sources, heads)
    torch.testing.assert_close(result, reference(query, sources, heads), rtol=1e-9, atol=1e-9)
