"""Tier 1: FastFace AM1 and AM2 against plain re-implementations of the paper's equations."""

from __future__ import annotations

import math

import pytest
import torch

from bolid_core.attention import MapHook, SourceKV, adapter_attention, am1_preset, am2_preset
from bolid_core.attention.manipulation import quantile_over_queries


def maps(seed: int = 0, shape=(2, 3, 11, 4)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).softmax(dim=-1)


def plain_minmax(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    for t in range(x.shape[-1]):
        column = x[..., t]
        out[..., t] = (column - column.min()) / (column.max() - column.min())
    return out


def plain_adain(x: torch.Tensor, original: torch.Tensor, w: float) -> torch.Tensor:
    flat_x, flat_o = x.reshape(-1, x.shape[-1]), original.reshape(-1, x.shape[-1])
    out = torch.empty_like(flat_x)
    for row in range(flat_x.shape[0]):
        a, o = flat_x[row], flat_o[row]
        out[row] = w * a + (1 - w) * ((a - a.mean()) / a.std() * o.std() + o.mean())
    return out.reshape(x.shape)


def plain_am2(a: torch.Tensor, s: float, d: float, p: float, w: float) -> torch.Tensor:
    a = a.clone()
    a[..., 0] = 1 - a[..., 0]  # token 0 inverted before
    q = torch.quantile(a, p, dim=-2, keepdim=True)  # on the raw map, over queries
    out = s * plain_minmax(torch.sigmoid(d * (plain_minmax(a) - q)))
    out[..., 0] = out[..., 0].amax(dim=-1, keepdim=True) - out[..., 0]  # and back after (max over queries)
    return out


def test_quantile_by_selection_equals_torch_quantile() -> None:
    for q in (0.0, 0.3, 0.65, 1.0):
        a = maps(int(q * 10), (2, 2, 37, 3))
        torch.testing.assert_close(quantile_over_queries(a, q), torch.quantile(a, q, dim=-2, keepdim=True))


def test_am1_is_scale_times_power() -> None:
    a = maps(1)
    manipulation = am1_preset()
    torch.testing.assert_close(manipulation.bind("input", 0).transform(a), 1.45 * a**1.3)
    torch.testing.assert_close(manipulation.bind("output", 3).transform(a), 1.55 * a**1.3)
    assert manipulation.bind("middle", 0) is None, "the published AM1 leaves the mid block alone"


def test_am2_matches_the_equations_with_inversion_schedule_and_adain() -> None:
    a = maps(2)
    manipulation = am2_preset()
    first, later = manipulation.bind("input", 0), manipulation.bind("output", 2)
    torch.testing.assert_close(
        first.transform(a), plain_adain(plain_am2(a, 1.55, 7.5, 0.65, 0.7), a, 0.7), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        later.transform(a), plain_adain(plain_am2(a, 1.55, 5.0, 0.65, 0.7), a, 0.7), rtol=1e-5, atol=1e-5
    )
    assert first.output_adain == 0.7 and manipulation.bind("middle", 1) is None


def test_output_adain_in_the_attention_equals_a_plain_computation() -> None:
    g = torch.Generator().manual_seed(5)
    query = torch.randn(2, 9, 16, generator=g)
    key, value = torch.randn(2, 4, 16, generator=g), torch.randn(2, 4, 16, generator=g)
    hook = MapHook(lambda m: 1.5 * m**1.3, output_adain=0.7)
    result = adapter_attention(query, [SourceKV(key, value, torch.tensor([0.8, 1.2]), hook=hook)], heads=2)
    original, manipulated = torch.zeros_like(query), torch.zeros_like(query)
    for b, scale in enumerate((0.8, 1.2)):
        for h in range(2):
            cols = slice(8 * h, 8 * (h + 1))
            probs = torch.softmax(query[b, :, cols] @ key[b, :, cols].T / math.sqrt(8), -1)
            original[b, :, cols] = scale * probs @ value[b, :, cols]
            manipulated[b, :, cols] = scale * (1.5 * probs**1.3) @ value[b, :, cols]
    torch.testing.assert_close(result, plain_adain(manipulated, original, 0.7), rtol=1e-4, atol=1e-5)


def test_constant_rows_do_not_make_nan() -> None:
    hook = am2_preset().bind("input", 0)
    assert torch.isfinite(hook.transform(torch.full((1, 1, 5, 4), 0.25))).all()


@pytest.mark.parametrize("step", [0, 1, 7])
def test_sharpness_schedule_by_step(step: int) -> None:
    a = maps(3)
    d = 7.5 if step == 0 else 5.0
    expected = plain_adain(plain_am2(a, 1.55, d, 0.65, 0.7), a, 0.7)
    torch.testing.assert_close(am2_preset().bind("output", step).transform(a), expected, rtol=1e-5, atol=1e-5)
