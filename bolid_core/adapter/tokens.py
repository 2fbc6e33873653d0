"""Tokens of each adapter source, from its embeddings, for the on (ID) and off (null) branches."""

from __future__ import annotations

import enum
import math

import torch

from .checkpoint import Adapter, AdapterFormatError, AdapterKind, Source


class ReferenceCombine(str, enum.Enum):
    """How several references of one source become one: combined as encoder embeddings (CLIP features, ArcFace,
    body vectors) before the projection, as IPAdapter_plus does, or projected one by one and set side by side."""

    AVERAGE = "average"  # mean of the references
    CONCAT = "concat"  # each reference projected, tokens side by side: more detail, tokens x references
    ADD = "add"  # sum of the references: a stronger reference
    SUBTRACT = "subtract"  # the first reference minus the mean of the others
    NORM_AVERAGE = "norm average"  # mean of the references, each component divided by its norm over the references


def combine_embeddings(embeds: torch.Tensor, mode: ReferenceCombine) -> torch.Tensor:
    """(references, ...) encoder embeddings → (1, ...); unchanged for concat and for a single reference.

    norm average divides every component by its L2 norm over the references (dim 0, as IPAdapter_plus); a component
    that is zero in every reference stays zero instead of becoming 0/0.
    """
    if mode == ReferenceCombine.CONCAT or embeds.shape[0] == 1:
        return embeds
    if mode == ReferenceCombine.ADD:
        return embeds.sum(dim=0, keepdim=True)
    if mode == ReferenceCombine.SUBTRACT:
        return embeds[:1] - embeds[1:].mean(dim=0, keepdim=True)
    if mode == ReferenceCombine.NORM_AVERAGE:
        norms = embeds.norm(dim=0, keepdim=True).clamp_min(torch.finfo(embeds.dtype).tiny)
        return (embeds / norms).mean(dim=0, keepdim=True)
    return embeds.mean(dim=0, keepdim=True)


def side_by_side(tokens: torch.Tensor) -> torch.Tensor:
    """(references, tokens, dim) -> (1, references x tokens, dim): every reference's tokens in one sequence."""
    return tokens.reshape(1, -1, tokens.shape[-1])


def match_references(features: torch.Tensor, count: int) -> torch.Tensor:
    """(m, ...) -> (count, ...): the last row repeats when there are fewer, extra rows are dropped (a negative image
    or null input per reference, as IPAdapter_plus's tensor_to_size)."""
    if features.shape[0] >= count:
        return features[:count]
    return torch.cat([features, features[-1:].expand(count - features.shape[0], *features.shape[1:])])


def _finish(
    project, on_inputs: tuple, off_inputs: tuple, combine: ReferenceCombine | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens on and off from per-reference encoder inputs (on and off already one row per reference).

    combine None: one set of tokens per reference, (n, T, C) for on and off (unfold). Otherwise (1, T', C): the
    references combined as embeddings, the off branch reading its first row (IPAdapter_plus), or, for concat, each
    reference projected and set side by side, on and off alike (they share one batched call)."""
    if combine is None or combine == ReferenceCombine.CONCAT:
        on, off = project(*on_inputs), project(*off_inputs)
        return (on, off) if combine is None else (side_by_side(on), side_by_side(off))
    on = project(*(combine_embeddings(x, combine) for x in on_inputs))
    return on, project(*(x[:1] for x in off_inputs))


def _check_width(found: int, expected: int | None, what: str, fix: str) -> None:
    if expected is not None and found != expected:
        raise AdapterFormatError(f"This adapter expects {what} of width {expected}; got {found}. {fix}")


@torch.no_grad()
def image_tokens(
    adapter: Adapter, clip_on: torch.Tensor, clip_off: torch.Tensor, combine: ReferenceCombine | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference-image tokens from CLIP-vision features (image_embeds or hidden states, as the adapter reads).

    clip_on (n, ...) one row per reference; clip_off the null or negative image's features, (1 or n, ...), matched to
    n. combine None: (n, T, C) tokens on and off, one set per reference; else (1, T', C) as `combine` says.
    """
    spec = adapter.spec
    if Source.IMAGE not in spec.tokens:
        raise AdapterFormatError(f"This {spec.kind.value} adapter has no reference-image source.")
    for features in (clip_on, clip_off):
        _check_width(
            features.shape[-1], spec.clip_dim, f"CLIP-vision {spec.clip_input.value}",
            "Pick the CLIP vision model this adapter was trained with (ViT-H gives 1280-wide hidden states, "
            "ViT-bigG 1664; image embeds are 1024 and 1280).",
        )  # fmt: skip
    projection = adapter.projection(Source.IMAGE)
    clip_off = match_references(clip_off.float(), clip_on.shape[0])
    return _finish(projection, (clip_on.float(),), (clip_off,), combine)


@torch.no_grad()
def face_tokens(
    adapter: Adapter,
    face_embeds: torch.Tensor,
    clip_on: torch.Tensor | None,
    clip_off: torch.Tensor | None,
    shortcut_scale: float = 1.0,
    combine: ReferenceCombine | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity tokens from ArcFace embeddings (and, for FaceID-Plus, CLIP hidden states of the face crops).

    The null face is zeros; FaceID-Plus's off branch reads `clip_off` (a black image's or the negative image's hidden
    states, 1 or n rows). Combining acts on the ArcFace rows and on the crops' CLIP features alike (IPAdapter_plus).
    """
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
    face_embeds = face_embeds.float()
    null_face = torch.zeros_like(face_embeds)
    if spec.kind != AdapterKind.FACEID_PLUS:
        return _finish(projection, (face_embeds,), (null_face,), combine)
    if clip_on is None or clip_off is None:
        raise AdapterFormatError("FaceID-Plus adapters also need a CLIP vision model (ViT-H) for the face crops.")
    for features in (clip_on, clip_off):
        _check_width(features.shape[-1], spec.clip_dim, "CLIP-vision hidden states", "Use the ViT-H CLIP vision model.")
    if clip_on.shape[0] != face_embeds.shape[0]:
        raise ValueError(
            f"{face_embeds.shape[0]} face embeddings but {clip_on.shape[0]} face crops: give one crop per face."
        )
    clip_off = match_references(clip_off.float(), clip_on.shape[0])

    def project(face: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        return projection(face, clip, shortcut_scale)

    return _finish(project, (face_embeds, clip_on.float()), (null_face, clip_off), combine)


@torch.no_grad()
def body_tokens(
    adapter: Adapter, c_body: torch.Tensor, combine: ReferenceCombine | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Body tokens from c_body (one row per body); the null body is the prior mean, zeros."""
    spec = adapter.spec
    if Source.BODY not in spec.tokens:
        raise AdapterFormatError(f"This {spec.kind.value} adapter has no body source: use a BoLID adapter.")
    _check_width(
        c_body.shape[-1], spec.body_dim, "body vectors", "The body encoder and the adapter were trained apart."
    )
    projection = adapter.projection(Source.BODY)
    c_body = c_body.float()
    return _finish(projection, (c_body,), (torch.zeros_like(c_body),), combine)


@torch.no_grad()
def hybrid_face_tokens(
    adapter: Adapter,
    arcface: torch.Tensor,
    clip_embeds: torch.Tensor | None,
    text_embeds: torch.Tensor | None,
    image_share: float,
    combine: ReferenceCombine | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity tokens of a hybrid (FaceStudio) face source, (n, tokens, context_dim) for on and off, or with
    `combine`, (1, T', C).

    arcface (n, face_dim); clip_embeds, CLIP-vision image_embeds of the style image, (n or 1, clip_dim); text_embeds,
    the pooled CLIP text embedding of the style prompt, (n or 1, text_dim). With both, the guidances blend as
    e = image_share·e_i + (1 − image_share)·e_t (FaceStudio, sec. 3.1); with one, that one is used alone.
    The off (null) branch runs the same path on all-zero CLIP, text and ArcFace inputs: FaceStudio trains its
    unconditional branch by dropping the style and face embeddings, and sets the face embedding to zero where
    there is no face.

    Combining several faces acts on what enters the fusion, as for the other adapters: the ArcFace rows, and the
    style rows when there is one per face (a single shared style row stays as it is, so "add" does not multiply the
    style); concat fuses and projects each face and sets the tokens side by side. A mixed identity
    (FaceEmbeds.weights, FaceStudio's e = sum beta_i e_i) arrives here as one row: nothing is left to combine.
    "average" of the ArcFace rows equals averaging the fused embeddings, the fusion being affine.
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
    if combine is not None and combine != ReferenceCombine.CONCAT and faces > 1:
        for embeds, what in ((clip_embeds, "style image embeds"), (text_embeds, "style prompt embeddings")):
            if embeds is not None:
                _rows_for_faces(embeds, faces, what)
        per_face = lambda e: combine_embeddings(e, combine) if e is not None and e.shape[0] == faces else e  # noqa: E731
        arcface, clip_embeds, text_embeds = (per_face(e) for e in (arcface, clip_embeds, text_embeds))
        faces = 1
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
    return (side_by_side(on), side_by_side(off)) if combine is not None else (on, off)


def _rows_for_faces(embeds: torch.Tensor, faces: int, what: str) -> torch.Tensor:
    """One row per face: a single row is shared by all faces."""
    if embeds.ndim != 2 or embeds.shape[0] not in (1, faces):
        raise ValueError(f"The {what} have shape {tuple(embeds.shape)}; give one row, or one row per face ({faces}).")
    return embeds.expand(faces, -1)
