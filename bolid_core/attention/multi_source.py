"""Multi-source decoupled cross-attention (BoLID Body-Condition module; IP-Adapter-style).

    Z' = Attn(Q, K_t, V_t) + sum_s lambda_s * Attn(Q, K_s, V_s)

The text term is left to the host's fused attention. This module adds the adapter terms, reading Q
once for all sources: one score matmul over their concatenated keys, a softmax per source segment,
the per-sample scale and per-query mask folded into the probabilities, and one matmul with the
concatenated values. FastFace's output AdaIN is a per-(batch, head, query) gain and shift computed from
small factors: the gain scales the probabilities, the shift rides in the same matmul as one more column
of probabilities against a value row of ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .manipulation import ADAIN_EPS, MapHook


@dataclass(frozen=True)
class SourceKV:
    """One adapter source at one attention layer, already projected to this layer's K and V.

    key, value: (batch, tokens, heads * dim_head), or batch 1 to share across the batch.
    scale: (batch,) lambda_s per sample; 0 switches the source off for that sample.
    mask: optional (batch or 1, queries) weight per query position, e.g. a region mask.
    hook: optional transform of this source's attention map, and AdaIN of its output (FastFace AM).
    known_active: the caller knows some sample's scale is non-zero, so the check (a device sync on a GPU, once per
        source and layer) is skipped.
    """

    key: torch.Tensor
    value: torch.Tensor
    scale: torch.Tensor
    mask: torch.Tensor | None = None
    hook: MapHook | None = None
    known_active: bool = False


def _heads(x: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    b, tokens, width = x.shape
    return x.reshape(b, tokens, heads, width // heads).transpose(1, 2).expand(batch, -1, -1, -1)


def adapter_attention(query: torch.Tensor, sources: Sequence[SourceKV], heads: int) -> torch.Tensor:
    """sum_s lambda_s * softmax(Q K_s^T / sqrt(d)) V_s, shaped like `query` (batch, queries, heads*dim)."""
    batch, queries, width = query.shape
    if width % heads:
        raise ValueError(f"Query width {width} is not divisible by {heads} heads.")
    active = [s for s in sources if s.known_active or bool((s.scale != 0).any())]
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
    joint_probs, joint_values, shifts = [], [], []
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
            manipulated = hook.transform(probs)
            gain, shift = _output_adain_affine(probs, manipulated, value, hook.output_adain)
            joint_probs.append(manipulated * (gain * weight))
            shifts.append(shift * weight)
        joint_values.append(value)
    if shifts:  # the AdaIN shifts ride in the same matmul: one more "token" whose value row is all ones
        joint_probs.append(sum(shifts[1:], shifts[0]))
        joint_values.append(values.new_ones(()).expand(batch, heads, 1, width // heads))
    return (
        (torch.cat(joint_probs, dim=-1) @ torch.cat(joint_values, dim=2)).transpose(1, 2).reshape(batch, queries, width)
    )


def _head_output_stats(probs, value_means, centred_gram, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std over head_dim of each (batch, head, query) row of probs @ value, from the small
    factors: mean = P m with m each token's value mean; with V_c = V - m, the sum of squared deviations is
    diag(P V_c V_c^T P^T). Centring first avoids the cancellation of sum(x^2) - dim * mean^2."""
    mean = probs @ value_means
    spread = ((probs @ centred_gram) * probs).sum(dim=-1, keepdim=True)
    return mean, (spread.clamp_min(0) / (dim - 1)).sqrt()


def _output_adain_affine(original, manipulated, value, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The output AdaIN w * x + (1 - w) * ((x - mean) * std_orig / (std + 1e-6) + mean_orig), for x =
    manipulated @ value and stats over head_dim per (batch, head, query), is gain * x + shift per row.
    Returns gain, which scales the probabilities, and shift, both (batch, heads, queries, 1). As in the
    authors' code, any NaN in the result falls back to x itself (checked without a host sync)."""
    dim = value.shape[-1]
    value_means = value.mean(dim=-1, keepdim=True)
    centred = value - value_means
    centred_gram = centred @ centred.transpose(-1, -2)  # (batch, heads, tokens, tokens)
    mean, std = _head_output_stats(manipulated, value_means, centred_gram, dim)
    target_mean, target_std = _head_output_stats(original, value_means, centred_gram, dim)
    ratio = target_std / (std + ADAIN_EPS)
    gain = weight + (1 - weight) * ratio
    shift = (1 - weight) * (target_mean - mean * ratio)
    broken = (gain + shift).isnan().any()
    return torch.where(broken, 1.0, gain), torch.where(broken, 0.0, shift)
