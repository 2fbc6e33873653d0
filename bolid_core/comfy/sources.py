"""Building an adapter's applied sources from what the apply node was given."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import comfy.model_patcher
import torch

from ..adapter.checkpoint import Adapter, AdapterFormatError, AdapterKind, ClipInput, Source
from ..adapter.image_embeds import ImageEmbeds
from ..adapter.layer_weights import (
    EmbedsScaling,
    LayerPlan,
    TransformerBlock,
    WeightType,
    plan_layers,
    transformer_blocks,
)
from ..adapter.tokens import ReferenceCombine, body_tokens, face_tokens, hybrid_face_tokens, image_tokens
from ..body.body_id import BodyID
from ..identity.embeds import FaceEmbeds
from ..identity.regions import Background, RegionSet
from .attn2 import AppliedSource, RegionLayout, attn2_layer_keys
from .clip_encoding import encode_images


@dataclass(frozen=True)
class StyleComposition:
    """IPAdapter_plus's style & composition: the apply's image (weights[IMAGE]) is the style reference, acting at
    the style blocks; `image` is the composition reference, acting at the composition block with `weight`.
    expand_style: the style also acts at every other block ("strong style and composition")."""

    image: torch.Tensor
    weight: float
    expand_style: bool = False


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
    weight_type: WeightType = WeightType.LINEAR
    embeds_scaling: EmbedsScaling = EmbedsScaling.V_ONLY
    layer_weights: str = ""  # "block:weight, ...", times each source's weight; replaces the type's spread
    composition_weight: float = 1.0  # the composition block's weight of the "style and composition" types
    precise_boost: float | None = None  # style_boost / composition_boost of the precise types; None: the weight
    image_negative: torch.Tensor | None = None  # the off branch's CLIP input instead of the usual null input
    unfold_batch: bool = False  # latent i gets reference i, no combining
    encode_batch_size: int = 0  # images per CLIP-vision call; 0: all at once
    image_embeds: ImageEmbeds | None = None  # encoded references, instead of clip_vision + image
    composition: StyleComposition | None = None


def clip_features(clip_vision, images: torch.Tensor, which: ClipInput, batch_size: int = 0) -> torch.Tensor:
    return encode_images(clip_vision, images, batch_size).features(which)


def null_clip_features(clip_vision, which: ClipInput, like: torch.Tensor) -> torch.Tensor:
    """The unconditional CLIP input: zeros for image embeds, the encoding of a black image for hidden states."""
    if which == ClipInput.EMBEDS:
        return torch.zeros_like(like[:1])
    return getattr(clip_vision.encode_image(torch.zeros((1, 224, 224, 3))), which.value).float()


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


class _Encodings:
    """CLIP-vision encodings one apply needs, each made once: the references, the negative image, the null input."""

    def __init__(self, inputs: SourceInputs) -> None:
        self.inputs = inputs
        self._cache: dict = {}

    def _once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def encode(self, images: torch.Tensor, why: str) -> ImageEmbeds:
        clip = _need_clip(self.inputs, why)
        return self._once(("images", id(images)), lambda: encode_images(clip, images, self.inputs.encode_batch_size))

    def references(self) -> ImageEmbeds:
        """The apply's reference images (or the image embeds it was given)."""
        if self.inputs.image_embeds is not None:
            return self.inputs.image_embeds
        return self.encode(self.inputs.image, "A reference image")

    def off(self, which: ClipInput, like: torch.Tensor) -> torch.Tensor:
        """The off branch's CLIP input: the negative image's features when given, else the usual null input."""
        embeds, negative = self.inputs.image_embeds, self.inputs.image_negative
        if embeds is not None and embeds.negative_features(which) is not None:
            return embeds.negative_features(which)
        if negative is not None:
            return self.encode(negative, "A negative image").features(which)
        clip = self.inputs.clip_vision
        if which == ClipInput.HIDDEN and clip is None:
            raise ValueError(
                "This adapter's null input is a black image's CLIP hidden states: connect clip_vision, or give image "
                "embeds that carry a negative image (BoLID Encode Image's image_negative)."
            )
        return self._once(("null", which), lambda: null_clip_features(clip, which, like))


StyleEmbeds = tuple[torch.Tensor | None, torch.Tensor | None]  # CLIP image embeds, pooled text embedding


def _style_embeds(inputs: SourceInputs, encodings: _Encodings) -> StyleEmbeds:
    """The style parts a FaceStudio adapter fuses with every person's face: encoded once per apply."""
    clip_embeds = None
    if inputs.image is not None or inputs.image_embeds is not None:
        clip_embeds = encodings.references().image_embeds.float().mean(dim=0, keepdim=True)
    text = pooled_text_embedding(inputs.style_prompt) if inputs.style_prompt is not None else None
    return clip_embeds, text


def _combine(inputs: SourceInputs) -> ReferenceCombine | None:
    return None if inputs.unfold_batch else inputs.combine


def _face_tokens(
    adapter: Adapter, inputs: SourceInputs, face: FaceEmbeds, style: StyleEmbeds | None, encodings: _Encodings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity tokens of one person; several photos mixed into one identity (FaceEmbeds.weights) are mixed
    as embeddings, before the projection (FaceStudio's e = sum beta_i e_i)."""
    spec = adapter.spec
    arcface = face.mix(face.arcface)
    if spec.has_fusion:
        return hybrid_face_tokens(adapter, arcface, *style, inputs.style_image_share, _combine(inputs))
    clip_on = clip_off = None
    if spec.kind == AdapterKind.FACEID_PLUS:
        if face.crops is None:
            raise ValueError("These face embeddings kept no face crops; FaceID-Plus needs them for CLIP vision.")
        clip_on = face.mix(encodings.encode(face.crops, "A FaceID-Plus adapter").hidden_states)
        clip_off = encodings.off(ClipInput.HIDDEN, clip_on)
    return face_tokens(adapter, arcface, clip_on, clip_off, inputs.faceid_v2_shortcut, _combine(inputs))


def _tokens(
    adapter: Adapter, source: Source, inputs: SourceInputs, style: StyleEmbeds | None, encodings: _Encodings
) -> tuple[torch.Tensor, torch.Tensor]:
    spec = adapter.spec
    if source == Source.IMAGE:  # by value: a test may hold the enums of a second import of the pack
        on = encodings.references().features(spec.clip_input).float()
        return image_tokens(adapter, on, encodings.off(spec.clip_input, on), _combine(inputs))
    if source == Source.FACE:
        return _face_tokens(adapter, inputs, inputs.face, style, encodings)
    return body_tokens(adapter, inputs.body.c_body, _combine(inputs))


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
    numbers = {"composition weight": inputs.composition_weight, "precise boost": inputs.precise_boost}
    if inputs.composition is not None:
        numbers["composition image weight"] = inputs.composition.weight
    for what, value in numbers.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"The {what} is {value}: give a finite number.")
    if isinstance(inputs.encode_batch_size, bool) or not isinstance(inputs.encode_batch_size, int):
        raise ValueError(f"encode_batch_size is {inputs.encode_batch_size!r}: give a whole number (0: all at once).")
    if inputs.encode_batch_size < 0:
        raise ValueError(f"encode_batch_size is {inputs.encode_batch_size}: give 0 (all at once) or more.")
    if inputs.image is not None and inputs.image_embeds is not None:
        raise ValueError(
            "Both image and image_embeds are connected: the embeds already encode reference images. Disconnect one."
        )
    embeds = inputs.image_embeds
    if embeds is not None and embeds.negative_image_embeds is not None and inputs.image_negative is not None:
        raise ValueError(
            "The image embeds already carry a negative image, and image_negative is connected too: disconnect "
            "image_negative, or encode the embeds without one."
        )
    for what, images in (
        ("image", inputs.image),
        ("image_negative", inputs.image_negative),
        ("the composition image", inputs.composition.image if inputs.composition is not None else None),
    ):
        if images is not None and (images.ndim != 4 or images.shape[0] == 0):
            raise ValueError(f"{what} has shape {tuple(images.shape)}: give an IMAGE batch (n, height, width, 3).")
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
    references = inputs.image if inputs.image is not None else inputs.image_embeds
    given = {Source.IMAGE: references, Source.FACE: inputs.face, Source.BODY: inputs.body}
    if adapter.spec.has_fusion:
        given[Source.IMAGE] = references if Source.IMAGE in supported else None  # the image feeds the fusion too
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
    _check_negative(adapter, inputs, active, regions)
    if inputs.composition is not None and Source.IMAGE not in active:
        raise ValueError("Style & composition needs a style image and an adapter with a reference-image source.")
    sampling = model.get_model_object("model_sampling")
    window = (
        float(sampling.percent_to_sigma(inputs.start_percent)),
        float(sampling.percent_to_sigma(inputs.end_percent)),
    )
    mask = inputs.mask[None] if inputs.mask is not None and inputs.mask.ndim == 2 else inputs.mask
    blocks = transformer_blocks([key for key, _ in attn2_layer_keys(model)])
    encodings = _Encodings(inputs)
    style = _style_embeds(inputs, encodings) if adapter.spec.has_fusion else None
    sources = []
    for source in active:
        if source == Source.IMAGE and inputs.composition is not None:
            sources += _style_and_composition(adapter, inputs, encodings, blocks, window, mask)
            continue
        plan = _plan(inputs, inputs.weights[source], blocks)
        on, off = _tokens(adapter, source, inputs, style, encodings)
        sources.append(_applied(source, on, off, inputs, inputs.weights[source], plan, window, mask, None))
    for number, region in enumerate(regions):
        person = dataclasses.replace(inputs, face=region.face, body=region.body)
        for source, value in ((Source.FACE, region.face), (Source.BODY, region.body)):
            if value is not None:
                plan = _plan(inputs, inputs.weights[source], blocks)
                on, off = _tokens(adapter, source, person, style, encodings)
                sources.append(_applied(source, on, off, inputs, inputs.weights[source], plan, window, None, number))
    layout = RegionLayout(tuple(r.mask for r in regions), inputs.region_background) if regions else None
    return sources, layout


def _check_negative(adapter: Adapter, inputs: SourceInputs, active: list[Source], regions) -> None:
    """A negative image replaces a CLIP input of the off branch: refuse it where no source has one."""
    if inputs.image_negative is None:
        return
    faces = any(region.face is not None for region in regions) or Source.FACE in active
    reads_clip = Source.IMAGE in active or (faces and adapter.spec.kind == AdapterKind.FACEID_PLUS)
    if not reads_clip:
        raise ValueError(
            f"A negative image replaces the CLIP-vision input of the unconditional branch, which this "
            f"{adapter.spec.kind.value} adapter's sources here do not read (only reference images and FaceID-Plus "
            "faces do): disconnect image_negative."
        )


def _plan(
    inputs: SourceInputs,
    weight: float,
    blocks: tuple[TransformerBlock, ...],
    weight_type: WeightType | None = None,
    composition_weight: float | None = None,
) -> LayerPlan | None:
    """One source's weight per attn2 layer; None for a linear spread without layer text (the patch's fast path)."""
    weight_type = inputs.weight_type if weight_type is None else weight_type
    if weight_type == WeightType.LINEAR and not inputs.layer_weights.strip():
        return None
    composition = inputs.composition_weight if composition_weight is None else composition_weight
    return plan_layers(
        weight_type, weight, blocks,
        composition_weight=composition, boost=inputs.precise_boost, layer_weights=inputs.layer_weights,
    )  # fmt: skip


def _style_and_composition(
    adapter: Adapter,
    inputs: SourceInputs,
    encodings: _Encodings,
    blocks: tuple[TransformerBlock, ...],
    window: tuple[float, float],
    mask,
) -> list[AppliedSource]:
    """Two image sources sharing one null input, as IPAdapter_plus's style & composition: the style reference
    planned with its type's style blocks and weight (the composition block at 0), the composition reference with
    the composition block and its weight (every other block at 0). The block sets are disjoint, so the sum is the
    peer's one source whose composition block reads the composition tokens."""
    spec, composition = adapter.spec, inputs.composition
    weight_type = (
        WeightType.STRONG_STYLE_AND_COMPOSITION if composition.expand_style else WeightType.STYLE_AND_COMPOSITION
    )
    style_weight = inputs.weights[Source.IMAGE]
    style_on = encodings.references().features(spec.clip_input).float()
    composition_on = encodings.encode(composition.image, "A composition image").features(spec.clip_input).float()
    sources = []
    for on_features, weight, plan in (
        (style_on, style_weight, _plan(inputs, style_weight, blocks, weight_type, 0.0)),
        (composition_on, composition.weight, _plan(inputs, 0.0, blocks, weight_type, composition.weight)),
    ):
        off_features = encodings.off(spec.clip_input, on_features)
        on, off = image_tokens(adapter, on_features, off_features, _combine(inputs))
        sources.append(_applied(Source.IMAGE, on, off, inputs, weight, plan, window, mask, None))
    return sources


def _applied(
    source: Source,
    on: torch.Tensor,
    off: torch.Tensor,
    inputs: SourceInputs,
    weight: float,
    plan: LayerPlan | None,
    window: tuple[float, float],
    mask,
    region: int | None,
) -> AppliedSource:
    return AppliedSource(
        source, on, off, weight, *window, mask, region=region,
        layer_weights=None if plan is None else plan.weights,
        swapped_layers=frozenset() if plan is None else plan.swapped,
        scaling=inputs.embeds_scaling, unfold=inputs.unfold_batch,
    )  # fmt: skip
