"""Building an adapter's applied sources from what the apply node was given."""

from __future__ import annotations

import math
from dataclasses import dataclass

import comfy.model_patcher
import torch

from ..adapter.checkpoint import Adapter, AdapterFormatError, AdapterKind, ClipInput, Source
from ..adapter.tokens import ReferenceCombine, body_tokens, combine_references, face_tokens, image_tokens
from ..body.body_id import BodyID
from ..identity.embeds import FaceEmbeds
from .attn2 import AppliedSource


@dataclass(frozen=True)
class SourceInputs:
    clip_vision: object | None
    image: torch.Tensor | None
    face: FaceEmbeds | None
    body: BodyID | None
    weights: dict[Source, float]
    start_percent: float
    end_percent: float
    combine: ReferenceCombine
    mask: torch.Tensor | None
    faceid_v2_shortcut: float = 1.0


def clip_features(clip_vision, images: torch.Tensor, which: ClipInput) -> torch.Tensor:
    return getattr(clip_vision.encode_image(images[..., :3]), which.value).float()


def null_clip_features(clip_vision, which: ClipInput, like: torch.Tensor) -> torch.Tensor:
    """The unconditional CLIP input: zeros for image embeds, the encoding of a black image for hidden states."""
    if which is ClipInput.EMBEDS:
        return torch.zeros_like(like[:1])
    return clip_features(clip_vision, torch.zeros((1, 224, 224, 3)), which)


def _need_clip(inputs: SourceInputs, why: str):
    if inputs.clip_vision is None:
        raise ValueError(f"{why} needs a CLIP vision model: connect clip_vision.")
    return inputs.clip_vision


def _tokens(adapter: Adapter, source: Source, inputs: SourceInputs) -> tuple[torch.Tensor, torch.Tensor]:
    spec = adapter.spec
    if source is Source.IMAGE:
        clip = _need_clip(inputs, "A reference image")
        on = clip_features(clip, inputs.image, spec.clip_input)
        return image_tokens(adapter, on, null_clip_features(clip, spec.clip_input, on))
    if source is Source.FACE:
        clip_on = clip_off = None
        if spec.kind is AdapterKind.FACEID_PLUS:
            clip = _need_clip(inputs, "A FaceID-Plus adapter")
            if inputs.face.crops is None:
                raise ValueError("These face embeddings kept no face crops; FaceID-Plus needs them for CLIP vision.")
            clip_on = clip_features(clip, inputs.face.crops, ClipInput.HIDDEN)
            clip_off = null_clip_features(clip, ClipInput.HIDDEN, clip_on)
        return face_tokens(adapter, inputs.face.arcface, clip_on, clip_off, inputs.faceid_v2_shortcut)
    return body_tokens(adapter, inputs.body.c_body)


def check_inputs(inputs: SourceInputs) -> None:
    """Clear errors for numbers and masks the patch could not use (a NaN percent fails deep in ComfyUI)."""
    for what, value in (("start percent", inputs.start_percent), ("end percent", inputs.end_percent)):
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"The adapter's {what} is {value}: give a number from 0 to 1.")
    start, end = inputs.start_percent, inputs.end_percent
    if start > end:
        raise ValueError(f"start ({start}) is after end ({end}): swap start_at and end_at.")
    for source, weight in inputs.weights.items():
        if not math.isfinite(weight):
            raise ValueError(f"The {source.value} weight is {weight}: give a finite number.")
    if not math.isfinite(inputs.faceid_v2_shortcut):
        raise ValueError(f"The FaceID-Plus-v2 shortcut weight is {inputs.faceid_v2_shortcut}: give a finite number.")
    mask = inputs.mask
    if mask is not None:
        if mask.ndim not in (2, 3) or mask.numel() == 0:
            raise ValueError(f"attn_mask has shape {tuple(mask.shape)}: give a MASK, (height, width) or (batch, H, W).")
        if not bool(torch.isfinite(mask).all()):
            raise ValueError("attn_mask has NaN or infinite values: give a mask of values from 0 to 1.")


def applied_sources(
    model: comfy.model_patcher.ModelPatcher, adapter: Adapter, inputs: SourceInputs
) -> list[AppliedSource]:
    """The sources the patch adds. A mask batch of 1 acts on every image; a larger batch must match the latent
    batch, which is only known when sampling: the patch checks it on its first call."""
    check_inputs(inputs)
    given = {Source.IMAGE: inputs.image, Source.FACE: inputs.face, Source.BODY: inputs.body}
    supported = adapter.spec.sources
    unusable = [s.value for s, value in given.items() if value is not None and s not in supported]
    if unusable:
        raise AdapterFormatError(
            f"This {adapter.spec.kind.value} adapter has no {', '.join(unusable)} source; it takes "
            f"{', '.join(s.value for s in supported)}. Disconnect the input or pick another adapter."
        )
    active = [s for s in supported if given[s] is not None]
    if not active:
        raise ValueError(f"Connect at least one input this adapter uses: {', '.join(s.value for s in supported)}.")
    sampling = model.get_model_object("model_sampling")
    sigma_start = float(sampling.percent_to_sigma(inputs.start_percent))
    sigma_end = float(sampling.percent_to_sigma(inputs.end_percent))
    mask = inputs.mask[None] if inputs.mask is not None and inputs.mask.ndim == 2 else inputs.mask
    sources = []
    for source in active:
        on, off = _tokens(adapter, source, inputs)
        sources.append(
            AppliedSource(
                source, combine_references(on, inputs.combine),
                # The null branch needs as many tokens as the ID branch: they share one batched call.
                combine_references(off.expand(on.shape[0], -1, -1), inputs.combine),
                inputs.weights[source], sigma_start, sigma_end, mask,
            )
        )  # fmt: skip
    return sources
