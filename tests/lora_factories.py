"""A tiny stand-in for h94's `ip-adapter-faceid-plusv2_sdxl_lora.safetensors`, with that file's key names.

The published file is the LoRA part of `ip-adapter-faceid-plusv2_sdxl.bin` (the .bin holds it under
`ip_adapter` as `N.to_q_lora.down.weight`, ...), converted to the kohya layout ComfyUI's LoraLoader reads:
`lora_unet_<diffusers module path, dots as underscores>.{lora_down.weight, lora_up.weight, alpha}`, on q, k,
v and out of both attentions (attn1, attn2) of every SDXL transformer block. At rank 128 in fp16 that set
of modules weighs 371.6 MB, the published file's size.

Pure torch (no ComfyUI), like adapter_factories.py, so unit tests and the server fixture both use it.
"""

from __future__ import annotations

import torch

FILE_NAME = "ip-adapter-faceid-plusv2_sdxl_lora.safetensors"
PUBLISHED_RANK = 128
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out_0")
ATTENTIONS = ("attn1", "attn2")

# SDXL's attention-holding diffusers blocks: (attentions, transformer blocks per attention, width over
# model_channels). down_blocks_0 and up_blocks_2 hold no attention.
SDXL_ATTENTION_BLOCKS = {
    "down_blocks_1": (2, 2, 2),
    "down_blocks_2": (2, 10, 4),
    "mid_block": (1, 10, 4),
    "up_blocks_0": (3, 10, 4),
    "up_blocks_1": (3, 2, 2),
}


def lora_modules(blocks: dict[str, tuple[int, int, int]], model_channels: int, context_dim: int) -> dict:
    """Every LoRA module name (no suffix) of a FaceID-Plus-v2 SDXL LoRA -> (in_features, out_features)."""
    modules = {}
    for block, (attentions, depth, width_multiplier) in blocks.items():
        width = model_channels * width_multiplier
        for attention in range(attentions):
            for transformer in range(depth):
                prefix = f"lora_unet_{block}_attentions_{attention}_transformer_blocks_{transformer}"
                for attn in ATTENTIONS:
                    for projection in PROJECTIONS:
                        reads_context = attn == "attn2" and projection in ("to_k", "to_v")
                        modules[f"{prefix}_{attn}_{projection}"] = (context_dim if reads_context else width, width)
    return modules


def tiny_attention_blocks() -> dict[str, tuple[int, int, int]]:
    """The tiny test UNet's layout: SDXL's blocks with one transformer block per attention."""
    return {block: (attentions, 1, width) for block, (attentions, _, width) in SDXL_ATTENTION_BLOCKS.items()}


def faceid_plusv2_sdxl_lora(
    blocks: dict[str, tuple[int, int, int]],
    model_channels: int,
    context_dim: int = 2048,
    rank: int = 4,
    alpha: float = 2.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
) -> dict[str, torch.Tensor]:
    """A LoRA state dict with the published key names, shaped for a UNet with these blocks and width.

    alpha differs from rank on purpose, so a loader that ignores alpha/rank gives different weights.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, (in_features, out_features) in lora_modules(blocks, model_channels, context_dim).items():
        state[f"{name}.lora_down.weight"] = (torch.randn((rank, in_features), generator=generator) * 0.1).to(dtype)
        state[f"{name}.lora_up.weight"] = (torch.randn((out_features, rank), generator=generator) * 0.1).to(dtype)
        state[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
    return state
