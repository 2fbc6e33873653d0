"""Unit: IPAdapter_plus's weight types, layer_weights text and embeds scalings, against rules written by hand."""

from __future__ import annotations

import math

import pytest
import torch

from bolid_core.adapter.layer_weights import (
    EmbedsScaling,
    TransformerBlock,
    WeightType,
    parse_layer_weights,
    plan_layers,
    scaled_kv,
    transformer_blocks,
)
from bolid_core.attention import SourceKV, adapter_attention

W, C, B = 0.8, 0.6, 1.7  # weight, composition_weight, boost

# SDXL's attn2 keys in attn2_layer_keys order (input, output, middle), 70 layers: input 4, 5 have 2 transformer
# layers, input 7, 8 have 10; output 0-2 have 10, output 3-5 have 2; the middle block has 10.
SDXL_DEPTHS = [("input", 4, 2), ("input", 5, 2), ("input", 7, 10), ("input", 8, 10)]
SDXL_DEPTHS += [("output", n, 10) for n in (0, 1, 2)] + [("output", n, 2) for n in (3, 4, 5)] + [("middle", 0, 10)]
SDXL_KEYS = [(kind, number, i) for kind, number, depth in SDXL_DEPTHS for i in range(depth)]
# The spatial-transformer index of each of those blocks in forward order, by hand.
SDXL_BLOCK_OF = {("input", 4): 0, ("input", 5): 1, ("input", 7): 2, ("input", 8): 3, ("middle", 0): 4}
SDXL_BLOCK_OF |= {("output", n): 5 + n for n in range(6)}
SD15_KEYS = [("input", n, 0) for n in (1, 2, 4, 5, 7, 8)] + [("output", n, 0) for n in range(3, 12)]
SD15_KEYS += [("middle", 0, 0)]
SD15_BLOCK_OF = {("input", n): i for i, n in enumerate((1, 2, 4, 5, 7, 8))} | {("middle", 0): 6}
SD15_BLOCK_OF |= {("output", n): 7 + i for i, n in enumerate(range(3, 12))}


def blocks_by_hand(keys, block_of) -> list[TransformerBlock]:
    return [TransformerBlock(kind, block_of[(kind, number)]) for kind, number, _ in keys]


SDXL_BLOCKS = blocks_by_hand(SDXL_KEYS, SDXL_BLOCK_OF)
SD15_BLOCKS = blocks_by_hand(SD15_KEYS, SD15_BLOCK_OF)
SDXL_KIND = ["input"] * 4 + ["middle"] + ["output"] * 6
SD15_KIND = ["input"] * 6 + ["middle"] + ["output"] * 9


def ease(kind: str, t: int, n: int) -> float:
    """IPAdapter_plus's curves over the transformer index t of n blocks."""
    return {
        "ease in": 0.05 + 0.95 * (1 - t / n),
        "ease out": 0.05 + 0.95 * (t / n),
        "ease in-out": 0.05 + 0.95 * (1 - abs(t - n / 2) / (n / 2)),
        "reverse in-out": 0.05 + 0.95 * (abs(t - n / 2) / (n / 2)),
    }[kind]


def weak(kinds: list[str], weakened: set[str]) -> list[float]:
    return [W * 0.2 if kind in weakened else W for kind in kinds]


# Per transformer block (forward order), each type's weight with weight W, composition_weight C, no boost.
SDXL_TABLE = {
    "linear": [W] * 11,
    "ease in": [W * ease("ease in", t, 11) for t in range(11)],
    "ease out": [W * ease("ease out", t, 11) for t in range(11)],
    "ease in-out": [W * ease("ease in-out", t, 11) for t in range(11)],
    "reverse in-out": [W * ease("reverse in-out", t, 11) for t in range(11)],
    "weak input": weak(SDXL_KIND, {"input"}),
    "weak output": weak(SDXL_KIND, {"output"}),
    "weak middle": weak(SDXL_KIND, {"middle"}),
    "strong middle": weak(SDXL_KIND, {"input", "output"}),
    "style transfer": [0, 0, 0, 0, 0, 0, W, 0, 0, 0, 0],
    "composition": [0, 0, 0, W, 0, 0, 0, 0, 0, 0, 0],
    "strong style transfer": [W, W, W, 0, W, W, W, W, W, W, W],
    "style and composition": [0, 0, 0, C, 0, 0, W, 0, 0, 0, 0],
    "strong style and composition": [W, W, W, C, W, W, W, W, W, W, W],
    "style transfer precise": [0, 0, 0, W, 0, 0, W, 0, 0, 0, 0],
    "composition precise": [W * 0.1] * 3 + [W] + [W * 0.1] * 2 + [W] + [W * 0.1] * 4,
}
SD15_TABLE = {
    "linear": [W] * 16,
    "ease in": [W * ease("ease in", t, 16) for t in range(16)],
    "ease out": [W * ease("ease out", t, 16) for t in range(16)],
    "ease in-out": [W * ease("ease in-out", t, 16) for t in range(16)],
    "reverse in-out": [W * ease("reverse in-out", t, 16) for t in range(16)],
    "weak input": weak(SD15_KIND, {"input"}),
    "weak output": weak(SD15_KIND, {"output"}),
    "weak middle": weak(SD15_KIND, {"middle"}),
    "strong middle": weak(SD15_KIND, {"input", "output"}),
    "style transfer": [W, W, W, W, 0, 0, 0, 0, 0, W, W, W, W, W, W, W],
    "composition": [0, 0, 0, 0, W * 0.25, W, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    "strong style transfer": [W, W, W, W, 0, 0, W, W, W, W, W, W, W, W, W, W],
    "style and composition": [W, W, W, W, C * 0.25, C, 0, 0, 0, W, W, W, W, W, W, W],
    "strong style and composition": [W, W, W, W, C, C, W, W, W, W, W, W, W, W, W, W],
    "style transfer precise": [W, W, W, W, W * 0.25, W, 0, 0, 0, W, W, W, W, W, W, W],
    "composition precise": [W, W, W, W, W * 0.25, W, W * 0.1, W * 0.1, W * 0.1, W, W, W, W, W, W, W],
}
# With a boost B: "style transfer precise" gives B to its composition blocks; "composition precise" gives B
# (or B·0.1) everywhere but its composition blocks.
BOOSTED = {
    ("style transfer precise", 11): [0, 0, 0, B, 0, 0, W, 0, 0, 0, 0],
    ("composition precise", 11): [B * 0.1] * 3 + [W] + [B * 0.1] * 2 + [B] + [B * 0.1] * 4,
    ("style transfer precise", 16): [W, W, W, W, B * 0.25, B, 0, 0, 0, W, W, W, W, W, W, W],
    ("composition precise", 16): [B, B, B, B, W * 0.25, W, B * 0.1, B * 0.1, B * 0.1, B, B, B, B, B, B, B],
}
# Blocks where the ID branch gets nothing and the null branch the ID tokens.
SWAPPED_BLOCKS = {
    ("style transfer precise", 11): {3},
    ("composition precise", 11): {0, 1, 2, 4, 5, 6, 7, 8, 9, 10},
    ("style transfer precise", 16): {4, 5},
    ("composition precise", 16): {0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
}
LAYOUTS = {11: (SDXL_BLOCKS, SDXL_TABLE), 16: (SD15_BLOCKS, SD15_TABLE)}


def per_layer(blocks: list[TransformerBlock], per_block: list[float]) -> list[float]:
    return [per_block[block.index] for block in blocks]


def test_transformer_blocks_of_the_sdxl_and_sd15_keys() -> None:
    assert len(SDXL_KEYS) == 70
    sdxl = dict(zip(SDXL_KEYS, transformer_blocks(SDXL_KEYS), strict=True))
    assert sdxl[("input", 4, 1)] == TransformerBlock("input", 0)
    assert sdxl[("input", 8, 9)] == TransformerBlock("input", 3)
    assert sdxl[("middle", 0, 3)] == TransformerBlock("middle", 4)
    assert sdxl[("output", 0, 9)] == TransformerBlock("output", 5)
    assert sdxl[("output", 3, 0)] == TransformerBlock("output", 8)
    assert sdxl[("output", 5, 1)] == TransformerBlock("output", 10)
    assert list(transformer_blocks(SDXL_KEYS)) == SDXL_BLOCKS
    sd15 = dict(zip(SD15_KEYS, transformer_blocks(SD15_KEYS), strict=True))
    assert sd15[("input", 8, 0)] == TransformerBlock("input", 5)
    assert sd15[("middle", 0, 0)] == TransformerBlock("middle", 6)
    assert sd15[("output", 3, 0)] == TransformerBlock("output", 7)
    assert sd15[("output", 11, 0)] == TransformerBlock("output", 15)


@pytest.mark.parametrize("blocks", [11, 16])
@pytest.mark.parametrize("weight_type", list(WeightType))
def test_each_weight_type_per_layer(weight_type: WeightType, blocks: int) -> None:
    layout, table = LAYOUTS[blocks]
    plan = plan_layers(weight_type, W, layout, composition_weight=C)
    assert plan.weights == pytest.approx(per_layer(layout, table[weight_type.value]), abs=1e-12)
    swapped = SWAPPED_BLOCKS.get((weight_type.value, blocks), set())
    assert plan.swapped == {layer for layer, block in enumerate(layout) if block.index in swapped}
    if (weight_type.value, blocks) in BOOSTED:
        boosted = plan_layers(weight_type, W, layout, composition_weight=C, boost=B)
        assert boosted.weights == pytest.approx(per_layer(layout, BOOSTED[(weight_type.value, blocks)]), abs=1e-12)
        assert boosted.swapped == plan.swapped


def test_curves_by_hand() -> None:
    """A few numbers worked out on paper (SDXL, weight 1)."""
    blocks = [TransformerBlock("input", t) for t in range(11)]
    ease_in = plan_layers(WeightType.EASE_IN, 1.0, blocks).weights
    assert ease_in[0] == pytest.approx(1.0) and ease_in[10] == pytest.approx(0.05 + 0.95 / 11)
    in_out = plan_layers(WeightType.EASE_IN_OUT, 1.0, blocks).weights
    assert in_out[0] == pytest.approx(0.05) and in_out[5] == pytest.approx(0.05 + 0.95 * (1 - 0.5 / 5.5))
    reverse = plan_layers(WeightType.REVERSE_IN_OUT, 2.0, blocks).weights
    assert reverse[0] == pytest.approx(2.0) and reverse[6] == pytest.approx(2 * (0.05 + 0.95 * 0.5 / 5.5))


def test_curves_and_weak_types_work_on_any_layout_block_dicts_do_not() -> None:
    five = [TransformerBlock("input", 0), TransformerBlock("input", 1), TransformerBlock("middle", 2)]
    five += [TransformerBlock("output", 3), TransformerBlock("output", 4)]
    assert plan_layers(WeightType.EASE_OUT, 1.0, five).weights == pytest.approx([0.05 + 0.95 * t / 5 for t in range(5)])
    assert plan_layers(WeightType.WEAK_MIDDLE, 1.0, five).weights == pytest.approx([1, 1, 0.2, 1, 1])
    for weight_type in ("style transfer", "composition precise", "strong style and composition"):
        with pytest.raises(ValueError, match=r"SDXL \(11 transformer blocks\) or SD1\.5 \(16\).*this model has 5"):
            plan_layers(WeightType(weight_type), 1.0, five)
    # Written layer weights replace the block dict, so a non-precise style type then fits any layout.
    assert plan_layers(WeightType.STYLE_TRANSFER, 2.0, five, layer_weights="1:0.5").weights == (0, 1.0, 0, 0, 0)
    with pytest.raises(ValueError, match="this model has 5"):
        plan_layers(WeightType.STYLE_TRANSFER_PRECISE, 2.0, five, layer_weights="1:0.5")


def test_layer_weights_text_replaces_the_type() -> None:
    text = " 0:1.0, 3:2.5,\n6:1 "
    assert parse_layer_weights(text, 11) == {0: 1.0, 3: 2.5, 6: 1.0}
    for weight_type in (WeightType.LINEAR, WeightType.EASE_IN, WeightType.STYLE_TRANSFER, WeightType.WEAK_INPUT):
        plan = plan_layers(weight_type, 0.5, SDXL_BLOCKS, layer_weights=text)
        by_block = [0.5, 0, 0, 1.25, 0, 0, 0.5, 0, 0, 0, 0]
        assert plan.weights == pytest.approx(per_layer(SDXL_BLOCKS, by_block)) and plan.swapped == frozenset()
    # The precise types keep their swap on the blocks the text names.
    precise = plan_layers(WeightType.STYLE_TRANSFER_PRECISE, 0.5, SDXL_BLOCKS, layer_weights=text, boost=3.0)
    assert precise.weights == pytest.approx(per_layer(SDXL_BLOCKS, [0.5, 0, 0, 1.25, 0, 0, 0.5, 0, 0, 0, 0]))
    assert precise.swapped == {layer for layer, block in enumerate(SDXL_BLOCKS) if block.index == 3}
    composition = plan_layers(WeightType.COMPOSITION_PRECISE, 0.5, SDXL_BLOCKS, layer_weights=text)
    assert composition.swapped == {layer for layer, block in enumerate(SDXL_BLOCKS) if block.index in (0, 6)}


@pytest.mark.parametrize("text", ["", "   ", " \n "])
def test_empty_layer_weights(text: str) -> None:
    assert parse_layer_weights(text, 11) == {}
    assert plan_layers(WeightType.EASE_IN, 1.0, SDXL_BLOCKS, layer_weights=text).weights[0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0=1", r"cannot read '0=1'.*\"index:weight\" pairs separated by commas"),
        ("0:1:2", r"cannot read '0:1:2'"),
        ("3:", r"cannot read '3:'"),
        ("a:1", r"block index 'a' in 'a:1' is not a whole number"),
        ("3.0:1", r"block index '3.0' .* not a whole number"),
        ("3:x", r"the weight 'x' in '3:x' is not a number"),
        ("11:1", r"block index 11 is out of range: this model has 11 transformer blocks, indices 0 to 10"),
        ("-1:1", r"block index -1 is out of range.*indices 0 to 10"),
        ("1:1, 1:2", r"block index 1 is given twice"),
        ("1:nan", r"weight of block 1 is nan; give a finite number"),
        ("2:inf", r"weight of block 2 is inf; give a finite number"),
    ],
)
def test_layer_weights_errors_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_layer_weights(text, 11)
    with pytest.raises(ValueError, match=message):
        plan_layers(WeightType.LINEAR, 1.0, SDXL_BLOCKS, layer_weights=text)


def test_non_finite_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="weight is nan"):
        plan_layers(WeightType.LINEAR, math.nan, SDXL_BLOCKS)
    with pytest.raises(ValueError, match="boost is inf"):
        plan_layers(WeightType.COMPOSITION_PRECISE, 1.0, SDXL_BLOCKS, boost=math.inf)


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, one head at a time, one sample at a time."""
    batch, queries, width = q.shape
    d = width // heads
    out = torch.zeros(batch, queries, width, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            scores = q[b, :, cols].double() @ k[b, :, cols].double().T / math.sqrt(d)
            probs = scores.exp() / scores.exp().sum(dim=-1, keepdim=True)
            out[b, :, cols] = probs @ v[b, :, cols].double()
    return out


@pytest.mark.parametrize("scaling", list(EmbedsScaling))
@pytest.mark.parametrize("width", [640, 1280])
@pytest.mark.parametrize("weight", [0.35, 1.6])
def test_each_embeds_scaling_equals_its_formula(scaling: EmbedsScaling, width: int, weight: float) -> None:
    g = torch.Generator().manual_seed(width)
    heads, batch = width // 64, 2
    q = torch.randn(batch, 24, width, generator=g)
    k = torch.randn(batch, 4, width, generator=g)
    v = torch.randn(batch, 4, width, generator=g)
    if scaling == EmbedsScaling.V_ONLY:  # out·w
        expected = weight * plain_attention(q, k, v, heads)
    elif scaling == EmbedsScaling.K_V:  # K·w, V·w
        expected = plain_attention(q, k * weight, v * weight, heads)
    elif scaling == EmbedsScaling.K_V_C_PENALTY:  # w' = w·C/1280, then K·w', V·w'
        w = weight * width / 1280
        expected = plain_attention(q, k * w, v * w, heads)
    else:  # w' = w·C/1280, K·w', V - mean_tokens(V) + mean_tokens(V)·w'
        w = weight * width / 1280
        mean = torch.stack([v[b].sum(dim=0) / v.shape[1] for b in range(batch)])[:, None, :]
        expected = plain_attention(q, k * w, v - mean + mean * w, heads)
    key, value = scaled_kv(k, v, scaling, weight)
    scale = weight if scaling == EmbedsScaling.V_ONLY else 1.0
    out = adapter_attention(q, [SourceKV(key, value, torch.full((batch,), scale))], heads)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
