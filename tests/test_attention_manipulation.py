"""Tier 1: FastFace AM1 and AM2 against plain re-implementations of the equations, as the authors' code runs them
(src/custom_dca.py, configs/fastface/am{1,2}_and_dcg.json)."""

from __future__ import annotations

import math

import pytest
import torch

from bolid_core.attention import MapHook, SourceKV, adapter_attention, am1_preset, am2_preset
from bolid_core.attention.manipulation import (
    AMKind,
    AttentionManipulation,
    adain_blend,
    quantile_over_queries,
    step_schedule,
)

EPS = 1e-6  # the authors' code: std + 1e-6 in both AdaINs, and the quantile floor


def maps(seed: int = 0, shape=(2, 3, 11, 4), dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).softmax(dim=-1)


def plain_minmax(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    for t in range(x.shape[-1]):
        column = x[..., t]
        out[..., t] = (column - column.min()) / (column.max() - column.min())
    return out


def plain_adain_rows(x: torch.Tensor, original: torch.Tensor, w: float) -> torch.Tensor:
    """AdaIN over the last dim, one row at a time, with torch's own unbiased std."""
    flat_x, flat_o = x.reshape(-1, x.shape[-1]), original.reshape(-1, x.shape[-1])
    out = torch.empty_like(flat_x)
    for row in range(flat_x.shape[0]):
        a, o = flat_x[row], flat_o[row]
        out[row] = w * a + (1 - w) * ((a - a.mean()) * (o.std() / (a.std() + EPS)) + o.mean())
    return out.reshape(x.shape)


def plain_am2(a: torch.Tensor, s: float, d: float, p: float, quantile_floor: float = EPS) -> torch.Tensor:
    a = a.clone()
    a[..., 0] = 1 - a[..., 0]  # token 0 inverted before
    q = torch.quantile(a, p, dim=-2, keepdim=True).clamp(min=quantile_floor)  # on the raw map, over queries
    out = s * plain_minmax(torch.sigmoid(d * (plain_minmax(a) - q)))
    out[..., 0] = out[..., 0].amax(dim=-1, keepdim=True) - out[..., 0]  # and back after (max over queries)
    return out


def test_quantile_by_selection_equals_torch_quantile() -> None:
    for q in (0.0, 0.3, 0.65, 1.0):
        a = maps(int(q * 10), (2, 2, 37, 3))
        torch.testing.assert_close(quantile_over_queries(a, q), torch.quantile(a, q, dim=-2, keepdim=True))


@pytest.mark.parametrize("step", [0, 3])
def test_am1_preset_follows_the_authors_code_per_block(step: int) -> None:
    a = maps(1)
    manipulation = am1_preset()
    torch.testing.assert_close(manipulation.bind("input", step).transform(a), 1.55 * a**1.3)  # scales_map "down"
    torch.testing.assert_close(manipulation.bind("output", step).transform(a), 1.45 * a**1.3)  # scales_map "up"
    assert manipulation.bind("middle", step) is None, "the published AM1 leaves the mid block alone"
    assert manipulation.bind("input", step).output_adain is None


@pytest.mark.parametrize(("step", "s", "d"), [(0, 1.0, 7.5), (1, 1.55, 5.0), (2, 1.55, 5.0), (7, 1.55, 5.0)])
def test_am2_preset_schedules_scale_and_sharpness_per_step(step: int, s: float, d: float) -> None:
    a = maps(2)
    manipulation = am2_preset()
    for block in ("input", "output"):
        hook = manipulation.bind(block, step)
        expected = plain_adain_rows(plain_am2(a, s, d, 0.65), a, 0.7)
        torch.testing.assert_close(hook.transform(a), expected, rtol=1e-5, atol=1e-5)
        assert hook.output_adain == 0.7
    assert manipulation.bind("middle", step) is None


def test_quantile_threshold_has_the_authors_floor() -> None:
    """Token 3 is near zero at most queries, so its 0.65-quantile is far below 1e-6 and the floor decides."""
    logits = torch.randn((1, 2, 40, 4), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    logits[..., :30, 3] -= 40
    a = logits.softmax(dim=-1)
    manipulation = AttentionManipulation(AMKind.SCHEDULED_SOFTMAX, {"input": (1.0,)}, sharpness=(100.0,))
    result = manipulation.bind("input", 0).transform(a)
    expected = plain_adain_rows(plain_am2(a, 1.0, 100.0, 0.65), a, 0.7)
    unfloored = plain_adain_rows(plain_am2(a, 1.0, 100.0, 0.65, quantile_floor=0.0), a, 0.7)
    assert (expected - unfloored).abs().max() > 1e-6, "the case must tell the floor apart"
    torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-10)


def test_map_adain_divides_by_std_plus_eps() -> None:
    """A map transform that flattens a row: the AdaIN gives it the original's mean (the code's + 1e-6 keeps it
    finite), and elsewhere the + 1e-6 is visible at float64 precision."""

    def flatten_first_row(m: torch.Tensor) -> torch.Tensor:
        out = m.pow(2.0)
        out[0, 0, 0] = 0.25
        return out

    a = maps(6, dtype=torch.float64)
    manipulation = AttentionManipulation(AMKind.SCHEDULED_SOFTMAX, {"input": (1.0,)}, invert_first_token=False)
    result = adain_blend(flatten_first_row(a), a, 0.7)
    torch.testing.assert_close(result, plain_adain_rows(flatten_first_row(a), a, 0.7), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result[0, 0, 0], 0.7 * 0.25 + 0.3 * a[0, 0, 0].mean().expand(4), rtol=1e-12, atol=0)
    assert torch.isfinite(manipulation.bind("input", 0).transform(torch.full((1, 1, 5, 4), 0.25))).all()


def per_head_reference(query, key, value, heads, transform, w, source_scale):
    """The authors' sdpa with AdaIN: the map transform on the whole (batch, heads, queries, tokens) map, then per
    sample and head hs = P' V, hs_orig = P V, mean and std over head_dim per query, std + 1e-6, blend w; then the
    IP scale multiplies the result."""
    batch, _, width = query.shape
    dim = width // heads
    probs = torch.empty(batch, heads, query.shape[1], key.shape[1], dtype=query.dtype)
    for b in range(batch):
        for h in range(heads):
            cols = slice(h * dim, (h + 1) * dim)
            probs[b, h] = torch.softmax(query[b, :, cols] @ key[b, :, cols].T / math.sqrt(dim), -1)
    manipulated = transform(probs)
    out = torch.zeros_like(query)
    for b in range(batch):
        for h in range(heads):
            cols = slice(h * dim, (h + 1) * dim)
            hs, hs_orig = manipulated[b, h] @ value[b, :, cols], probs[b, h] @ value[b, :, cols]
            mean, std = hs.mean(-1, keepdim=True), hs.std(-1, keepdim=True)
            mean_o, std_o = hs_orig.mean(-1, keepdim=True), hs_orig.std(-1, keepdim=True)
            rescaled = (hs - mean) * (std_o / (std + EPS)) + mean_o
            out[b, :, cols] = source_scale[b] * (w * hs + (1 - w) * rescaled)
    return out


def heads_with_different_statistics(seed: int, heads: int, dim: int, batch: int = 2, queries: int = 13, tokens=4):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, queries, heads * dim, generator=g, dtype=torch.float64)
    key = torch.randn(batch, tokens, heads * dim, generator=g, dtype=torch.float64)
    value = torch.randn(batch, tokens, heads * dim, generator=g, dtype=torch.float64)
    for h in range(heads):  # each head its own offset and spread
        value[..., h * dim : (h + 1) * dim] = value[..., h * dim : (h + 1) * dim] * (0.05 + 2.0 * h) + 3.0 * h - 2.0
    return query, key, value


@pytest.mark.parametrize("hook_kind", ["power", "am2"])
def test_output_adain_is_per_head_as_in_the_authors_code(hook_kind: str) -> None:
    heads, dim = 3, 8
    query, key, value = heads_with_different_statistics(5, heads, dim)
    if hook_kind == "power":
        transform = lambda m: 1.5 * m**1.3  # noqa: E731
    else:
        transform = am2_preset().bind("output", 1).transform
    scale = torch.tensor([0.8, 1.2], dtype=torch.float64)
    result = adapter_attention(query, [SourceKV(key, value, scale, hook=MapHook(transform, 0.7))], heads=heads)
    expected = per_head_reference(query, key, value, heads, transform, 0.7, scale)
    torch.testing.assert_close(result, expected, rtol=1e-9, atol=1e-9)


def test_output_adain_falls_back_to_the_plain_output_if_anything_is_nan() -> None:
    """The authors' code returns hs un-AdaIN'd when the rescaled output holds any NaN anywhere."""
    heads, dim = 2, 8
    query, key, value = heads_with_different_statistics(7, heads, dim)

    def transform(m: torch.Tensor) -> torch.Tensor:
        out = 1.5 * m**1.3
        out[1, 1, 4] = float("nan")
        return out

    result = adapter_attention(query, [SourceKV(key, value, torch.ones(2), hook=MapHook(transform, 0.7))], heads)
    plain = torch.zeros_like(query)
    for b in range(2):
        for h in range(heads):
            cols = slice(h * dim, (h + 1) * dim)
            probs = torch.softmax(query[b, :, cols] @ key[b, :, cols].T / math.sqrt(dim), -1)
            plain[b, :, cols] = (1.5 * probs**1.3) @ value[b, :, cols]
    assert result[1, 4, dim:].isnan().all()
    finite = ~plain.isnan()
    finite[1, 4, dim:] = False
    torch.testing.assert_close(result[finite], plain[finite], rtol=1e-12, atol=1e-12)


def test_schedule_strings_and_settings_are_checked_with_clear_messages() -> None:
    assert step_schedule("1.0, 1.55", "am2_scale", 0.0, 10.0) == (1.0, 1.55)
    assert step_schedule("7.5", "am2_sharpness", 0.0, 100.0, low_included=False) == (7.5,)
    for text, match in [
        ("1, nan", "am2_scale holds nan: every value must be a finite number"),
        ("1; inf", "am2_scale holds inf"),
        ("1, -0.5", "am2_scale holds -0.5: every value must be a finite number at least 0 and at most 10"),
        ("11", "am2_scale holds 11"),
        ("one", "am2_scale 'one' is not a list of numbers"),
        (" , ", "am2_scale is empty"),
    ]:
        with pytest.raises(ValueError, match=match):
            step_schedule(text, "am2_scale", 0.0, 10.0)
    with pytest.raises(ValueError, match="am2_sharpness holds 0: every value must be a finite number above 0"):
        step_schedule("7.5, 0", "am2_sharpness", 0.0, 100.0, low_included=False)
    for bad, match in [
        ({"sharpness": (7.5, -1.0)}, "sharpness"),
        ({"quantile": 1.5}, "quantile"),
        ({"adain_weight": float("nan")}, "AdaIN weight"),
        ({"scales": {"input": (float("inf"),)}}, "block 'input'"),
        ({"scales": {"down": (1.0,)}}, "'down' is not one of input, middle, output"),
        ({"scales": {"input": ()}}, "empty schedule"),
    ]:
        settings = {"scales": {"input": (1.0,)}} | bad
        with pytest.raises(ValueError, match=match):
            AttentionManipulation(AMKind.SCHEDULED_SOFTMAX, **settings)
