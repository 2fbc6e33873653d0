"""Projection models: embeddings of a source -> tokens in the UNet's cross-attention space.

Parameter names follow the checkpoint layouts they load (IP-Adapter's `image_proj.*` and ours), so
state dicts load without renaming. Sizes are read from the checkpoint tensors, not assumed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PERCEIVER_DIM_HEAD = 64  # not recoverable from the weights; every published resampler uses 64
PRIOR_HIDDEN_MULTIPLIER = 2  # text prior hidden width, in units of the CLIP image-embed width


class TokenProjection(nn.Module):
    """One embedding -> `tokens` tokens: Linear, reshape, LayerNorm (IP-Adapter "plain")."""

    def __init__(self, in_dim: int, cross_dim: int, tokens: int) -> None:
        super().__init__()
        self.tokens, self.cross_dim = tokens, cross_dim
        self.proj = nn.Linear(in_dim, cross_dim * tokens)
        self.norm = nn.LayerNorm(cross_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(embeds).reshape(-1, self.tokens, self.cross_dim))


class MLPTokenProjection(nn.Module):
    """Linear-GELU-Linear, reshape, LayerNorm: FaceID's projection of an ArcFace embedding; our body one."""

    def __init__(self, in_dim: int, hidden_dim: int, cross_dim: int, tokens: int) -> None:
        super().__init__()
        self.tokens, self.cross_dim = tokens, cross_dim
        self.proj = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, cross_dim * tokens))
        self.norm = nn.LayerNorm(cross_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(embeds).reshape(-1, self.tokens, self.cross_dim))


class PerceiverAttention(nn.Module):
    """Latents attend to [inputs, latents] (Perceiver / Flamingo resampler block)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        inner = heads * PERCEIVER_DIM_HEAD
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, inputs: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        inputs, latents = self.norm1(inputs), self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([inputs, latents], dim=1)).chunk(2, dim=-1)
        split = lambda t: t.unflatten(-1, (self.heads, PERCEIVER_DIM_HEAD)).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).flatten(2))


def _feed_forward(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, hidden, bias=False), nn.GELU(), nn.Linear(hidden, dim, bias=False)
    )


class PerceiverResampler(nn.Module):
    """Resamples a token sequence into latents: IP-Adapter plus (learned latents) and FaceID-Plus."""

    def __init__(
        self, in_dim: int, dim: int, out_dim: int, depth: int, heads: int, ff_dim: int, num_latents: int = 0
    ) -> None:
        super().__init__()
        if num_latents:
            self.latents = nn.Parameter(torch.zeros(1, num_latents, dim))
        self.proj_in = nn.Linear(in_dim, dim)
        self.proj_out = nn.Linear(dim, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads), _feed_forward(dim, ff_dim)]) for _ in range(depth)
        )

    def forward(self, inputs: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        if latents is None:
            latents = self.latents.expand(inputs.shape[0], -1, -1)
        inputs = self.proj_in(inputs)
        for attention, feed_forward in self.layers:
            latents = latents + attention(inputs, latents)
            latents = latents + feed_forward(latents)
        return self.norm_out(self.proj_out(latents))

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> PerceiverResampler:
        dim = state["proj_in.weight"].shape[0]
        depth = len({key.split(".")[1] for key in state if key.startswith("layers.")})
        return cls(
            in_dim=state["proj_in.weight"].shape[1],
            dim=dim,
            out_dim=state["proj_out.weight"].shape[0],
            depth=depth,
            heads=state["layers.0.0.to_q.weight"].shape[0] // PERCEIVER_DIM_HEAD,
            ff_dim=state["layers.0.1.1.weight"].shape[0],
            num_latents=state["latents"].shape[1] if "latents" in state else 0,
        )


class FaceIDPlusProjection(nn.Module):
    """IP-Adapter FaceID-Plus(-v2): ArcFace tokens refined by a resampler over CLIP-vision hidden states.

    v2 adds the resampler's output to the ArcFace tokens ("shortcut"), scaled by `shortcut_scale`.
    """

    def __init__(self, mlp: MLPTokenProjection, resampler: PerceiverResampler, shortcut: bool) -> None:
        super().__init__()
        self.proj, self.norm = mlp.proj, mlp.norm
        self.tokens, self.cross_dim = mlp.tokens, mlp.cross_dim
        self.perceiver_resampler = resampler
        self.shortcut = shortcut

    def forward(
        self, face_embeds: torch.Tensor, clip_hidden: torch.Tensor, shortcut_scale: float = 1.0
    ) -> torch.Tensor:
        face_tokens = self.norm(self.proj(face_embeds).reshape(-1, self.tokens, self.cross_dim))
        refined = self.perceiver_resampler(clip_hidden, face_tokens)
        return face_tokens + shortcut_scale * refined if self.shortcut else refined


class TextPrior(nn.Module):
    """Maps a pooled CLIP text embedding into the CLIP-vision image-embed space, so a prompt can stand in for a
    style image (FaceStudio, Yan et al. 2023, arXiv:2312.02663, sec. 3.1: the text branch's prior)."""

    def __init__(self, text_dim: int, hidden_dim: int, clip_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, clip_dim)
        )

    def forward(self, text_embeds: torch.Tensor) -> torch.Tensor:
        return self.net(text_embeds)


class HybridIdentityProjection(nn.Module):
    """FaceStudio's hybrid identity embedding (Yan et al. 2023, arXiv:2312.02663, sec. 3.1), then tokens.

    Image branch: e_i = fusion(CLIP-vision(image) ‖ ArcFace(face)).
    Text branch:  e_t = fusion(Prior(CLIP_T(text)) ‖ ArcFace(face)), through the same `fusion` layer.
    The CLIP part comes first in the concatenation, the ArcFace part second.
    """

    def __init__(
        self,
        clip_dim: int,
        face_dim: int,
        fusion_dim: int,
        cross_dim: int,
        tokens: int,
        text_dim: int | None = None,
        prior_hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.clip_dim, self.face_dim, self.fusion_dim = clip_dim, face_dim, fusion_dim
        self.tokens, self.cross_dim = tokens, cross_dim
        self.fusion = nn.Linear(clip_dim + face_dim, fusion_dim)
        prior_hidden_dim = prior_hidden_dim or PRIOR_HIDDEN_MULTIPLIER * clip_dim
        self.prior = TextPrior(text_dim, prior_hidden_dim, clip_dim) if text_dim else None
        self.to_tokens = TokenProjection(fusion_dim, cross_dim, tokens)

    def embed_image(self, clip_embeds: torch.Tensor, arcface: torch.Tensor) -> torch.Tensor:
        """(n, clip_dim) CLIP-vision image embeds and (n, face_dim) ArcFace embeddings -> e_i, (n, fusion_dim)."""
        return self.fusion(torch.cat([clip_embeds, arcface], dim=-1))

    def embed_text(self, text_embeds: torch.Tensor, arcface: torch.Tensor) -> torch.Tensor:
        """(n, text_dim) pooled CLIP text embeddings and (n, face_dim) ArcFace embeddings -> e_t, (n, fusion_dim)."""
        if self.prior is None:
            raise ValueError("This hybrid adapter has no text prior: give it a style image instead of a prompt.")
        return self.fusion(torch.cat([self.prior(text_embeds), arcface], dim=-1))

    def forward(self, identity: torch.Tensor) -> torch.Tensor:
        """(n, fusion_dim) identity embeddings -> (n, tokens, cross_dim)."""
        return self.to_tokens(identity)
