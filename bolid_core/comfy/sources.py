"""Building an adapter's applied sources from what the apply node was given."""

from __future__ import annotations

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


def applied_sources(
    model: comfy.model_patcher.ModelPatcher, adapter: Adapter, inputs: SourceInputs
) -> list[AppliedSource]:
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
