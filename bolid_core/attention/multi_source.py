"""Multi-source decoupled cross-attention (BoLID Body-Condition module; IP-Adapter-style).

    Z' = Attn(Q, K_t, V_t) + sum_s lambda_s * Attn(Q, K_s, V_s)

The text term is left to the host's fused attention. This module adds the adapter terms, reading Q
once for all sources: one score matmul over their concatenated keys, a softmax per source segment,
the per-sample scale and per-query mask folded into the probabilities, and one matmul with the
concatenated values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .manipulation import MapHook


@dataclass(frozen=True)
class SourceKV:
    """One adapter source at one attention layer, already projected to this layer's K and V.

    key, value: (batch, tokens, heads * dim_head), or batch 1 to share across the batch.
    scale: (batch,) lambda_s per sample; 0 switches the source off for that sample.
    mask: optional (batch or 1, queries) weight per query position, e.g. a region mask.
    hook: optional transform of this source's attention map, and AdaIN of its output (FastFace AM).
    """

    key: torch.Tensor
    value: torch.Tensor
    scale: torch.Tensor
    mask: torch.Tensor | None = None
    hook: MapHook | None = None


def _heads(x: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    b, tokens, width = x.shape
    return x.reshape(b, tokens, heads, width // heads).transpose(1, 2).expand(batch, -1, -1, -1)


def adapter_attention(query: torch.Tensor, sources: Sequence[SourceKV], heads: int) -> torch.Tensor:
    """sum_s lambda_s * softmax(Q K_s^T / sqrt(d)) V_s, shaped like `query` (batch, queries, heads*dim)."""
    batch, queries, width = query.shape
    if width % heads:
        raise ValueError(f"Query width {width} is not divisible by {heads} heads.")
    active = [s for s in sources if bool((s.scale != 0).any())]
    if not active:
        return torch.zeros_like(query)
    for source in active:
        if source.key.shape[-1] != width or source.value.shape[-1] != width:
            raise ValueError(
                f"Adapter K/V width {source.key.shape[-1]} does not match this layer's width {width}: "
                "the adapter was made for another model."
            )
    q = _heads(query, batch, heads)
    keys = torch.cat([_heads(s.key.to(query.dtype), batch, heads) for s in active], dim=2)
    values = torch.cat([_heads(s.value.to(query.dtype), batch, heads) for s in active], dim=2)
    scores = (q @ keys.transpose(-1, -2)) * (1.0 / math.sqrt(width // heads))
    sizes = [s.key.shape[1] for s in active]
    joint_probs, joint_values, row_bias = [], [], 0
    for source, segment, value in zip(active, scores.split(sizes, dim=-1), values.split(sizes, dim=2), strict=True):
        probs = segment.softmax(dim=-1)
        weight = source.scale.to(probs.dtype).reshape(-1, 1, 1, 1)
        if source.mask is not None:
            weight = weight * source.mask.to(probs.dtype).reshape(source.mask.shape[0], 1, queries, 1)
        hook = source.hook
        if hook is None:
            joint_probs.append(probs * weight)
        elif hook.output_adain is None:
            joint_probs.append(hook.transform(probs) * weight)
        else:
            manipulated = hook.transform(probs) * weight
            scale, bias = _output_adain_affine(probs * weight, manipulated, value, hook.output_adain)
            joint_probs.append(manipulated * scale)
            row_bias = row_bias + bias
        joint_values.append(value)
    out = (
        (torch.cat(joint_probs, dim=-1) @ torch.cat(joint_values, dim=2)).transpose(1, 2).reshape(batch, queries, width)
    )
    return out + row_bias


def _row_stats(probs: torch.Tensor, value: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) std over channels of each query's output probs @ value, merged across heads,
    from the small factors: sum = P (V 1), sum of squares = P (V V^T) P^T; no pass over the output."""
    total = (probs @ value.sum(dim=-1, keepdim=True)).sum(dim=1, keepdim=True)  # (batch, 1, queries, 1)
    gram = value @ value.transpose(-1, -2)  # (batch, heads, tokens, tokens)
    squares = ((probs @ gram) * probs).sum(dim=-1, keepdim=True).sum(dim=1, keepdim=True)
    mean = total / width
    variance = (squares - width * mean.square()) / (width - 1)
    return mean, variance.clamp_min(0).sqrt()


def _output_adain_affine(original, manipulated, value, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """w * x + (1 - w) * adain(x, original) for x = manipulated @ value is a per-query affine map of x:
    scale * x + bias. Returns scale (batch, 1, queries, 1) for the probabilities and bias (batch, queries, 1)."""
    width = value.shape[1] * value.shape[-1]
    mean, std = _row_stats(manipulated, value, width)
    target_mean, target_std = _row_stats(original, value, width)
    ratio = target_std / std
    usable = torch.isfinite(ratio) & (std > 0)  # a constant row has no std to match: leave it as it is
    ratio = torch.where(usable, ratio, torch.zeros_like(ratio))
    scale = torch.where(usable, weight + (1 - weight) * ratio, torch.ones_like(ratio))
    bias = torch.where(usable, (1 - weight) * (target_mean - mean * ratio), torch.zeros_like(ratio))
    return scale, bias[:, 0]
