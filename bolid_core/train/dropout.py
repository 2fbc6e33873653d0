"""Condition dropout per source, and the inputs of FaceStudio's reconstruction task.

Dropout: during training each conditioning source of each sample is replaced, at its own rate, by its null input, so
the model also learns the branches that CFG and DCG (FastFace eqs. 16-18) evaluate at inference: ε(∅, ∅), ε(∅, id),
ε(text, id). FaceStudio (§4.1, implementation details) drops the style-image embedding with probability 0.64 and the
face embedding with 0.1; those are our defaults. The body source plays the face's part (an identity the guidance
switches as a whole), so it gets the face's rate; the text gets 0.1, the rate Stable Diffusion's own text dropout
used for classifier-free guidance.

Reconstruction (FaceStudio §3.3): one image supplies both conditions and the target; the style input is that image
with its face hidden, the identity input is its face crop, so the face can only come from the identity branch.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


class ConditionSource(str, enum.Enum):
    """The conditions dropped independently; the first three share `bolid_core.adapter.checkpoint.Source`'s names."""

    IMAGE = "image"  # the reference / style image
    FACE = "face"
    BODY = "body"
    TEXT = "text"


FACESTUDIO_STYLE_DROP_RATE = 0.64  # FaceStudio §4.1
FACESTUDIO_FACE_DROP_RATE = 0.1  # FaceStudio §4.1
BODY_DROP_RATE = FACESTUDIO_FACE_DROP_RATE  # the body is an identity source like the face
TEXT_DROP_RATE = 0.1  # Stable Diffusion's text dropout for classifier-free guidance
# Neutral grey in [0, 1]: 0 after the [-1, 1] scaling the VAE reads, and close to CLIP's channel means (0.48, 0.46,
# 0.41), so the hidden face reads as "nothing" rather than as a colour. FaceStudio does not say what fills it.
RECONSTRUCTION_FILL = 0.5

ConditionValue = torch.Tensor | Sequence[torch.Tensor]


@dataclass(frozen=True)
class ConditionDropout:
    """Per-source drop probabilities, each in [0, 1]."""

    image: float = FACESTUDIO_STYLE_DROP_RATE
    face: float = FACESTUDIO_FACE_DROP_RATE
    body: float = BODY_DROP_RATE
    text: float = TEXT_DROP_RATE

    def __post_init__(self) -> None:
        for source in ConditionSource:
            rate = self.rate(source)
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
                raise ValueError(f"Dropout rate for the {source.value} condition must be a number; got {rate!r}.")
            if not 0 <= rate <= 1:
                raise ValueError(f"Dropout rate for the {source.value} condition must lie in [0, 1]; got {rate}.")

    def rate(self, source: ConditionSource) -> float:
        return getattr(self, source.value)

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[ConditionSource, torch.Tensor]:
        """(batch_size,) bool per source: True where that sample's source is dropped.

        One uniform number per sample and source, in a fixed (sample, source) order, whatever the rates: the
        generator advances by the same amount every call, so a run resumed from a saved generator state draws the
        same masks, and changing one source's rate changes no other source's draws.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"Batch size must be a whole number ≥ 0; got {batch_size!r}.")
        uniform = torch.rand((batch_size, len(ConditionSource)), generator=generator, device=generator.device)
        return {source: uniform[:, column] < self.rate(source) for column, source in enumerate(ConditionSource)}

    def __call__(
        self,
        conditions: Mapping[ConditionSource, ConditionValue],
        generator: torch.Generator,
        null_inputs: Mapping[ConditionSource, ConditionValue] | None = None,
    ) -> tuple[dict[ConditionSource, ConditionValue], dict[ConditionSource, torch.Tensor]]:
        """Draw the masks for this batch and apply them; returns the conditions and the masks drawn."""
        batch_sizes = {_batch_size(source, value) for source, value in conditions.items()}
        if len(batch_sizes) > 1:
            raise ValueError(f"Conditions of one batch disagree on its size: {sorted(batch_sizes)}.")
        dropped = self.draw(batch_sizes.pop() if batch_sizes else 0, generator)
        return drop_conditions(conditions, dropped, null_inputs), dropped


def _batch_size(source: ConditionSource, value: ConditionValue) -> int:
    tensors = [value] if isinstance(value, torch.Tensor) else list(value)
    if not tensors or any(not isinstance(t, torch.Tensor) or t.ndim == 0 for t in tensors):
        raise ValueError(f"The {source.value} condition must be a batched tensor (or a tuple of them).")
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) > 1:
        raise ValueError(f"The {source.value} condition's tensors disagree on the batch size: {sorted(sizes)}.")
    return sizes.pop()


def _replace(source: ConditionSource, value: torch.Tensor, null: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    if null.shape == value.shape[1:]:
        null = null.unsqueeze(0)
    if null.shape[1:] != value.shape[1:] or null.shape[0] not in (1, value.shape[0]):
        raise ValueError(
            f"The {source.value} condition's null input is shaped {tuple(null.shape)}; it must be one sample "
            f"{tuple(value.shape[1:])} or a batch {tuple(value.shape)} like the condition."
        )
    mask = dropped.to(device=value.device).reshape(-1, *([1] * (value.ndim - 1)))
    return torch.where(mask, null.to(device=value.device, dtype=value.dtype), value)


def drop_conditions(
    conditions: Mapping[ConditionSource, ConditionValue],
    dropped: Mapping[ConditionSource, torch.Tensor],
    null_inputs: Mapping[ConditionSource, ConditionValue] | None = None,
) -> dict[ConditionSource, ConditionValue]:
    """Each condition with its dropped samples replaced by the source's null input.

    A condition is a (B, ...) tensor, or a tuple of them (SDXL text: hidden states and pooled embedding). The null
    input of a source defaults to zeros; the text has no such default: the host gives the empty prompt's encoding,
    one sample or a batch, shaped like the condition.
    """
    null_inputs = null_inputs or {}
    result: dict[ConditionSource, ConditionValue] = {}
    for source, value in conditions.items():
        source = ConditionSource(source)
        batch = _batch_size(source, value)
        if source not in dropped:
            raise ValueError(f"No dropout mask drawn for the {source.value} condition.")
        mask = dropped[source]
        if tuple(mask.shape) != (batch,) or mask.dtype != torch.bool:
            raise ValueError(f"The {source.value} dropout mask must be ({batch},) bool; got {tuple(mask.shape)}.")
        null = null_inputs.get(source)
        if null is None and source is ConditionSource.TEXT:
            raise ValueError(
                "Text dropout needs the empty prompt's encoding as the text's null input (pass it in null_inputs); "
                "zeros are not what the UNet saw for an empty prompt."
            )
        if isinstance(value, torch.Tensor):
            result[source] = _replace(source, value, torch.zeros_like(value[0]) if null is None else null, mask)
            continue
        nulls = [torch.zeros_like(v[0]) for v in value] if null is None else null
        if isinstance(nulls, torch.Tensor) or len(nulls) != len(value):
            raise ValueError(
                f"The {source.value} condition has {len(value)} tensors; give its null input as as many tensors."
            )
        result[source] = tuple(_replace(source, v, n, mask) for v, n in zip(value, nulls, strict=True))
    return result


# --- FaceStudio's reconstruction task -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReconstructionInputs:
    style_image: torch.Tensor  # (H, W, C): the image with the face region set to the fill value
    face_crop: torch.Tensor  # (y1 − y0, x1 − x0, C): the image inside `crop_box`, untouched
    face_region: torch.Tensor  # (H, W) bool: the pixels that were filled
    crop_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 and y1 exclusive


def _box_region(face_box, height: int, width: int, expand: float) -> tuple[int, int, int, int]:
    box = torch.as_tensor(face_box, dtype=torch.float64).flatten()
    if box.numel() != 4 or not torch.isfinite(box).all():
        raise ValueError(f"The face box must be 4 finite numbers x0, y0, x1, y1 in pixels; got {face_box!r}.")
    x0, y0, x1, y1 = box.tolist()
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"The face box must have x1 > x0 and y1 > y0; got {face_box!r}.")
    pad_x, pad_y = expand * (x1 - x0), expand * (y1 - y0)
    # Pixel (row, col) covers [col, col + 1) x [row, row + 1): every pixel the box touches is in the region.
    left, top = max(0, math.floor(x0 - pad_x)), max(0, math.floor(y0 - pad_y))
    right, bottom = min(width, math.ceil(x1 + pad_x)), min(height, math.ceil(y1 + pad_y))
    if right <= left or bottom <= top:
        raise ValueError(f"The face box {face_box!r} lies outside the {width}x{height} image.")
    return left, top, right, bottom


def faceid_reconstruction_inputs(
    image: torch.Tensor,
    face_box: Sequence[float] | torch.Tensor | None = None,
    face_mask: torch.Tensor | None = None,
    fill: float = RECONSTRUCTION_FILL,
    expand: float = 0.0,
) -> ReconstructionInputs:
    """FaceStudio's reconstruction task inputs from one (H, W, C) image in [0, 1] (ComfyUI's channels-last layout).

    The face is given by a box (x0, y0, x1, y1 in pixels, as the face detector reports it; grown by `expand` times
    its width and height on each side, then every pixel it touches counts) or by an (H, W) mask (pixels > 0.5).
    The style input is the image with that region set to `fill` in every channel; the identity input is the crop of
    the region's bounding box from the unmasked image.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"The reconstruction image must be one (H, W, C) image tensor; got {shape}.")
    if not math.isfinite(fill) or not 0 <= fill <= 1:
        raise ValueError(f"The fill value must lie in [0, 1] like the image; got {fill}.")
    if not math.isfinite(expand) or expand < 0:
        raise ValueError(f"The face box expansion must be a number ≥ 0; got {expand}.")
    if (face_box is None) == (face_mask is None):
        raise ValueError("Give the face as either a box or a mask (exactly one of them).")
    height, width = image.shape[:2]
    if face_box is not None:
        left, top, right, bottom = _box_region(face_box, height, width, expand)
        region = torch.zeros((height, width), dtype=torch.bool, device=image.device)
        region[top:bottom, left:right] = True
    else:
        if tuple(face_mask.shape) != (height, width):
            raise ValueError(
                f"The face mask must be shaped like the image, ({height}, {width}); got {tuple(face_mask.shape)}."
            )
        region = (face_mask > 0.5).to(image.device)
        rows, cols = region.any(dim=1).nonzero(), region.any(dim=0).nonzero()
        if rows.numel() == 0:
            raise ValueError("The face mask is empty: it marks no pixel above 0.5.")
        top, bottom = int(rows[0]), int(rows[-1]) + 1
        left, right = int(cols[0]), int(cols[-1]) + 1
    style = torch.where(region[..., None], torch.full((), fill, dtype=image.dtype, device=image.device), image)
    return ReconstructionInputs(
        style_image=style,
        face_crop=image[top:bottom, left:right].clone(),
        face_region=region,
        crop_box=(left, top, right, bottom),
    )
