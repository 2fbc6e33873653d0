"""Synthetic IP-Adapter checkpoints with the published key layouts, at any (small) size."""

from __future__ import annotations

import torch

# The SDXL layout at tiny sizes: 11 attn2 layers of the tiny UNet (64- and 128-wide levels).
TINY_SDXL_WIDTHS = (64, 64, 128, 128, 128, 128, 128, 64, 64, 64, 128)
# Those layers' keys in attn2_layer_keys order (input, output, middle), and each one's transformer block (the
# forward order, where the middle block comes fourth), written out by hand.
TINY_SDXL_ATTN2_KEYS = [
    ("input", 4, 0), ("input", 5, 0), ("input", 7, 0), ("input", 8, 0),
    ("output", 0, 0), ("output", 1, 0), ("output", 2, 0), ("output", 3, 0), ("output", 4, 0), ("output", 5, 0),
    ("middle", 0, 0),
]  # fmt: skip
TINY_SDXL_BLOCK_OF_LAYER = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 4]


def _randn(generator: torch.Generator, *shape: int, scale: float = 0.05) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * scale


def _layer_norm(state: dict, prefix: str, dim: int, generator: torch.Generator) -> None:
    state[f"{prefix}.weight"] = 1 + _randn(generator, dim)
    state[f"{prefix}.bias"] = _randn(generator, dim)


def _perceiver(state: dict, prefix: str, g, in_dim: int, dim: int, out_dim: int, depth: int, heads: int) -> None:
    inner = heads * 64
    state[f"{prefix}proj_in.weight"] = _randn(g, dim, in_dim)
    state[f"{prefix}proj_in.bias"] = _randn(g, dim)
    state[f"{prefix}proj_out.weight"] = _randn(g, out_dim, dim)
    state[f"{prefix}proj_out.bias"] = _randn(g, out_dim)
    _layer_norm(state, f"{prefix}norm_out", out_dim, g)
    for layer in range(depth):
        base = f"{prefix}layers.{layer}"
        _layer_norm(state, f"{base}.0.norm1", dim, g)
        _layer_norm(state, f"{base}.0.norm2", dim, g)
        state[f"{base}.0.to_q.weight"] = _randn(g, inner, dim)
        state[f"{base}.0.to_kv.weight"] = _randn(g, 2 * inner, dim)
        state[f"{base}.0.to_out.weight"] = _randn(g, dim, inner)
        _layer_norm(state, f"{base}.1.0", dim, g)
        state[f"{base}.1.1.weight"] = _randn(g, 4 * dim, dim)
        state[f"{base}.1.3.weight"] = _randn(g, dim, 4 * dim)


def kv_layers(state: dict, g, context_dim: int, widths: tuple[int, ...], with_lora: bool) -> None:
    """Each attn2 layer's to_k_ip / to_v_ip weights (std 0.1), and FaceID's LoRA weight beside them."""
    for layer, width in enumerate(widths):
        index = 2 * layer + 1  # attn2 processors are the odd entries of diffusers' attn_processors
        state[f"ip_adapter.{index}.to_k_ip.weight"] = _randn(g, width, context_dim, scale=0.1)
        state[f"ip_adapter.{index}.to_v_ip.weight"] = _randn(g, width, context_dim, scale=0.1)
        if with_lora:  # FaceID files carry their LoRA next to the K/V weights; adapters ignore it
            state[f"ip_adapter.{index - 1}.to_q_lora.down.weight"] = _randn(g, 4, width)


def plain_ip_adapter(context_dim=2048, widths=TINY_SDXL_WIDTHS, clip_dim=1280, tokens=4, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {
        "image_proj.proj.weight": _randn(g, tokens * context_dim, clip_dim),
        "image_proj.proj.bias": _randn(g, tokens * context_dim),
    }
    _layer_norm(state, "image_proj.norm", context_dim, g)
    kv_layers(state, g, context_dim, widths, with_lora=False)
    return state


def plus_ip_adapter(
    context_dim=2048, widths=TINY_SDXL_WIDTHS, clip_dim=1280, dim=128, queries=16, depth=2, seed=0
) -> dict:
    """ip-adapter-plus's layout: learned latents and a perceiver resampler of `depth` layers, dim // 64 heads."""
    g = torch.Generator().manual_seed(seed)
    state = {"image_proj.latents": _randn(g, 1, queries, dim, scale=1.0)}
    _perceiver(state, "image_proj.", g, clip_dim, dim, context_dim, depth=depth, heads=dim // 64)
    kv_layers(state, g, context_dim, widths, with_lora=False)
    return state


def faceid_plus_v2(context_dim=128, widths=(64, 128), clip_dim=96, face_dim=512, tokens=4, depth=2, seed=0) -> dict:
    """ip-adapter-faceid-plusv2_sdxl's layout: image_proj.{proj.0, proj.2, norm, perceiver_resampler.*}."""
    g = torch.Generator().manual_seed(seed)
    state = _faceid_mlp(g, context_dim, face_dim, tokens)
    heads = context_dim // 64
    _perceiver(state, "image_proj.perceiver_resampler.", g, clip_dim, context_dim, context_dim, depth, heads)
    kv_layers(state, g, context_dim, widths, with_lora=True)
    return state


def _faceid_mlp(g: torch.Generator, context_dim: int, face_dim: int, tokens: int) -> dict:
    """FaceID's image_proj.{proj.0, proj.2, norm}: ArcFace embedding -> tokens."""
    state = {
        "image_proj.proj.0.weight": _randn(g, 2 * face_dim, face_dim),
        "image_proj.proj.0.bias": _randn(g, 2 * face_dim),
        "image_proj.proj.2.weight": _randn(g, tokens * context_dim, 2 * face_dim),
        "image_proj.proj.2.bias": _randn(g, tokens * context_dim),
    }
    _layer_norm(state, "image_proj.norm", context_dim, g)
    return state


def nested(state: dict) -> dict:
    """The .bin layout: {"image_proj": {...}, "ip_adapter": {...}}."""
    tree: dict = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        group, rest = key.split(".", 1)
        tree[group][rest] = value
    return tree


def faceid_ip_adapter(context_dim=2048, widths=TINY_SDXL_WIDTHS, face_dim=512, tokens=4, seed=0) -> dict:
    """ip-adapter-faceid_sdxl's layout: an MLP from the ArcFace embedding, no CLIP vision."""
    g = torch.Generator().manual_seed(seed)
    state = _faceid_mlp(g, context_dim, face_dim, tokens)
    kv_layers(state, g, context_dim, widths, with_lora=True)
    return state
