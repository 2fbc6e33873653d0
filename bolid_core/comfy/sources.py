"""Building an adapter's applied sources from what the apply node was given."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import comfy.model_patcher
import torch

from ..adapter.checkpoint import Adapter, AdapterFormatError, AdapterKind, ClipInput, Source
from ..adapter.tokens import (
    ReferenceCombine,
    body_tokens,
    combine_references,
    face_tokens,
    hybrid_face_tokens,
    image_tokens,
)
from ..body.body_id import BodyID
from ..identity.embeds import FaceEmbeds
from ..identity.regions import Background, RegionSet
from .attn2 import AppliedSource, RegionLayout


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
    style_prompt: list | None = None  # CONDITIONING whose pooled text embedding stands in for the style image
    style_image_share: float = 0.5  # alpha of e = alpha * e_image + (1 - alpha) * e_text when both are given
    regions: RegionSet | None = None
    region_background: Background = Background.NONE


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


def pooled_text_embedding(conditioning: list) -> torch.Tensor:
    """The pooled CLIP text embedding of a CONDITIONING (SDXL: CLIP-G's projected output, 1280 wide)."""
    pooled = [entry[1].get("pooled_output") for entry in conditioning if len(entry) > 1]
    pooled = [p for p in pooled if p is not None]
    if not pooled:
        raise ValueError("The style prompt has no pooled text embedding: encode it with an SDXL CLIPTextEncode.")
    return pooled[0][:1].float()


StyleEmbeds = tuple[torch.Tensor | None, torch.Tensor | None]  # CLIP image embeds, pooled text embedding


def _style_embeds(inputs: SourceInputs) -> StyleEmbeds:
    """The style parts a FaceStudio adapter fuses with every person's face: encoded once per apply."""
    clip_embeds = None
    if inputs.image is not None:
        clip_embeds = clip_features(_need_clip(inputs, "A style image"), inputs.image, ClipInput.EMBEDS)
        clip_embeds = clip_embeds.mean(dim=0, keepdim=True)
    text = pooled_text_embedding(inputs.style_prompt) if inputs.style_prompt is not None else None
    return clip_embeds, text


def _face_tokens(
    adapter: Adapter, inputs: SourceInputs, face: FaceEmbeds, style: StyleEmbeds | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity tokens of one person; several photos mixed into one identity (FaceEmbeds.weights) are mixed
    as embeddings, before the projection (FaceStudio's e = sum beta_i e_i)."""
    spec = adapter.spec
    arcface = face.mix(face.arcface)
    if spec.has_fusion:
        return hybrid_face_tokens(adapter, arcface, *style, inputs.style_image_share)
    clip_on = clip_off = None
    if spec.kind == AdapterKind.FACEID_PLUS:
        clip = _need_clip(inputs, "A FaceID-Plus adapter")
        if face.crops is None:
            raise ValueError("These face embeddings kept no face crops; FaceID-Plus needs them for CLIP vision.")
        clip_on = face.mix(clip_features(clip, face.crops, ClipInput.HIDDEN))
        clip_off = null_clip_features(clip, ClipInput.HIDDEN, clip_on)
    return face_tokens(adapter, arcface, clip_on, clip_off, inputs.faceid_v2_shortcut)


def _tokens(
    adapter: Adapter, source: Source, inputs: SourceInputs, style: StyleEmbeds | None
) -> tuple[torch.Tensor, torch.Tensor]:
    spec = adapter.spec
    if source == Source.IMAGE:  # by value: a test may hold the enums of a second import of the pack
        clip = _need_clip(inputs, "A reference image")
        on = clip_features(clip, inputs.image, spec.clip_input)
        return image_tokens(adapter, on, null_clip_features(clip, spec.clip_input, on))
    if source == Source.FACE:
        return _face_tokens(adapter, inputs, inputs.face, style)
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
    if not (math.isfinite(inputs.style_image_share) and 0.0 <= inputs.style_image_share <= 1.0):
        raise ValueError(f"The style image share is {inputs.style_image_share}: give a number from 0 to 1.")
    mask = inputs.mask
    if mask is not None:
        if mask.ndim not in (2, 3) or mask.numel() == 0:
            raise ValueError(f"attn_mask has shape {tuple(mask.shape)}: give a MASK, (height, width) or (batch, H, W).")
        if not bool(torch.isfinite(mask).all()):
            raise ValueError("attn_mask has NaN or infinite values: give a mask of values from 0 to 1.")


def _check_sources(adapter: Adapter, given: dict[Source, object], where: str) -> None:
    supported = adapter.spec.sources
    unusable = [s.value for s, value in given.items() if value is not None and s not in supported]
    if unusable:
        raise AdapterFormatError(
            f"This {adapter.spec.kind.value} adapter has no {', '.join(unusable)} source; it takes "
            f"{', '.join(s.value for s in supported)}. {where}"
        )


def _check_regions(adapter: Adapter, inputs: SourceInputs) -> None:
    if inputs.face is not None or inputs.body is not None:
        raise ValueError(
            "Regions carry their own faces and bodies: disconnect face_embeds and body_id from the apply node "
            "(connect them to the BoLID Add Region nodes instead), or disconnect regions."
        )
    for number, region in enumerate(inputs.regions.regions):
        given = {Source.FACE: region.face, Source.BODY: region.body}
        _check_sources(adapter, given, f"Region {number} has one: connect another adapter, or leave it out.")


def applied_sources(
    model: comfy.model_patcher.ModelPatcher, adapter: Adapter, inputs: SourceInputs
) -> tuple[list[AppliedSource], RegionLayout | None]:
    """The sources the patch adds, and where the regional ones act. A mask batch of 1 acts on every image; a larger
    batch must match the latent batch, which is only known when sampling: the patch checks it on its first call."""
    check_inputs(inputs)
    supported = adapter.spec.sources
    regions = inputs.regions.regions if inputs.regions is not None and len(inputs.regions) else ()
    given = {Source.IMAGE: inputs.image, Source.FACE: inputs.face, Source.BODY: inputs.body}
    if adapter.spec.has_fusion:
        given[Source.IMAGE] = inputs.image if Source.IMAGE in supported else None  # the image feeds the fusion too
        if inputs.face is None and not any(region.face is not None for region in regions):
            raise ValueError(
                "This adapter fuses a face with a style (FaceStudio's CLIP-vision ‖ ArcFace): connect face_embeds "
                "(from BoLID Face Embed), or regions whose people have faces."
            )
    _check_sources(adapter, given, "Disconnect the input or pick another adapter.")
    if regions:
        _check_regions(adapter, inputs)
    active = [s for s in supported if given[s] is not None]
    if not active and not regions:
        raise ValueError(f"Connect at least one input this adapter uses: {', '.join(s.value for s in supported)}.")
    sampling = model.get_model_object("model_sampling")
    window = (
        float(sampling.percent_to_sigma(inputs.start_percent)),
        float(sampling.percent_to_sigma(inputs.end_percent)),
    )
    mask = inputs.mask[None] if inputs.mask is not None and inputs.mask.ndim == 2 else inputs.mask
    style = _style_embeds(inputs) if adapter.spec.has_fusion else None
    sources = [_applied(adapter, source, inputs, style, window, mask, None) for source in active]
    for number, region in enumerate(regions):
        person = dataclasses.replace(inputs, face=region.face, body=region.body)
        for source, value in ((Source.FACE, region.face), (Source.BODY, region.body)):
            if value is not None:
                sources.append(_applied(adapter, source, person, style, window, None, number))
    layout = RegionLayout(tuple(r.mask for r in regions), inputs.region_background) if regions else None
    return sources, layout


def _applied(
    adapter: Adapter,
    source: Source,
    inputs: SourceInputs,
    style: StyleEmbeds | None,
    window: tuple[float, float],
    mask,
    region: int | None,
) -> AppliedSource:
    on, off = _tokens(adapter, source, inputs, style)
    return AppliedSource(
        source, combine_references(on, inputs.combine),
        # The null branch needs as many tokens as the ID branch: they share one batched call.
        combine_references(off.expand(on.shape[0], -1, -1), inputs.combine),
        inputs.weights[source], *window, mask, region=region,
    )  # fmt: skip
