"""The attn2-replace patch that adds adapter sources to ComfyUI's cross-attention layers.

One patch object per layer, registered on a clone of the model. It wraps whatever patch that layer
already had (another adapter, ours or IPAdapter_plus's) without touching it, so patches stack and
the unpatched model never changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import comfy.model_management
import comfy.model_patcher
import torch
from comfy.ldm.modules.attention import BasicTransformerBlock, optimized_attention

from ..adapter.checkpoint import Adapter, AdapterFormatError, Source
from ..adapter.layer_weights import EmbedsScaling, scaled_kv
from ..attention import AttentionManipulation, SourceKV, adapter_attention, block_grid, mask_to_queries
from ..identity.regions import Background, region_weights
from .steps import step_index

LayerKey = tuple[str, int, int]
# Guiders that run several conds publish here which cond indices get each source switched on.
SOURCE_SWITCH_KEY = "bolid_source_switch"


def attn2_layer_keys(model: comfy.model_patcher.ModelPatcher) -> list[tuple[LayerKey, int]]:
    """(patch key, layer width) of every cross-attention layer, in IP-Adapter's order: input, output, middle."""
    unet = model.get_model_object("diffusion_model")
    groups = [("input", unet.input_blocks), ("output", unet.output_blocks), ("middle", [unet.middle_block])]
    keys = []
    for name, blocks in groups:
        for number, block in enumerate(blocks):
            transformer_blocks = [m for m in block.modules() if isinstance(m, BasicTransformerBlock)]
            keys += [((name, number, i), tb.attn2.to_k.out_features) for i, tb in enumerate(transformer_blocks)]
    return keys


@dataclass(frozen=True)
class AppliedSource:
    """One adapter source as applied: tokens with the source on and off, weight (or one per layer), window, mask,
    AM, embeds scaling."""

    source: Source
    tokens_on: torch.Tensor  # (1, tokens, context_dim)
    tokens_off: torch.Tensor  # (1, tokens, context_dim): the null embedding, for unconditional chunks
    weight: float
    sigma_start: float = float("inf")
    sigma_end: float = 0.0
    mask: torch.Tensor | None = None  # (1 or batch, height, width), any resolution
    manipulation: AttentionManipulation | None = None  # FastFace AM of this source's attention map
    switch_name: str = "id"  # the name a guider uses in SOURCE_SWITCH_KEY to switch it per cond
    region: int | None = None  # the identity region whose tokens alone attend to this source (FaceStudio)
    # Per attn2 layer (attn2_layer_keys order), the absolute weight that replaces `weight` there; None: `weight`
    # everywhere. Layers in `swapped_layers` give the ID branch nothing and the null branch the ID tokens.
    layer_weights: tuple[float, ...] | None = None
    swapped_layers: frozenset[int] = frozenset()
    scaling: EmbedsScaling = EmbedsScaling.V_ONLY
    unfold: bool = False  # tokens_on/off hold one reference per latent: latent i of each chunk gets reference i


@dataclass(frozen=True)
class RegionLayout:
    """Where each identity acts: region i's mask (1 or batch, H, W), any resolution, and the rule for tokens
    outside every region. Resolved per block grid into disjoint per-token weights (identity.regions)."""

    masks: tuple[torch.Tensor, ...]
    background: Background = Background.NONE


@dataclass
class AppliedAdapter:
    """An adapter's weights and applied sources, shared by its per-layer patches.

    Caches what does not change across steps: each layer's K/V and each mask on each block grid.
    """

    adapter: Adapter
    sources: list[AppliedSource]
    patcher: comfy.model_patcher.ModelPatcher
    regions: RegionLayout | None = None
    _kv_cache: dict = field(default_factory=dict)

    def kv(
        self, layer: int, index: int, switched_on: bool, like: torch.Tensor, per_chunk: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of one source's tokens at one layer, computed once per device and dtype (and latent batch, for an
        unfolded source). (1, tokens, width); unfolded: (per_chunk, tokens, width), sample i with reference
        min(i, references - 1). The K+V scalings have this layer's weight baked in."""
        applied = self.sources[index]
        rows = per_chunk if applied.unfold else 1
        key = (layer, index, switched_on, like.device, like.dtype, rows)
        if key not in self._kv_cache:
            tokens = applied.tokens_on if switched_on else applied.tokens_off
            if applied.unfold:  # IPAdapter_plus's tensor_to_size: the last reference repeats, extra ones are unused
                tokens = tokens[[min(i, tokens.shape[0] - 1) for i in range(rows)]]
            projection = self.adapter.kv(layer, applied.source)
            weight_k = projection.to_k.weight.to(like.device, like.dtype)
            weight_v = projection.to_v.weight.to(like.device, like.dtype)
            tokens = tokens.to(like.device, like.dtype)
            weight = layer_weight(applied, layer)
            self._kv_cache[key] = scaled_kv(tokens @ weight_k.T, tokens @ weight_v.T, applied.scaling, weight)
        return self._kv_cache[key]

    def batch_kv(
        self, layer: int, index: int, switched: tuple[bool, ...], per_chunk: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V for a whole chunked batch, chunk j with the source switched on as switched[j] says; batch 1 when
        every row gets the same. Made once per batch layout, so a step only looks them up."""
        key = ("batch", layer, index, switched, per_chunk, like.device, like.dtype)
        if key not in self._kv_cache:
            pairs = [self.kv(layer, index, on, like, per_chunk) for on in switched]
            if all(on == switched[0] for on in switched) and pairs[0][0].shape[0] == 1:
                self._kv_cache[key] = pairs[0]
            else:
                keys = torch.cat([k.expand(per_chunk, -1, -1) for k, _ in pairs])
                values = torch.cat([v.expand(per_chunk, -1, -1) for _, v in pairs])
                self._kv_cache[key] = (keys, values)
        return self._kv_cache[key]

    def swap_rows(self, switched: tuple[bool, ...], per_chunk: int, like: torch.Tensor) -> torch.Tensor:
        """(batch,) 1 on the rows of chunks whose source is switched off, 0 elsewhere: on a precise type's swapped
        layer only the null branch, given the ID tokens, attends to the source."""
        key = ("swap_rows", switched, per_chunk, like.device)
        if key not in self._kv_cache:
            rows = torch.tensor([0.0 if on else 1.0 for on in switched], device=like.device)
            self._kv_cache[key] = rows.repeat_interleave(per_chunk)
        return self._kv_cache[key]

    def mask(
        self, index: int, latent_hw: tuple[int, int], queries: int, chunks: int, per_chunk: int, like: torch.Tensor
    ) -> torch.Tensor | None:
        """One source's weight per query on a block's grid, for the whole chunked batch: (1 or chunks x per_chunk,
        queries). Mask j goes to sample j of every chunk. Made once per grid, batch layout and device."""
        applied = self.sources[index]
        if applied.region is not None:
            return self._region_mask(applied.region, latent_hw, queries, chunks, per_chunk, like)
        if applied.mask is None:
            return None
        key = ("mask", index, latent_hw, queries, chunks, per_chunk, like.device)
        if key not in self._kv_cache:
            _check_mask_batch(applied.mask.shape[0], per_chunk, "The adapter's attn_mask")
            on_grid = mask_to_queries(applied.mask.to(like.device), latent_hw, queries)
            self._kv_cache[key] = on_grid if on_grid.shape[0] == 1 else on_grid.repeat(chunks, 1)
        return self._kv_cache[key]

    def _region_mask(
        self, region: int, latent_hw: tuple[int, int], queries: int, chunks: int, per_chunk: int, like: torch.Tensor
    ) -> torch.Tensor:
        key = ("regions", latent_hw, queries, chunks, per_chunk, like.device)
        if key not in self._kv_cache:
            layout = self.regions
            for mask in layout.masks:
                _check_mask_batch(mask.shape[0], per_chunk, "A region mask")
            weights = region_weights(layout.masks, block_grid(latent_hw, queries), layout.background).to(like.device)
            self._kv_cache[key] = weights if weights.shape[1] == 1 else weights.repeat(1, chunks, 1)
        return self._kv_cache[key][region]


def layer_weight(applied: AppliedSource, layer: int) -> float:
    """The source's weight at one attn2 layer: its per-layer weight where it has them, else its weight."""
    return applied.weight if applied.layer_weights is None else applied.layer_weights[layer]


def _check_mask_batch(masks: int, per_chunk: int, what: str) -> None:
    if masks not in (1, per_chunk):
        raise ValueError(
            f"{what} is a batch of {masks} masks but the latent batch is {per_chunk}: give one mask for all "
            f"images, or one mask per image ({per_chunk})."
        )


def _switched_on(extra_options: dict, cond_index: int, switch_name: str) -> bool:
    published = extra_options.get(SOURCE_SWITCH_KEY)
    if published is not None and cond_index in published:
        return bool(published[cond_index].get(switch_name, False))
    return cond_index == 0  # ComfyUI's CFGGuider: 0 is the positive cond, 1 the negative


def wrapped_attention(inner: Callable | None, q, k, v, extra_options: dict) -> torch.Tensor:
    """What the layer computes without our patch: the patch we wrap (another adapter's), or ComfyUI's attention."""
    if inner is not None:
        return inner(q, k, v, extra_options)
    return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))


@dataclass(frozen=True)
class _LayerSource:
    """What one source does at one layer, fixed when the patch is made."""

    index: int
    applied: AppliedSource
    scale: float  # what multiplies the attention output: the weight (V only), else 1 (baked into K/V)
    swapped: bool


class AdapterAttentionPatch:
    def __init__(self, applied: AppliedAdapter, layer: int, inner: Callable | None) -> None:
        self.applied, self.layer, self.inner = applied, layer, inner
        self._layer_sources = []
        for index, source in enumerate(applied.sources):
            weight = layer_weight(source, layer)
            if weight == 0:
                continue
            scale = weight if source.scaling == EmbedsScaling.V_ONLY else 1.0
            self._layer_sources.append(_LayerSource(index, source, scale, layer in source.swapped_layers))
        self._manipulated = any(s.applied.manipulation is not None for s in self._layer_sources)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        out = wrapped_attention(self.inner, q, k, v, extra_options)
        if not self._layer_sources:
            return out
        sources = self._sources(q, extra_options)
        if not sources:
            return out
        return out + adapter_attention(q, sources, heads).to(out.dtype)

    def _sources(self, q: torch.Tensor, extra_options: dict) -> list[SourceKV]:
        chunks = extra_options["cond_or_uncond"]
        per_chunk = q.shape[0] // len(chunks)
        sigmas = extra_options["sigmas"].to(q.device, torch.float32)
        if sigmas.shape[0] != q.shape[0]:  # one sigma per latent: the chunks repeat the latent batch
            sigmas = sigmas.repeat(q.shape[0] // sigmas.shape[0])
        step = step_index(sigmas, extra_options.get("sample_sigmas"))[0] if self._manipulated else 0
        sources = []
        for layer_source in self._layer_sources:
            index, applied = layer_source.index, layer_source.applied
            in_window = (sigmas <= applied.sigma_start) & (sigmas >= applied.sigma_end)
            if not bool(in_window.any()):
                continue
            switched = tuple(_switched_on(extra_options, cond_index, applied.switch_name) for cond_index in chunks)
            scale = layer_source.scale * in_window.float()
            if layer_source.swapped:  # the null branch gets the ID tokens; the ID branch gets nothing
                if all(switched):
                    continue
                scale = scale * self.applied.swap_rows(switched, per_chunk, q)
                switched = (True,) * len(chunks)
            key, value = self.applied.batch_kv(self.layer, index, switched, per_chunk, q)
            latent_hw = tuple(extra_options["original_shape"][-2:])
            mask = self.applied.mask(index, latent_hw, q.shape[1], len(chunks), per_chunk, q)
            hook = applied.manipulation.bind(extra_options["block"][0], step) if applied.manipulation else None
            sources.append(SourceKV(key, value, scale, mask, hook, known_active=True))
        return sources

    def to(self, device: torch.device) -> AdapterAttentionPatch:
        if self.inner is not None and hasattr(self.inner, "to"):
            self.inner = self.inner.to(device)
        return self

    def models(self) -> list:
        inner = self.inner.models() if self.inner is not None and hasattr(self.inner, "models") else []
        return [*inner, self.applied.patcher]

    def __deepcopy__(self, memo: dict) -> AdapterAttentionPatch:
        # model.clone() deep-copies model_options: share the weights and K/V cache, never duplicate them.
        return self


def adapter_patcher(adapter: Adapter, load_device: torch.device) -> comfy.model_patcher.ModelPatcher:
    """The adapter's one ModelPatcher for `load_device`, made on first use and reused by every apply.

    A new patcher per apply would leave model management a dead entry for the same live weights each
    time the old one is dropped ("memory leak with model Adapter", and a gc.collect() per model load).
    """
    if load_device not in adapter.host_wrappers:
        adapter.host_wrappers[load_device] = comfy.model_patcher.ModelPatcher(
            adapter, load_device=load_device, offload_device=comfy.model_management.unet_offload_device()
        )
    return adapter.host_wrappers[load_device]


def check_fit(model: comfy.model_patcher.ModelPatcher, adapter: Adapter) -> list[LayerKey]:
    """The model's attn2 keys, after checking the adapter was made for this model's architecture."""
    layers = attn2_layer_keys(model)
    context_dim = model.model.model_config.unet_config.get("context_dim")
    spec = adapter.spec
    if context_dim != spec.context_dim:
        raise AdapterFormatError(
            f"This adapter was made for {spec.base_family} (text width {spec.context_dim}); the model has text "
            f"width {context_dim}. Pick the adapter made for this model family."
        )
    widths = tuple(width for _, width in layers)
    if widths != spec.layer_widths:
        raise AdapterFormatError(
            f"This adapter has {len(spec.layer_widths)} cross-attention layers; the model has {len(widths)} "
            f"(widths differ). It was made for another {spec.base_family} architecture."
        )
    return [key for key, _ in layers]


def apply_adapter(
    model: comfy.model_patcher.ModelPatcher,
    adapter: Adapter,
    sources: list[AppliedSource],
    regions: RegionLayout | None = None,
) -> comfy.model_patcher.ModelPatcher:
    """A clone of `model` whose cross-attention layers also attend to the adapter's sources; sources with a
    region attend only from that region's tokens (and from the background, as `regions.background` says)."""
    keys = check_fit(model, adapter)
    regional = sorted({s.region for s in sources if s.region is not None})
    if regional and (regions is None or regional[-1] >= len(regions.masks)):
        raise ValueError(f"Sources name regions {regional} but {0 if regions is None else len(regions.masks)} given.")
    for source in sources:
        _check_layer_plan(source, len(keys))
    patched = model.clone()
    applied = AppliedAdapter(adapter, sources, adapter_patcher(adapter, model.load_device), regions)
    existing = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for layer, key in enumerate(keys):
        inner = existing.get(key, existing.get(key[:2]))
        patched.set_model_attn2_replace(AdapterAttentionPatch(applied, layer, inner), *key)
    return patched


def _check_layer_plan(source: AppliedSource, layers: int) -> None:
    if source.layer_weights is not None and len(source.layer_weights) != layers:
        raise ValueError(
            f"The {source.source.value} source has {len(source.layer_weights)} per-layer weights but the model has "
            f"{layers} cross-attention layers: plan its layers for this model (plan_layers with its attn2 keys)."
        )
    if any(not 0 <= layer < layers for layer in source.swapped_layers):
        raise ValueError(
            f"The {source.source.value} source swaps layers {sorted(source.swapped_layers)} but the model has "
            f"{layers} cross-attention layers: plan its layers for this model."
        )
    if source.unfold and (source.tokens_on.ndim != 3 or source.tokens_off.ndim != 3):
        raise ValueError("An unfolded source needs tokens shaped (references, tokens, width).")


def with_manipulation(
    model: comfy.model_patcher.ModelPatcher, manipulation: AttentionManipulation, sources: set[Source]
) -> comfy.model_patcher.ModelPatcher:
    """A clone of an adapter-patched `model` whose `sources` have their attention maps manipulated.

    New patch objects, sharing the adapter weights and K/V cache, replace ours at every layer;
    foreign patches they wrap are kept as they are.
    """
    patched = model.clone()
    patches = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    rebuilt: dict[int, AppliedAdapter] = {}
    found = False

    def rewrap(patch):
        nonlocal found
        if not isinstance(patch, AdapterAttentionPatch):
            return patch
        applied = patch.applied
        if id(applied) not in rebuilt:
            updated = [
                dataclasses.replace(s, manipulation=manipulation) if s.source in sources else s for s in applied.sources
            ]
            rebuilt[id(applied)] = dataclasses.replace(applied, sources=updated)
        found = found or any(s.source in sources for s in applied.sources)
        return AdapterAttentionPatch(rebuilt[id(applied)], patch.layer, rewrap(patch.inner))

    for key, patch in list(patches.items()):
        patched.set_model_attn2_replace(rewrap(patch), *key)
    if not found:
        names = ", ".join(sorted(s.value for s in sources))
        raise ValueError(f"No {names} source of an applied adapter in this model: apply an ID adapter first.")
    return patched
