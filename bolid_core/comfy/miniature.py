"""The miniature base model in ComfyUI: MODEL, CLIP and VAE built with ComfyUI's own classes from the one-file form
(bolid_core.miniature.models.export_base), holding the same weights the diffusers training host trained.

- MODEL: ComfyUI's SDXL model config and model class, whose ADM always carries the training micro-conditioning
  (original = target = 64x64, crop 0), whatever size the conditioning or the latent says.
- CLIP: ComfyUI's SDXLClipModel and SDXLTokenizer with CLIP-L and CLIP-G at the file's widths; CLIP-G's projection is
  widened to SDXL's 1280 pooled width (ComfyUI builds it square, hidden -> hidden).
- VAE: ComfyUI's AutoencoderKL with an explicit config, 4x down- and upscaling.
"""

from __future__ import annotations

import os
import re
import types

import comfy.diffusers_convert
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sdxl_clip
import comfy.supported_models
import comfy.utils
import torch

from ..miniature.models import IMAGE_SIZE, MiniatureFileError, read_base

SDXL_HEAD_CHANNELS = 64
POOLED_WIDTH_OPTION = "bolid_miniature_pooled_width"
_TEXT_MODELS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}
# CLIPTextConfig fields ComfyUI's CLIP text model reads (comfy/clip_model.py).
_TEXT_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act", "vocab_size",
    "max_position_embeddings", "eos_token_id",
)  # fmt: skip


class MiniatureSDXL(comfy.model_base.SDXL):
    """SDXL whose time ids are always the miniature's training ones: 64x64 original and target, crop (0, 0)."""

    def encode_adm(self, **kwargs):
        training_size = {
            "width": IMAGE_SIZE, "height": IMAGE_SIZE, "crop_w": 0, "crop_h": 0, "target_width": IMAGE_SIZE,
            "target_height": IMAGE_SIZE,
        }  # fmt: skip
        return super().encode_adm(**{**kwargs, **training_size})


class MiniatureClipModel(comfy.sdxl_clip.SDXLClipModel):
    """SDXLClipModel whose CLIP-G projects its pooled output to SDXL's pooled width instead of its own hidden width."""

    def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 (ComfyUI's signature)
        super().__init__(device=device, dtype=dtype, model_options=model_options)
        clip_g = self.clip_g.transformer
        width = model_options[POOLED_WIDTH_OPTION]
        clip_g.text_projection = self.clip_g.operations.Linear(
            clip_g.text_projection.in_features, width, bias=False, dtype=dtype, device=device
        )


# --- configs: diffusers/transformers -> ComfyUI --------------------------------------------------------------


def comfy_unet_config(config: dict) -> dict:
    """ComfyUI's SDXL unet_config (comfy/model_detection.py's keys) for a diffusers SDXL UNet config."""
    channels = [int(c) for c in config["block_out_channels"]]
    blocks = int(config["layers_per_block"])
    if config.get("transformer_layers_per_block", 1) != 1 or config.get("addition_embed_type") != "text_time":
        raise MiniatureFileError("The miniature UNet must have one transformer per block and SDXL's text_time ADM.")
    if any(c % channels[0] for c in channels):
        raise MiniatureFileError(f"UNet widths {channels} are not multiples of the first; ComfyUI cannot build them.")
    attention = [kind.startswith("CrossAttn") for kind in config["down_block_types"]]
    heads = config["attention_head_dim"]
    heads = [heads] * len(channels) if isinstance(heads, int) else list(heads)
    head_channels = {channels[i] // heads[i] for i, has in enumerate(attention) if has}
    if head_channels != {SDXL_HEAD_CHANNELS}:  # ComfyUI's SDXL config sets num_head_channels 64 whatever it is given
        raise MiniatureFileError(
            f"UNet heads {heads} at widths {channels} are not {SDXL_HEAD_CHANNELS} wide, as ComfyUI's SDXL needs."
        )
    return {
        "use_checkpoint": False, "image_size": int(config.get("sample_size", 16)), "out_channels": 4,
        "use_spatial_transformer": True, "legacy": False, "num_classes": "sequential",
        "adm_in_channels": int(config["projection_class_embeddings_input_dim"]), "in_channels": 4,
        "model_channels": channels[0], "num_res_blocks": [blocks] * len(channels),
        "transformer_depth": [int(has) for has in attention for _ in range(blocks)],
        "channel_mult": [c // channels[0] for c in channels], "transformer_depth_middle": 1,
        "use_linear_in_transformer": bool(config.get("use_linear_projection", True)),
        "context_dim": int(config["cross_attention_dim"]), "num_head_channels": SDXL_HEAD_CHANNELS,
        "transformer_depth_output": [int(has) for has in attention for _ in range(blocks + 1)],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }  # fmt: skip


def comfy_vae_config(config: dict) -> dict:
    """ComfyUI's AutoencoderKL params for a diffusers AutoencoderKL config."""
    channels = [int(c) for c in config["block_out_channels"]]
    if any(c % channels[0] for c in channels):
        raise MiniatureFileError(f"VAE widths {channels} are not multiples of the first; ComfyUI cannot build them.")
    latent = int(config["latent_channels"])
    ddconfig = {
        "double_z": True, "z_channels": latent, "resolution": int(config.get("sample_size", IMAGE_SIZE)),
        "in_channels": 3, "out_ch": 3, "ch": channels[0], "ch_mult": [c // channels[0] for c in channels],
        "num_res_blocks": int(config["layers_per_block"]), "attn_resolutions": [], "dropout": 0.0,
    }  # fmt: skip
    return {"params": {"embed_dim": latent, "ddconfig": ddconfig}}


def comfy_vae_state(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """diffusers VAE keys -> ComfyUI's. comfy.diffusers_convert numbers the decoder's levels for SD's 4
    (diffusers up_blocks.i -> up.{3 - i}); with `levels` levels, up_blocks.i is up.{levels - 1 - i}."""
    converted = comfy.diffusers_convert.convert_vae_state_dict(state)
    shift = 4 - levels

    def renumber(match: re.Match) -> str:
        return f"decoder.up.{int(match.group(1)) - shift}."

    return {re.sub(r"^decoder\.up\.(\d+)\.", renumber, key): value for key, value in converted.items()}


def _comfy_text_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP text keys -> ComfyUI's: everything but the projection lives under text_model. (transformers
    5 saves CLIPTextModel without that level)."""
    out = {}
    for key, value in state.items():
        plain = key.startswith(("text_model.", "text_projection."))
        out[key if plain else f"text_model.{key}"] = value.to(torch.float32)
    return out


def _load_exactly(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, optional=()) -> None:
    expected = set(module.state_dict())
    missing = sorted(expected - set(state) - set(optional))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise MiniatureFileError(
            f"The miniature {what} weights do not fit ComfyUI's model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}): write the file again with export_base."
        )
    module.load_state_dict(state, strict=False)


# --- the three models ----------------------------------------------------------------------------------------


def miniature_model(config: dict, state: dict[str, torch.Tensor]) -> comfy.model_patcher.ModelPatcher:
    unet_config = comfy_unet_config(config)
    model_config = comfy.supported_models.SDXL(unet_config)
    model_config.set_inference_dtype(torch.float32, None)  # a few MB: float32 everywhere, as it was trained
    model = MiniatureSDXL(model_config, model_type=comfy.model_base.ModelType.EPS, device="cpu")
    mapping = comfy.utils.unet_to_diffusers(unet_config)  # diffusers key -> ComfyUI key
    unknown = sorted(key for key in state if key not in mapping)
    if unknown:
        raise MiniatureFileError(f"The miniature UNet holds {unknown[0]!r}, which ComfyUI's SDXL UNet lacks.")
    _load_exactly(model.diffusion_model, {mapping[k]: v.to(torch.float32) for k, v in state.items()}, "UNet")
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def miniature_clip(configs: dict[str, dict], states: dict[str, dict[str, torch.Tensor]]) -> comfy.sd.CLIP:
    options: dict = {"dtype": torch.float32, POOLED_WIDTH_OPTION: int(configs["text_encoder_2"]["projection_dim"])}
    for name, part in _TEXT_MODELS.items():
        options[f"{name}_model_config"] = {field: configs[part][field] for field in _TEXT_FIELDS}
    target = types.SimpleNamespace(clip=MiniatureClipModel, tokenizer=comfy.sdxl_clip.SDXLTokenizer, params={})
    clip = comfy.sd.CLIP(target, model_options=options)
    encoders = clip.cond_stage_model
    with torch.no_grad():
        encoders.clip_l.transformer.text_projection.weight.zero_()  # CLIP-L's pooled output is unused in SDXL
    _load_exactly(
        encoders.clip_l.transformer, _comfy_text_state(states["text_encoder"]), "CLIP-L", ["text_projection.weight"]
    )
    _load_exactly(encoders.clip_g.transformer, _comfy_text_state(states["text_encoder_2"]), "CLIP-G")
    return clip


def miniature_vae(config: dict, state: dict[str, torch.Tensor]) -> comfy.sd.VAE:
    vae_config = comfy_vae_config(config)
    levels = len(config["block_out_channels"])
    converted = comfy_vae_state({key: value.to(torch.float32) for key, value in state.items()}, levels)
    vae = comfy.sd.VAE(sd=converted, config=vae_config, dtype=torch.float32)
    expected = set(vae.first_stage_model.state_dict())
    if expected != set(converted):
        raise MiniatureFileError(
            f"The miniature VAE weights do not fit ComfyUI's AutoencoderKL (missing "
            f"{sorted(expected - set(converted))[:3]},"
            f" unexpected {sorted(set(converted) - expected)[:3]}): write the file again with export_base."
        )
    vae.downscale_ratio = vae.upscale_ratio = 2 ** (levels - 1)  # the miniature's 4x, not SD's 8x
    return vae


def load_miniature_base(
    path: str | os.PathLike,
) -> tuple[comfy.model_patcher.ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE]:
    """MODEL, CLIP and VAE (CheckpointLoaderSimple's order) from a miniature base file. A file of another kind is
    refused with a MiniatureFileError that says so."""
    base = read_base(path)
    try:
        model = miniature_model(base.configs["unet"], base.state["unet"])
        clip = miniature_clip(base.configs, base.state)
        vae = miniature_vae(base.configs["vae"], base.state["vae"])
    except (KeyError, TypeError) as error:
        raise MiniatureFileError(
            f"{os.path.basename(path)} is a miniature base file with an incomplete config ({error}): write it again "
            "with export_base."
        ) from error
    return model, clip, vae


__all__ = [
    "MiniatureClipModel", "MiniatureSDXL", "comfy_unet_config", "comfy_vae_config", "comfy_vae_state",
    "load_miniature_base", "miniature_clip", "miniature_model", "miniature_vae",
]  # fmt: skip
