"""Tiny, seeded diffusers SDXL models and folders for the diffusers host and CLI tests; nothing is downloaded.

The UNet has SDXL's layout (no attention at the first level, one transformer per res block at the others, a
cross-attention mid block, "text_time" added conditioning) at small widths. `comfy_twin_unet` builds the same
layout at SDXL's real conditioning widths (2048 context, 2816 ADM inputs) to mirror the ComfyUI tiny SDXL model
(tests/comfy_nodes/bolid_test_models/tiny_models.TINY_UNET_CONFIG).
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import torch
import transformers

TEXT_WIDTHS = (32, 48)  # CLIP-L and CLIP-G stand-ins: context = 80 wide, pooled = 48
TOKENS = 16
TIME_EMBED_DIM = 8  # per SDXL time id (SDXL: 256)
CLIP_VISION_EMBEDS = 24
VAE_SCALING = 0.13025  # SDXL's


def unet_config(context_dim: int, pooled_dim: int, time_embed_dim: int, channels=(16, 32, 64), groups: int = 8) -> dict:
    return {
        "sample_size": 8, "in_channels": 4, "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": channels, "layers_per_block": 2, "transformer_layers_per_block": 1,
        "attention_head_dim": (1, 1, 2),  # diffusers reads it as heads per level
        "cross_attention_dim": context_dim, "use_linear_projection": True, "norm_num_groups": groups,
        "addition_embed_type": "text_time", "addition_time_embed_dim": time_embed_dim,
        "projection_class_embeddings_input_dim": 6 * time_embed_dim + pooled_dim,
    }  # fmt: skip


def tiny_unet(seed: int = 0) -> diffusers.UNet2DConditionModel:
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(**unet_config(sum(TEXT_WIDTHS), TEXT_WIDTHS[1], TIME_EMBED_DIM)).eval()


def comfy_twin_unet() -> diffusers.UNet2DConditionModel:
    """The ComfyUI tiny SDXL UNet's diffusers counterpart (weights to be copied in)."""
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**unet_config(2048, 1280, 256, (32, 64, 128), 32)).eval()


def tiny_vae(seed: int = 1) -> diffusers.AutoencoderKL:
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
        sample_size=64, scaling_factor=VAE_SCALING,
    ).eval()  # fmt: skip


def sdxl_scheduler() -> diffusers.DDPMScheduler:
    return diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", clip_sample=False,
    )  # fmt: skip


def tiny_tokenizer() -> transformers.CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[char] = len(vocab)
        vocab[f"{char}</w>"] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKENS)


def _text_config(width: int, vocab_size: int) -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=3,
        num_attention_heads=2, max_position_embeddings=TOKENS, projection_dim=width, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )  # fmt: skip


def tiny_clip_vision(seed: int = 4) -> transformers.CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    config = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
        patch_size=14, projection_dim=CLIP_VISION_EMBEDS,
    )  # fmt: skip
    return transformers.CLIPVisionModelWithProjection(config).eval()


def write_tiny_sdxl(folder: Path) -> Path:
    """A complete SDXL diffusers folder at tiny widths, seeded: the same weights every call."""
    folder = Path(folder)
    tokenizer = tiny_tokenizer()
    tiny_unet().save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    torch.manual_seed(2)
    transformers.CLIPTextModel(_text_config(TEXT_WIDTHS[0], len(tokenizer))).save_pretrained(folder / "text_encoder")
    torch.manual_seed(3)
    encoder_2 = transformers.CLIPTextModelWithProjection(_text_config(TEXT_WIDTHS[1], len(tokenizer)))
    encoder_2.save_pretrained(folder / "text_encoder_2")
    tokenizer.save_pretrained(folder / "tokenizer")
    tokenizer.save_pretrained(folder / "tokenizer_2")
    sdxl_scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    return folder


def write_tiny_clip_vision(folder: Path) -> Path:
    tiny_clip_vision().save_pretrained(folder)
    return Path(folder)


def write_tiny_full_clip(folder: Path) -> Path:
    """A full CLIP model (both towers, shared projection width) with its tokenizer: L_CLIP's scorer."""
    tokenizer = tiny_tokenizer()
    text = {
        "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": TOKENS, "bos_token_id": 0, "eos_token_id": 1,
        "pad_token_id": 1,
    }  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 28, "patch_size": 14}  # fmt: skip
    torch.manual_seed(6)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=CLIP_VISION_EMBEDS)
    transformers.CLIPModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
