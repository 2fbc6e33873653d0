"""Small random BoLID adapters with a hybrid (FaceStudio) face source, for tests of every tier."""

from __future__ import annotations

import torch
from adapter_factories import TINY_SDXL_WIDTHS

from bolid_core.adapter import Adapter, AdapterKind, AdapterSpec, ClipInput, Source, new_bolid_adapter

TINY_CLIP_EMBED_DIM = 1024  # image_embeds of the tiny CLIP-vision test model (ViT-H's width)
ARCFACE_DIM = 512
BODY_DIM = 756
POOLED_TEXT_DIM = 1280  # SDXL CONDITIONING pooled_output (CLIP-G)


def hybrid_spec(
    *,
    image: bool = True,
    body: bool = True,
    text_prior: bool = True,
    context_dim: int = 2048,
    widths: tuple[int, ...] = TINY_SDXL_WIDTHS,
    clip_dim: int = TINY_CLIP_EMBED_DIM,
    face_dim: int = ARCFACE_DIM,
    body_dim: int = BODY_DIM,
    text_dim: int = POOLED_TEXT_DIM,
    fusion_dim: int = 64,
    tokens: int = 4,
) -> AdapterSpec:
    """Sources {IMAGE?, FACE (hybrid), BODY?}, reading CLIP-vision image_embeds."""
    sources = {Source.IMAGE: tokens} if image else {}
    sources[Source.FACE] = tokens
    if body:
        sources[Source.BODY] = tokens
    return AdapterSpec(
        AdapterKind.BOLID, context_dim, widths, sources,
        clip_dim=clip_dim, clip_input=ClipInput.EMBEDS, face_dim=face_dim,
        body_dim=body_dim if body else None, fusion_dim=fusion_dim, text_dim=text_dim if text_prior else None,
    )  # fmt: skip


def hybrid_adapter(seed: int = 0, std: float = 0.05, **spec_options) -> Adapter:
    """A hybrid_spec(**spec_options) adapter with every weight drawn from N(0, std²), reproducibly from `seed`."""
    adapter = new_bolid_adapter(hybrid_spec(**spec_options))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return adapter.eval().requires_grad_(False)
