"""IP-Adapter's published projections and its decoupled cross-attention, written plainly from the formulas.

An independent reference for the equivalence tests: it reads the raw checkpoint tensors (`image_proj.*`,
`ip_adapter.N.to_{k,v}_ip.weight`, as in h94's files) and uses only matrix products, sums and exp, never the
pack's modules nor torch.nn layers. Layout facts (key names, shapes) are those of h94/IP-Adapter and
h94/IP-Adapter-FaceID SDXL files:

- plain (ip-adapter_sdxl, ip-adapter_sdxl_vit-h): tokens = LN(reshape(W·e + b, (T, C))), e the CLIP image embeds.
- plus (ip-adapter-plus[-face]_sdxl_vit-h): a perceiver resampler; learned latents (1, 16, 1280) attend to the
  projected penultimate CLIP hidden states; 4 layers, 64-wide heads, feed-forward 4x; output C = 2048.
- FaceID (ip-adapter-faceid_sdxl) and portrait (ip-adapter-faceid-portrait_sdxl, 16 tokens):
  tokens = LN(reshape(W2·GELU(W1·a + b1) + b2, (T, C))), a the ArcFace embedding.
- FaceID-Plus-v2 (ip-adapter-faceid-plusv2_sdxl): the FaceID tokens x refined by a resampler whose latents are x
  itself, over the CLIP hidden states of the face crop; v2 adds the shortcut: x + s·refined.
- Decoupled cross-attention (IP-Adapter, Ye et al. 2023, eq. 5): Z = Attn(Q, K_t, V_t) + λ·Attn(Q, K_ip, V_ip),
  K_ip = c_ip·W_k', V_ip = c_ip·W_v', the ip weights of layer n stored as ip_adapter.{2n+1} with the layers
  ordered input blocks, output blocks, middle block.
"""

from __future__ import annotations

import math

import torch

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which the published models were trained with
PERCEIVER_HEAD_DIM = 64

# SDXL base's cross-attention layers as ComfyUI keys them: (block, block number, index inside the block).
SDXL_INPUT_DEPTHS = {4: 2, 5: 2, 7: 10, 8: 10}
SDXL_OUTPUT_DEPTHS = {0: 10, 1: 10, 2: 10, 3: 2, 4: 2, 5: 2}
SDXL_MIDDLE_DEPTH = 10


def sdxl_attn2_keys() -> list[tuple[str, int, int]]:
    """SDXL's 70 attn2 keys in IP-Adapter's layer order (input, output, middle); ComfyUI's middle block is 0."""
    keys = [("input", block, i) for block, depth in SDXL_INPUT_DEPTHS.items() for i in range(depth)]
    keys += [("output", block, i) for block, depth in SDXL_OUTPUT_DEPTHS.items() for i in range(depth)]
    keys += [("middle", 0, i) for i in range(SDXL_MIDDLE_DEPTH)]
    return keys


# --- building blocks ---------------------------------------------------------------------------------------------


def linear(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    """x·Wᵀ + b."""
    out = x @ state[f"{prefix}.weight"].T
    bias = state.get(f"{prefix}.bias")
    return out if bias is None else out + bias


def layer_norm(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    """(x − mean) / sqrt(var + eps) · γ + β over the last axis, var the biased variance."""
    mean = x.sum(-1, keepdim=True) / x.shape[-1]
    centred = x - mean
    variance = (centred * centred).sum(-1, keepdim=True) / x.shape[-1]
    return centred / torch.sqrt(variance + LAYER_NORM_EPS) * state[f"{prefix}.weight"] + state[f"{prefix}.bias"]


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The exact GELU: x·Φ(x) = x·(1 + erf(x/√2))/2."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def softmax(scores: torch.Tensor) -> torch.Tensor:
    shifted = scores - scores.max(-1, keepdim=True).values
    e = shifted.exp()
    return e / e.sum(-1, keepdim=True)


def attention_per_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q_h·k_hᵀ/√d)·v_h for each head h, written one head at a time; (b, n, h·d) in and out."""
    head_dim = q.shape[-1] // heads
    outputs = []
    for h in range(heads):
        columns = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[..., columns] @ k[..., columns].transpose(-1, -2) / math.sqrt(head_dim)
        outputs.append(softmax(scores) @ v[..., columns])
    return torch.cat(outputs, dim=-1)


def _tokens_from_rows(rows: torch.Tensor, state: dict, norm: str) -> torch.Tensor:
    width = state[f"{norm}.weight"].shape[0]
    return layer_norm(rows.reshape(rows.shape[0], -1, width), state, norm)


# --- projections -------------------------------------------------------------------------------------------------


def plain_tokens(state: dict, clip_embeds: torch.Tensor) -> torch.Tensor:
    """Plain IP-Adapter (ImageProjModel): (n, clip_dim) image embeds -> (n, T, C)."""
    return _tokens_from_rows(linear(clip_embeds, state, "image_proj.proj"), state, "image_proj.norm")


def faceid_tokens(state: dict, arcface: torch.Tensor) -> torch.Tensor:
    """FaceID and FaceID portrait: (n, 512) ArcFace -> (n, T, C); T (4, portrait 16) read from the weights."""
    hidden = gelu(linear(arcface, state, "image_proj.proj.0"))
    return _tokens_from_rows(linear(hidden, state, "image_proj.proj.2"), state, "image_proj.norm")


def resampler(state: dict, prefix: str, inputs: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Perceiver resampler: latents attend to [inputs, latents] in each layer, then a feed-forward; both residual.

    Per layer l: x = LN1(proj_in(inputs)), z = LN2(latents); Q = z·W_q, [K, V] = [x; z]·W_kv (split in halves);
    latents += W_out·concat_h(softmax(Q_h K_hᵀ/√64)·V_h); latents += W_2·GELU(W_1·LN(latents)).
    Output: LN_out(proj_out(latents)).
    """
    inputs = linear(inputs, state, f"{prefix}proj_in")
    layer = 0
    while f"{prefix}layers.{layer}.0.to_q.weight" in state:
        base = f"{prefix}layers.{layer}"
        x = layer_norm(inputs, state, f"{base}.0.norm1")
        z = layer_norm(latents, state, f"{base}.0.norm2")
        q = z @ state[f"{base}.0.to_q.weight"].T
        kv = torch.cat([x, z], dim=1) @ state[f"{base}.0.to_kv.weight"].T
        inner = kv.shape[-1] // 2
        k, v = kv[..., :inner], kv[..., inner:]
        attended = attention_per_head(q, k, v, inner // PERCEIVER_HEAD_DIM)
        latents = latents + attended @ state[f"{base}.0.to_out.weight"].T
        hidden = layer_norm(latents, state, f"{base}.1.0") @ state[f"{base}.1.1.weight"].T
        latents = latents + gelu(hidden) @ state[f"{base}.1.3.weight"].T
        layer += 1
    return layer_norm(linear(latents, state, f"{prefix}proj_out"), state, f"{prefix}norm_out")


def plus_tokens(state: dict, clip_hidden: torch.Tensor) -> torch.Tensor:
    """IP-Adapter plus / plus face: (n, 257, 1280) penultimate hidden states -> (n, 16, C)."""
    latents = state["image_proj.latents"].expand(clip_hidden.shape[0], -1, -1)
    return resampler(state, "image_proj.", clip_hidden, latents)


def faceid_plus_tokens(
    state: dict, arcface: torch.Tensor, clip_hidden: torch.Tensor, shortcut_scale: float, v2: bool = True
) -> torch.Tensor:
    """FaceID-Plus: x = FaceID tokens of the ArcFace embedding, refined over the face crop's CLIP hidden states
    by a resampler with x as latents; v2 returns x + s·refined, v1 the refined tokens alone."""
    x = faceid_tokens(state, arcface)
    refined = resampler(state, "image_proj.perceiver_resampler.", clip_hidden, x)
    return x + shortcut_scale * refined if v2 else refined


# --- decoupled cross-attention -----------------------------------------------------------------------------------


def ip_kv(state: dict, layer: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K_ip and V_ip of layer `layer` (IP-Adapter order): tokens·W_kᵀ, tokens·W_vᵀ from ip_adapter.{2·layer+1}."""
    prefix = f"ip_adapter.{2 * layer + 1}"
    return tokens @ state[f"{prefix}.to_k_ip.weight"].T, tokens @ state[f"{prefix}.to_v_ip.weight"].T


def plain_text_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    return attention_per_head(q, k, v, extra_options["n_heads"])


class PlainDecoupledAttention:
    """An attn2 replace of one layer: text attention plus weight·Attn(Q, K_ip, V_ip), all written per head.

    Each chunk of the batch takes the ID tokens when ComfyUI's cond_or_uncond says it is the positive cond (0)
    and the null tokens otherwise, whatever its position.
    """

    def __init__(
        self,
        state: dict,
        layer: int,
        tokens_on: torch.Tensor,
        tokens_off: torch.Tensor,
        weight: float,
        text_attention=None,
    ) -> None:
        self.kv_on = ip_kv(state, layer, tokens_on)
        self.kv_off = ip_kv(state, layer, tokens_off)
        self.weight = weight
        self.text_attention = text_attention or plain_text_attention  # what the layer computes without an adapter

    def ip_attention(self, q: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        chunks = extra_options["cond_or_uncond"]
        per_chunk = q.shape[0] // len(chunks)
        out = []
        for position, cond_index in enumerate(chunks):
            k_ip, v_ip = self.kv_on if cond_index == 0 else self.kv_off
            q_chunk = q[position * per_chunk : (position + 1) * per_chunk]
            # Several references side by side ("concat"): their tokens form one longer sequence.
            k_ip = k_ip.reshape(1, -1, k_ip.shape[-1]).expand(per_chunk, -1, -1)
            v_ip = v_ip.reshape(1, -1, v_ip.shape[-1]).expand(per_chunk, -1, -1)
            out.append(attention_per_head(q_chunk, k_ip, v_ip, heads))
        return self.weight * torch.cat(out)

    def __call__(self, q, k, v, extra_options):
        return self.text_attention(q, k, v, extra_options) + self.ip_attention(q, extra_options)

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model_options: share the K/V
        return self
