"""FastFace attention manipulation (AM) of the identity branch's attention map, in pure torch.

Maps are (batch, heads, queries, tokens) softmax probabilities over the ID tokens.

    AM1, scale-power:      A' = s * A^p
    AM2, scheduled softmax: A' = s * minmax(sigmoid(d * (minmax(A) - max(Q_p(A), 1e-6))))
        Q_p is the p-quantile over query positions, per token, taken on the raw map (as the reference
        code does; eq. 9 prints the opposite sign, the text and the code use this one). minmax runs over
        batch, heads and queries, per token. Token 0 is inverted (1 - A) before the transform and back
        after (max over queries - A'). d and s follow per-step schedules. AdaIN then blends the map
        (stats over tokens) and the branch output (stats over head_dim, per head) with the original's
        statistics: w * x + (1 - w) * ((x - mean_x) * std_orig / (std_x + 1e-6) + mean_orig).

The authors' code also clamps s * A at 10; A is a probability and s <= 10 here, so that clamp never binds.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

BLOCK_NAMES = ("input", "middle", "output")  # ComfyUI's names for the UNet's down, mid and up blocks

ADAIN_EPS = 1e-6  # added to the std divided by, in both AdaINs (the authors' code)
QUANTILE_FLOOR = 1e-6  # the authors' code clamps the quantile threshold at this
SCALE_RANGE = (0.0, 10.0)  # s; at 10 the authors' clamp of s * A at 10 would start to matter
SHARPNESS_RANGE = (0.0, 100.0)  # d, above 0


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
    """w * x + (1 - w) * ((x - mean) * std_orig / (std + 1e-6) + mean_orig), stats along the last dim."""
    if x.shape[-1] < 2:  # one token has no spread to match (the authors' code would give NaN here)
        return x
    mean, std = _mean_std(x)
    target_mean, target_std = _mean_std(original)
    return weight * x + (1 - weight) * ((x - mean) * (target_std / (std + ADAIN_EPS)) + target_mean)


def scale_power(maps: torch.Tensor, scale: float, power: float) -> torch.Tensor:
    return scale * maps.pow(power)


def scheduled_softmax(maps: torch.Tensor, scale: float, sharpness: float, quantile: float) -> torch.Tensor:
    # Token-major (tokens, batch, heads, queries): every reduction below runs along a contiguous axis.
    by_token = maps.permute(3, 0, 1, 2).contiguous()
    threshold = _last_axis_quantile(by_token, quantile).clamp_min(QUANTILE_FLOOR)
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


def _range_problem(name: str, values: Sequence[float], low: float, high: float, low_included: bool) -> str | None:
    for value in values:
        below = value < low or (value == low and not low_included)
        if not math.isfinite(value) or below or value > high:
            side = "at least" if low_included else "above"
            return f"{name} holds {value:g}: every value must be a finite number {side} {low:g} and at most {high:g}."
    return None


def step_schedule(text: str, name: str, low: float, high: float, low_included: bool = True) -> tuple[float, ...]:
    """One value per step from e.g. "1.0, 1.55" (commas or semicolons; the last value holds for later steps),
    each finite and in range. Raises ValueError naming the input `name`."""
    parts = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    if not parts:
        raise ValueError(f"{name} is empty: give one number, or one per step separated by commas (e.g. 1.0, 1.55).")
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        raise ValueError(
            f"{name} '{text}' is not a list of numbers: separate them with commas (e.g. 1.0, 1.55)."
        ) from None
    problem = _range_problem(name, values, low, high, low_included)
    if problem:
        raise ValueError(f"{problem} Fix the schedule '{text}'.")
    return values


@dataclass(frozen=True)
class AttentionManipulation:
    """AM settings. `scales` gives s per block name, one value per step (the last holds for later steps);
    a block without a scale is left untouched."""

    kind: AMKind
    scales: Mapping[str, tuple[float, ...]]
    power: float = 1.3
    quantile: float = 0.65
    sharpness: tuple[float, ...] = (7.5, 5.0)  # d per step; the last value holds for the remaining steps
    adain_weight: float | None = 0.7
    invert_first_token: bool = True

    def __post_init__(self) -> None:
        problems = [
            _range_problem(f"AM scale for block '{block}'", schedule, *SCALE_RANGE, True)
            if schedule
            else f"AM scale for block '{block}' is an empty schedule."
            for block, schedule in self.scales.items()
        ]
        problems += [
            None if block in BLOCK_NAMES else f"AM block '{block}' is not one of {', '.join(BLOCK_NAMES)}."
            for block in self.scales
        ]
        problems.append(_range_problem("AM power", (self.power,), 0.0, 5.0, False))
        problems.append(_range_problem("AM quantile", (self.quantile,), 0.0, 1.0, True))
        problems.append(
            _range_problem("AM sharpness", self.sharpness, *SHARPNESS_RANGE, False)
            if self.sharpness
            else "AM sharpness is an empty schedule."
        )
        if self.adain_weight is not None:
            problems.append(_range_problem("AM AdaIN weight", (self.adain_weight,), 0.0, 1.0, True))
        problem = next((p for p in problems if p), None)
        if problem:
            raise ValueError(problem)

    def bind(self, block: str, step: int) -> MapHook | None:
        """The hook for one layer of block `block` at sampling step `step`, or None where AM does not act."""
        schedule = self.scales.get(block)
        if schedule is None:
            return None
        scale = _at(schedule, step)
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


# The published values: src/custom_dca.py and configs/fastface/am{1,2}_and_dcg.json of the authors' code.
AM1_SCALE_DOWN, AM1_SCALE_UP, AM1_POWER = 1.55, 1.45, 1.3  # the paper's text swaps the two scales
AM2_SCALE, AM2_SHARPNESS, AM2_QUANTILE, AM2_ADAIN_WEIGHT = (1.0, 1.55), (7.5, 5.0), 0.65, 0.7


def am1_preset() -> AttentionManipulation:
    """FastFace AM1 as the authors' code runs it: p = 1.3, s = 1.55 on down blocks and 1.45 on up blocks, no mid."""
    return AttentionManipulation(
        AMKind.SCALE_POWER, {"input": (AM1_SCALE_DOWN,), "output": (AM1_SCALE_UP,)}, AM1_POWER, adain_weight=None
    )


def am2_preset() -> AttentionManipulation:
    """FastFace AM2 as the authors' code runs it on down and up blocks: s = 1.0 then 1.55, d = 7.5 then 5,
    p = 0.65, AdaIN 0.7 on map and output, token-0 inversion."""
    return AttentionManipulation(
        AMKind.SCHEDULED_SOFTMAX, {"input": AM2_SCALE, "output": AM2_SCALE}, quantile=AM2_QUANTILE,
        sharpness=AM2_SHARPNESS, adain_weight=AM2_ADAIN_WEIGHT,
    )  # fmt: skip


class AMPreset(str, enum.Enum):
    AM1_PUBLISHED = "AM1 (published)"
    AM2_PUBLISHED = "AM2 (published)"
    AM1_CUSTOM = "AM1 custom"
    AM2_CUSTOM = "AM2 custom"


@dataclass(frozen=True)
class AMCustom:
    """The custom presets' values. `blocks` are the block names AM acts on; `am1_scales` is s per block name."""

    blocks: frozenset[str]
    am1_scales: Mapping[str, float]
    am1_power: float
    am2_scale: tuple[float, ...]
    am2_sharpness: tuple[float, ...]
    am2_quantile: float
    am2_adain_weight: float | None
    am2_invert_first_token: bool


def manipulation_for(preset: AMPreset, custom: AMCustom) -> AttentionManipulation:
    """The published settings for the published presets; the given values for the custom ones."""
    if preset is AMPreset.AM1_PUBLISHED:
        return am1_preset()
    if preset is AMPreset.AM2_PUBLISHED:
        return am2_preset()
    if preset is AMPreset.AM1_CUSTOM:
        scales = {block: (custom.am1_scales[block],) for block in custom.blocks}
        return AttentionManipulation(AMKind.SCALE_POWER, scales, custom.am1_power, adain_weight=None)
    return AttentionManipulation(
        AMKind.SCHEDULED_SOFTMAX, dict.fromkeys(custom.blocks, custom.am2_scale), quantile=custom.am2_quantile,
        sharpness=custom.am2_sharpness, adain_weight=custom.am2_adain_weight,
        invert_first_token=custom.am2_invert_first_token,
    )  # fmt: skip
