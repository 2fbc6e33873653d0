"""Tiny SDXL-shaped MODEL, CLIP and VAE built from ComfyUI's own classes with seeded random weights.

They have SDXL's interfaces (4 latent channels, 8x VAE scale, 2048-wide context, 1280-wide pooled
output, 2816 ADM inputs, SDXL's attn2 block layout) at a size that samples in well under a second on
a CPU. Nothing is downloaded: the tokenizer is the one ComfyUI ships.
"""

from __future__ import annotations

import json
import math
import tempfile
import types

import comfy.clip_vision
import comfy.ldm.models.autoencoder
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sdxl_clip
import comfy.supported_models
import torch

# SDXL's unet config (comfy/model_detection.py) at model_channels 32 and one transformer per level.
TINY_UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 1, 1, 1, 1],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# Same widths as SDXL's CLIP-L and CLIP-G (768 + 1280 = 2048 context), three layers each so the
# penultimate-layer outputs SDXL uses exist (ComfyUI wants |layer_idx| < layers).
_TINY_TEXT_LAYERS = {"num_hidden_layers": 3, "intermediate_size": 64}
# SDXL base's real UNet (comfy/model_detection.py), for benchmarks: 2.6 B parameters, 70 attn2 layers.
FULL_UNET_CONFIG = {
    **TINY_UNET_CONFIG,
    "model_channels": 320,
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_middle": 10,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
}

TINY_CLIP_OPTIONS = {"clip_l_model_config": _TINY_TEXT_LAYERS, "clip_g_model_config": _TINY_TEXT_LAYERS}

TINY_VAE_CONFIG = {
    "params": {
        "embed_dim": 4,
        "ddconfig": {
            "double_z": True,
            "z_channels": 4,
            "resolution": 256,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 32,
            "ch_mult": [1, 1, 1, 1],
            "num_res_blocks": 1,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
    }
}


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter with seeded values scaled by fan-in, so activations stay O(1).

    ComfyUI's layers skip initialisation (their weights are meant to be loaded), so a model built
    from its classes holds uninitialised memory until this runs. Filled in place: no copies, so
    a full-size SDXL UNet initialises within its own memory.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if param.ndim >= 2:
            param.normal_(0.0, 1.0 / math.sqrt(math.prod(param.shape[1:])), generator=generator)
        elif name.endswith("bias"):
            param.zero_()
        elif "norm" in name:
            param.fill_(1.0)
        else:
            param.normal_(0.0, 0.02, generator=generator)
    return module.requires_grad_(False)


def sdxl_model(unet_config: dict, seed: int, dtype: torch.dtype = torch.float32) -> comfy.model_patcher.ModelPatcher:
    """An SDXL model of any size from ComfyUI's classes, seeded random weights, in a real ModelPatcher."""
    model_config = comfy.supported_models.SDXL(unet_config)
    model_config.set_inference_dtype(dtype, None)
    model = comfy.model_base.SDXL(model_config, device="cpu")
    randomize_(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def tiny_sdxl_model(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    return sdxl_model(TINY_UNET_CONFIG, seed)


def tiny_sdxl_clip(seed: int = 1) -> comfy.sd.CLIP:
    target = types.SimpleNamespace(
        clip=comfy.sdxl_clip.SDXLClipModel, tokenizer=comfy.sdxl_clip.SDXLTokenizer, params={}
    )
    clip = comfy.sd.CLIP(target, model_options={**TINY_CLIP_OPTIONS, "dtype": torch.float32})
    randomize_(clip.cond_stage_model, seed)
    return clip


def tiny_sdxl_vae(seed: int = 2) -> comfy.sd.VAE:
    autoencoder = comfy.ldm.models.autoencoder.AutoencoderKL(**TINY_VAE_CONFIG["params"])
    state_dict = randomize_(autoencoder, seed).state_dict()
    return comfy.sd.VAE(sd=state_dict, config=TINY_VAE_CONFIG, dtype=torch.float32)


# ViT-H's widths (1280 hidden, 1024 image embeds) at 56 px, 2 layers (so the penultimate layer exists).
TINY_CLIP_VISION_CONFIG = {
    "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1280, "image_size": 56,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model", "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 2,
    "patch_size": 14, "projection_dim": 1024, "torch_dtype": "float32",
}  # fmt: skip


def tiny_clip_vision(seed: int = 3, projection_dim: int | None = None) -> comfy.clip_vision.ClipVisionModel:
    with tempfile.TemporaryDirectory() as folder:
        config = f"{folder}/clip_vision_config.json"
        with open(config, "w") as file:
            overrides = {} if projection_dim is None else {"projection_dim": projection_dim}
            json.dump({**TINY_CLIP_VISION_CONFIG, **overrides}, file)
        clip_vision = comfy.clip_vision.ClipVisionModel(config)
    randomize_(clip_vision.model, seed)
    return clip_vision


def tiny_conditioning(seed: int, tokens: int = 77) -> list:
    """SDXL-shaped conditioning without a text encoder: (1, tokens, 2048) plus a 1280 pooled output."""
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn((1, tokens, 2048), generator=generator)
    pooled = torch.randn((1, 1280), generator=generator)
    return [[context, {"pooled_output": pooled}]]
