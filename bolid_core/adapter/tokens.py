"""Tokens of each adapter source, from its embeddings, for the on (ID) and off (null) branches."""

from __future__ import annotations

import enum
import math

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
    if spec.has_fusion:
        raise AdapterFormatError(
            "This BoLID adapter fuses the face with a style (FaceStudio): build its tokens with "
            "hybrid_face_tokens and give it a style image's CLIP image embeds or a style prompt."
        )
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


@torch.no_grad()
def hybrid_face_tokens(
    adapter: Adapter,
    arcface: torch.Tensor,
    clip_embeds: torch.Tensor | None,
    text_embeds: torch.Tensor | None,
    image_share: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity tokens of a hybrid (FaceStudio) face source, (n, tokens, context_dim) for on and off.

    arcface (n, face_dim); clip_embeds, CLIP-vision image_embeds of the style image, (n or 1, clip_dim); text_embeds,
    the pooled CLIP text embedding of the style prompt, (n or 1, text_dim). With both, the guidances blend as
    e = image_share·e_i + (1 − image_share)·e_t (FaceStudio, sec. 3.1); with one, that one is used alone.
    The off (null) branch runs the same path on all-zero CLIP, text and ArcFace inputs: FaceStudio trains its
    unconditional branch by dropping the style and face embeddings, and sets the face embedding to zero where
    there is no face.
    """
    spec = adapter.spec
    if not spec.has_fusion:
        raise AdapterFormatError(
            f"This {spec.kind.value} adapter has no hybrid face source; use face_tokens for its face input."
        )
    if not math.isfinite(image_share) or not 0.0 <= image_share <= 1.0:
        raise ValueError(f"The image share is {image_share}: give a number from 0 (prompt only) to 1 (image only).")
    if clip_embeds is None and text_embeds is None:
        raise ValueError(
            "This hybrid adapter fuses the face with a style: connect a style image (clip_vision + image) "
            "or a style prompt."
        )
    projection = adapter.projection(Source.FACE)
    if arcface.ndim != 2 or arcface.shape[0] == 0:
        raise ValueError(f"The face embeddings have shape {tuple(arcface.shape)}; give (faces, width) ArcFace rows.")
    _check_width(arcface.shape[-1], spec.face_dim, "face embeddings", "Use ArcFace (insightface) embeddings.")
    faces = arcface.shape[0]
    if clip_embeds is not None:
        _check_width(
            clip_embeds.shape[-1], spec.clip_dim, "CLIP-vision image_embeds",
            "Pick the CLIP vision model this adapter was trained with (ViT-H gives 1024, ViT-bigG 1280).",
        )  # fmt: skip
        clip_embeds = _rows_for_faces(clip_embeds.float(), faces, "style image embeds")
    if text_embeds is not None:
        if projection.prior is None:
            raise AdapterFormatError(
                "This hybrid adapter has no text prior, so a style prompt cannot stand in for the style image: "
                "connect a style image (clip_vision + image) instead."
            )
        _check_width(
            text_embeds.shape[-1], spec.text_dim, "pooled CLIP text embeddings",
            "Use the SDXL CLIP whose pooled output this adapter's prior was trained on (CLIP-G: 1280).",
        )  # fmt: skip
        text_embeds = _rows_for_faces(text_embeds.float(), faces, "style prompt embeddings")

    def identity(face: torch.Tensor, clip: torch.Tensor | None, text: torch.Tensor | None) -> torch.Tensor:
        e_i = projection.embed_image(clip, face) if clip is not None else None
        e_t = projection.embed_text(text, face) if text is not None else None
        if e_t is None:
            return e_i
        if e_i is None:
            return e_t
        return image_share * e_i + (1.0 - image_share) * e_t

    def zeros(like: torch.Tensor | None) -> torch.Tensor | None:
        return None if like is None else torch.zeros_like(like)

    arcface = arcface.float()
    on = projection(identity(arcface, clip_embeds, text_embeds))
    off = projection(identity(torch.zeros_like(arcface), zeros(clip_embeds), zeros(text_embeds)))
    return on, off


def _rows_for_faces(embeds: torch.Tensor, faces: int, what: str) -> torch.Tensor:
    """One row per face: a single row is shared by all faces."""
    if embeds.ndim != 2 or embeds.shape[0] not in (1, faces):
        raise ValueError(f"The {what} have shape {tuple(embeds.shape)}; give one row, or one row per face ({faces}).")
    return embeds.expand(faces, -1)
