"""FastFace attention manipulation (AM) of the identity branch's attention map, in pure torch.

Maps are (batch, heads, queries, tokens) softmax probabilities over the ID tokens.

    AM1, scale-power:      A' = s * A^p
    AM2, scheduled softmax: A' = s * minmax(sigmoid(d * (minmax(A) - Q_p(A))))
        Q_p is the p-quantile over query positions, per token, taken on the raw map (as the reference
        code does; eq. 9 prints the opposite sign, the text and the code use this one). minmax runs over
        batch, heads and queries, per token. Token 0 is inverted (1 - A) before the transform and back
        after (max over queries - A'). AdaIN then blends the map, and the branch output, with the original's
        statistics: w * x + (1 - w) * adain(x, original).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

BLOCK_NAMES = ("input", "middle", "output")  # ComfyUI's names for the UNet's down, mid and up blocks


@dataclass(frozen=True)
class MapHook:
    """A bound transform of one source's attention map, and an optional AdaIN blend of its output."""

    transform: Callable[[torch.Tensor], torch.Tensor]
    output_adain: float | None = None


class AMKind(str, enum.Enum):
    SCALE_POWER = "am1_scale_power"
    SCHEDULED_SOFTMAX = "am2_scheduled_softmax"


def quantile_over_queries(maps: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(maps, q, dim=-2, keepdim=True) by selection (kthvalue), not a full sort."""
    return _last_axis_quantile(maps.transpose(-1, -2).contiguous(), q).transpose(-1, -2)


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std over the last dim. Written out: torch.std over a dim of a few tokens is ~15x slower."""
    mean = x.mean(dim=-1, keepdim=True)
    return mean, ((x - mean).square().sum(dim=-1, keepdim=True) / (x.shape[-1] - 1)).sqrt()


def adain_blend(x: torch.Tensor, original: torch.Tensor, weight: float) -> torch.Tensor:
    """w * x + (1 - w) * (x standardised along the last dim, then given the original's mean and std)."""
    mean, std = _mean_std(x)
    target_mean, target_std = _mean_std(original)
    restyled = (x - mean) / std * target_std + target_mean
    restyled = torch.where(torch.isfinite(restyled), restyled, x)  # a constant row has no std to match
    return weight * x + (1 - weight) * restyled


def scale_power(maps: torch.Tensor, scale: float, power: float) -> torch.Tensor:
    return scale * maps.pow(power)


def scheduled_softmax(maps: torch.Tensor, scale: float, sharpness: float, quantile: float) -> torch.Tensor:
    # Token-major (tokens, batch, heads, queries): every reduction below runs along a contiguous axis.
    by_token = maps.permute(3, 0, 1, 2).contiguous()
    threshold = _last_axis_quantile(by_token, quantile)
    normed = _minmax_per_token(by_token)
    out = scale * _minmax_per_token(torch.sigmoid(sharpness * (normed - threshold)))
    return out.permute(1, 2, 3, 0)


def _last_axis_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(x, q, dim=-1, keepdim=True) by selection."""
    count = x.shape[-1]
    position = q * (count - 1)
    lower, upper = int(position), min(int(position) + 1, count - 1)
    low = x.kthvalue(lower + 1, dim=-1, keepdim=True).values
    if upper == lower:
        return low
    return low + (position - lower) * (x.kthvalue(upper + 1, dim=-1, keepdim=True).values - low)


def _minmax_per_token(by_token: torch.Tensor) -> torch.Tensor:
    flat = by_token.reshape(by_token.shape[0], -1)
    low, high = flat.aminmax(dim=-1, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(by_token)


def with_first_token_inverted(transform: Callable[[torch.Tensor], torch.Tensor]):
    def wrapped(maps: torch.Tensor) -> torch.Tensor:
        flipped = maps.clone()
        flipped[..., 0] = 1 - maps[..., 0]
        out = transform(flipped)
        out[..., 0] = out[..., 0].amax(dim=-1, keepdim=True) - out[..., 0]  # queries are the last axis here
        return out

    return wrapped


def _at(values: Sequence[float], step: int) -> float:
    return values[min(step, len(values) - 1)]


@dataclass(frozen=True)
class AttentionManipulation:
    """AM settings; `scales` gives s per block name, and a block without a scale is left untouched."""

    kind: AMKind
    scales: dict[str, float]
    power: float = 1.3
    quantile: float = 0.65
    sharpness: tuple[float, ...] = (7.5, 5.0)  # d per step; the last value holds for the remaining steps
    adain_weight: float | None = 0.7
    invert_first_token: bool = True

    def bind(self, block: str, step: int) -> MapHook | None:
        """The hook for one layer of block `block` at sampling step `step`, or None where AM does not act."""
        scale = self.scales.get(block)
        if scale is None:
            return None
        if self.kind is AMKind.SCALE_POWER:
            return MapHook(lambda maps: scale_power(maps, scale, self.power))
        sharpness = _at(self.sharpness, step)
        transform = lambda maps: scheduled_softmax(maps, scale, sharpness, self.quantile)  # noqa: E731
        if self.invert_first_token:
            transform = with_first_token_inverted(transform)
        if self.adain_weight is None:
            return MapHook(transform)
        weight = self.adain_weight
        return MapHook(lambda maps: adain_blend(transform(maps), maps, weight), output_adain=weight)


def am1_preset() -> AttentionManipulation:
    """FastFace AM1 as published: p = 1.3, s = 1.45 on down blocks and 1.55 on up blocks, no mid block."""
    return AttentionManipulation(AMKind.SCALE_POWER, {"input": 1.45, "output": 1.55}, adain_weight=None)


def am2_preset() -> AttentionManipulation:
    """FastFace AM2 as published: d = 7.5 then 5, p = 0.65, s = 1.55, AdaIN 0.7, token-0 inversion."""
    return AttentionManipulation(AMKind.SCHEDULED_SOFTMAX, {"input": 1.55, "output": 1.55})


class AMPreset(str, enum.Enum):
    AM1_PUBLISHED = "AM1 (published)"
    AM2_PUBLISHED = "AM2 (published)"
    AM1_CUSTOM = "AM1 custom"
    AM2_CUSTOM = "AM2 custom"


@dataclass(frozen=True)
class AMCustom:
    scales: dict[str, float]
    power: float
    quantile: float
    sharpness: tuple[float, ...]
    adain_weight: float | None
    invert_first_token: bool


def manipulation_for(preset: AMPreset, custom: AMCustom) -> AttentionManipulation:
    """The published settings for the published presets; the given values for the custom ones."""
    if preset is AMPreset.AM1_PUBLISHED:
        return am1_preset()
    if preset is AMPreset.AM2_PUBLISHED:
        return am2_preset()
    kind = AMKind.SCALE_POWER if preset is AMPreset.AM1_CUSTOM else AMKind.SCHEDULED_SOFTMAX
    return AttentionManipulation(
        kind, custom.scales, custom.power, custom.quantile, custom.sharpness, custom.adain_weight,
        custom.invert_first_token,
    )  # fmt: skip
