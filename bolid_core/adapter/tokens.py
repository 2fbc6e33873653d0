"""Tokens of each adapter source, from its embeddings, for the on (ID) and off (null) branches."""

from __future__ import annotations

import enum

import torch

from .checkpoint import Adapter, AdapterFormatError, AdapterKind, Source


class ReferenceCombine(str, enum.Enum):
    """How several references of one source become one set of tokens."""

    AVERAGE = "average"  # mean of the tokens: one blended identity, same token count
    CONCAT = "concat"  # all tokens side by side: more detail, tokens x references


def combine_references(tokens: torch.Tensor, mode: ReferenceCombine) -> torch.Tensor:
    """(references, tokens, dim) -> (1, tokens or references x tokens, dim)."""
    if mode is ReferenceCombine.AVERAGE:
        return tokens.mean(dim=0, keepdim=True)
    return tokens.reshape(1, -1, tokens.shape[-1])


def _check_width(found: int, expected: int | None, what: str, fix: str) -> None:
    if expected is not None and found != expected:
        raise AdapterFormatError(f"This adapter expects {what} of width {expected}; got {found}. {fix}")


@torch.no_grad()
def image_tokens(adapter: Adapter, clip_on: torch.Tensor, clip_off: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference-image tokens from CLIP-vision features (image_embeds or hidden states, as the adapter reads)."""
    spec = adapter.spec
    if Source.IMAGE not in spec.tokens:
        raise AdapterFormatError(f"This {spec.kind.value} adapter has no reference-image source.")
    _check_width(
        clip_on.shape[-1], spec.clip_dim, f"CLIP-vision {spec.clip_input.value}",
        "Pick the CLIP vision model this adapter was trained with (ViT-H gives 1280-wide hidden states, "
        "ViT-bigG 1664; image embeds are 1024 and 1280).",
    )  # fmt: skip
    projection = adapter.projection(Source.IMAGE)
    return projection(clip_on.float()), projection(clip_off.float())


@torch.no_grad()
def face_tokens(
    adapter: Adapter,
    face_embeds: torch.Tensor,
    clip_on: torch.Tensor | None,
    clip_off: torch.Tensor | None,
    shortcut_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity tokens from ArcFace embeddings (and, for FaceID-Plus, CLIP hidden states of the face crops)."""
    spec = adapter.spec
    if Source.FACE not in spec.tokens:
        raise AdapterFormatError(f"This {spec.kind.value} adapter has no face source.")
    _check_width(face_embeds.shape[-1], spec.face_dim, "face embeddings", "Use ArcFace (insightface) embeddings.")
    projection = adapter.projection(Source.FACE)
    null_face = torch.zeros_like(face_embeds)
    if spec.kind is not AdapterKind.FACEID_PLUS:
        return projection(face_embeds.float()), projection(null_face.float())
    if clip_on is None or clip_off is None:
        raise AdapterFormatError("FaceID-Plus adapters also need a CLIP vision model (ViT-H) for the face crops.")
    _check_width(clip_on.shape[-1], spec.clip_dim, "CLIP-vision hidden states", "Use the ViT-H CLIP vision model.")
    on = projection(face_embeds.float(), clip_on.float(), shortcut_scale)
    off = projection(null_face.float(), clip_off.float().expand(clip_on.shape[0], -1, -1), shortcut_scale)
    return on, off


@torch.no_grad()
def body_tokens(adapter: Adapter, c_body: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Body tokens from c_body; the null body is the prior mean, zeros."""
    spec = adapter.spec
    if Source.BODY not in spec.tokens:
        raise AdapterFormatError(f"This {spec.kind.value} adapter has no body source: use a BoLID adapter.")
    _check_width(
        c_body.shape[-1], spec.body_dim, "body vectors", "The body encoder and the adapter were trained apart."
    )
    projection = adapter.projection(Source.BODY)
    return projection(c_body.float()), projection(torch.zeros_like(c_body).float())
