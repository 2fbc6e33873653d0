"""Per-layer weights of an adapter source (IPAdapter_plus's weight types, layer weights and embeds scaling).

Computed once when the adapter is applied: one weight per cross-attention layer, in attn2_layer_keys order.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


class WeightType(str, enum.Enum):
    """How a source's weight is spread over the UNet's transformer blocks."""

    LINEAR = "linear"
    EASE_IN = "ease in"
    EASE_OUT = "ease out"
    EASE_IN_OUT = "ease in-out"
    REVERSE_IN_OUT = "reverse in-out"
    WEAK_INPUT = "weak input"
    WEAK_OUTPUT = "weak output"
    WEAK_MIDDLE = "weak middle"
    STRONG_MIDDLE = "strong middle"
    STYLE_TRANSFER = "style transfer"
    COMPOSITION = "composition"
    STRONG_STYLE_TRANSFER = "strong style transfer"
    STYLE_AND_COMPOSITION = "style and composition"
    STRONG_STYLE_AND_COMPOSITION = "strong style and composition"
    STYLE_TRANSFER_PRECISE = "style transfer precise"
    COMPOSITION_PRECISE = "composition precise"


class EmbedsScaling(str, enum.Enum):
    """Where a layer's weight acts: on the attention output (V only), or on the source's keys and values."""

    V_ONLY = "V only"
    K_V = "K+V"
    K_V_C_PENALTY = "K+V w/ C penalty"
    K_MEAN_V_C_PENALTY = "K+mean(V) w/ C penalty"


@dataclass(frozen=True)
class TransformerBlock:
    """Where one cross-attention layer sits: the block kind ("input", "middle", "output") and the index of its
    spatial transformer in the UNet's forward order (SDXL: 0-10, SD1.5: 0-15), as ComfyUI's transformer_index."""

    kind: str
    index: int


@dataclass(frozen=True)
class LayerPlan:
    """One source's absolute weight at each cross-attention layer, and the layers where its branches swap
    (the "precise" types: the ID branch gets nothing there and the null branch gets the ID tokens)."""

    weights: tuple[float, ...]
    swapped: frozenset[int] = frozenset()


BLOCK_KINDS = ("input", "middle", "output")  # forward order of the UNet's stages
SDXL_BLOCKS = 11
SD15_BLOCKS = 16
_STYLE_COMPOSITION_TYPES = frozenset(
    {
        WeightType.STYLE_TRANSFER,
        WeightType.COMPOSITION,
        WeightType.STRONG_STYLE_TRANSFER,
        WeightType.STYLE_AND_COMPOSITION,
        WeightType.STRONG_STYLE_AND_COMPOSITION,
        WeightType.STYLE_TRANSFER_PRECISE,
        WeightType.COMPOSITION_PRECISE,
    }
)
PRECISE_TYPES = frozenset({WeightType.STYLE_TRANSFER_PRECISE, WeightType.COMPOSITION_PRECISE})
_CURVES = {
    WeightType.EASE_IN: lambda t, n: 0.05 + 0.95 * (1 - t / n),
    WeightType.EASE_OUT: lambda t, n: 0.05 + 0.95 * (t / n),
    WeightType.EASE_IN_OUT: lambda t, n: 0.05 + 0.95 * (1 - abs(t - n / 2) / (n / 2)),
    WeightType.REVERSE_IN_OUT: lambda t, n: 0.05 + 0.95 * (abs(t - n / 2) / (n / 2)),
}
# The block kinds that a "weak"/"strong" type multiplies by 0.2 (the others keep the full weight).
_WEAKENED = {
    WeightType.WEAK_INPUT: {"input"},
    WeightType.WEAK_MIDDLE: {"middle"},
    WeightType.WEAK_OUTPUT: {"output"},
    WeightType.STRONG_MIDDLE: {"input", "output"},
}
WEAK_FACTOR = 0.2


def transformer_blocks(keys: Sequence[tuple[str, int, int]]) -> tuple[TransformerBlock, ...]:
    """The block of each attn2 layer key (attn2_layer_keys order).

    A block is one (kind, number) of the UNet, i.e. one spatial transformer; they are numbered in forward order:
    input blocks by number, then the middle block, then output blocks by number.
    """
    for kind, _, _ in keys:
        if kind not in BLOCK_KINDS:
            raise ValueError(f"Unknown attn2 block kind {kind!r}: expected one of {', '.join(BLOCK_KINDS)}.")
    order = sorted({(kind, number) for kind, number, _ in keys}, key=lambda b: (BLOCK_KINDS.index(b[0]), b[1]))
    index = {block: i for i, block in enumerate(order)}
    return tuple(TransformerBlock(kind, index[(kind, number)]) for kind, number, _ in keys)


def parse_layer_weights(text: str, blocks: int) -> dict[int, float]:
    """ "index:weight, ..." (transformer block indices, 0 to blocks - 1) → {index: weight}; clear errors."""
    example = 'write it as "index:weight" pairs separated by commas, e.g. "0:1.0, 3:2.5, 6:1"'
    parsed: dict[int, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ValueError(f"layer_weights: cannot read {item!r}; {example}.")
        index_text, weight_text = parts[0].strip(), parts[1].strip()
        try:
            index = int(index_text)
        except ValueError:
            raise ValueError(
                f"layer_weights: the block index {index_text!r} in {item!r} is not a whole number; {example}."
            ) from None
        try:
            weight = float(weight_text)
        except ValueError:
            raise ValueError(
                f"layer_weights: the weight {weight_text!r} in {item!r} is not a number; {example}."
            ) from None
        if not 0 <= index < blocks:
            raise ValueError(
                f"layer_weights: block index {index} is out of range: this model has {blocks} transformer blocks, "
                f"indices 0 to {blocks - 1}."
            )
        if index in parsed:
            raise ValueError(f"layer_weights: block index {index} is given twice; give each block once.")
        if not math.isfinite(weight):
            raise ValueError(f"layer_weights: the weight of block {index} is {weight_text}; give a finite number.")
        parsed[index] = weight
    return parsed


def _style_composition_weights(
    weight_type: WeightType, weight: float, composition: float, boost: float | None, blocks: int
) -> dict[int, float]:
    """The block dicts of the style/composition types (IPAdapter_plus's ipadapter_execute), SDXL or SD1.5 layout;
    blocks missing from the dict get nothing."""
    sdxl = blocks == SDXL_BLOCKS
    w = weight
    if weight_type == WeightType.STYLE_TRANSFER:
        return {6: w} if sdxl else dict.fromkeys((0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15), w)
    if weight_type == WeightType.COMPOSITION:
        return {3: w} if sdxl else {4: w * 0.25, 5: w}
    if weight_type == WeightType.STRONG_STYLE_TRANSFER:
        return dict.fromkeys((0, 1, 2, 4, 5, 6, 7, 8, 9, 10) if sdxl else (0, 1, 2, 3, *range(6, 16)), w)
    if weight_type in (WeightType.STYLE_AND_COMPOSITION, WeightType.STYLE_TRANSFER_PRECISE):
        c = composition if weight_type == WeightType.STYLE_AND_COMPOSITION else (w if boost is None else boost)
        if sdxl:
            return {3: c, 6: w}
        return {**dict.fromkeys((0, 1, 2, 3, *range(9, 16)), w), 4: c * 0.25, 5: c}
    if weight_type == WeightType.STRONG_STYLE_AND_COMPOSITION:
        if sdxl:
            return {**dict.fromkeys(range(11), w), 3: composition}
        return {**dict.fromkeys(range(16), w), 4: composition, 5: composition}
    if weight_type == WeightType.COMPOSITION_PRECISE:
        b = w if boost is None else boost  # the boost replaces the weight everywhere but the composition block(s)
        if sdxl:
            return {**dict.fromkeys(range(11), b * 0.1), 3: w, 6: b}
        return {**dict.fromkeys(range(16), b), **dict.fromkeys((6, 7, 8), b * 0.1), 4: w * 0.25, 5: w}
    raise AssertionError(weight_type)


def _swapped_blocks(weight_type: WeightType, blocks: int) -> set[int]:
    """Blocks where a precise type gives the ID branch nothing and the null branch the ID tokens."""
    composition_blocks = {3} if blocks == SDXL_BLOCKS else {4, 5}
    if weight_type == WeightType.STYLE_TRANSFER_PRECISE:
        return composition_blocks
    if weight_type == WeightType.COMPOSITION_PRECISE:
        return set(range(blocks)) - composition_blocks
    return set()


def plan_layers(
    weight_type: WeightType,
    weight: float,
    blocks: Sequence[TransformerBlock],
    *,
    composition_weight: float = 1.0,
    boost: float | None = None,
    layer_weights: str = "",
) -> LayerPlan:
    """The per-layer weights of one source, as IPAdapter_plus spreads them (ipadapter_execute and
    ipadapter_attention), for `blocks` = transformer_blocks(attn2 keys).

    Curve and weak/strong types work on any layout; the style/composition types pick SDXL (11 transformer blocks)
    or SD1.5 (16) blocks. composition_weight: the composition block's weight of "style and composition" and
    "strong style and composition". boost: style_boost of "style transfer precise" (its composition block) or
    composition_boost of "composition precise" (every block but the composition one); ignored by the other types.
    layer_weights: "index:weight, ..." per transformer block, times `weight`; it replaces the type's weights
    (blocks not listed get nothing), except that the precise types still swap their blocks.
    """
    weight_type = WeightType(weight_type)
    count = 1 + max((block.index for block in blocks), default=-1)
    for name, value in (("weight", weight), ("composition_weight", composition_weight), ("boost", boost)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"The {name} is {value}; give a finite number.")
    written = bool(layer_weights.strip())
    dict_type = weight_type in _STYLE_COMPOSITION_TYPES
    needs_layout = (dict_type and not written) or weight_type in PRECISE_TYPES
    if needs_layout and count not in (SDXL_BLOCKS, SD15_BLOCKS):
        raise ValueError(
            f'Weight type "{weight_type.value}" picks SDXL (11 transformer blocks) or SD1.5 (16) blocks; this model '
            f"has {count}. Use linear, an ease curve, a weak/strong type or layer_weights instead."
        )
    parsed = parse_layer_weights(layer_weights, count)
    if written:
        per_block = {index: w * weight for index, w in parsed.items()}
    elif dict_type:
        per_block = _style_composition_weights(weight_type, weight, composition_weight, boost, count)
    elif weight_type in _CURVES:
        curve = _CURVES[weight_type]
        per_block = {t: weight * curve(t, count) for t in range(count)}
    else:
        weakened = _WEAKENED.get(weight_type, set())
        kinds = {block.index: block.kind for block in blocks}
        per_block = {t: weight * (WEAK_FACTOR if kinds[t] in weakened else 1.0) for t in kinds}
    swapped_blocks = _swapped_blocks(weight_type, count) & set(per_block)
    weights = tuple(float(per_block.get(block.index, 0.0)) for block in blocks)
    swapped = frozenset(layer for layer, block in enumerate(blocks) if block.index in swapped_blocks)
    return LayerPlan(weights, swapped)


# Width that IPAdapter_plus's "w/ C penalty" scalings divide the layer width by (SDXL's widest layer).
C_PENALTY_WIDTH = 1280.0


def scaled_kv(
    key: torch.Tensor, value: torch.Tensor, scaling: EmbedsScaling, weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A source's K and V (batch, tokens, width) at one layer with that layer's weight w applied as `scaling` says.

    V only leaves them as they are (the weight then scales the attention output). K+V: K·w, V·w. The C penalties
    first take w·width/1280. K+mean(V): K·w, V - mean(V) + mean(V)·w, the mean over each row's tokens.
    """
    if scaling == EmbedsScaling.V_ONLY:
        return key, value
    if scaling in (EmbedsScaling.K_V_C_PENALTY, EmbedsScaling.K_MEAN_V_C_PENALTY):
        weight = weight * key.shape[-1] / C_PENALTY_WIDTH
    if scaling == EmbedsScaling.K_MEAN_V_C_PENALTY:
        mean = value.mean(dim=1, keepdim=True)
        return key * weight, value - mean + mean * weight
    return key * weight, value * weight
