"""The miniature base model: an SDXL-shaped diffusers folder at tiny widths, seeded-random, and its one-file form.

The folder is what the CLI training host opens (bolid_core.train.diffusers_host.load_sdxl): an SDXL UNet (text_time
added conditioning, 2816 = 1280 pooled + 6 x 256 time-id inputs), a 4x AutoencoderKL (64 px images -> 16x16x4
latents, SDXL's latent scale 0.13025), two frozen random CLIP text encoders on ComfyUI's own tokenizer files (context
= hidden_l + hidden_g, pooled = CLIP-G's 1280-wide projection), SDXL's noise schedule. The file is one fp16
safetensors with every network's weights and configs, which ComfyUI's classes load
(bolid_core.comfy.miniature.load_miniature_base) and which turns back into the folder (import_base).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import read_pack_file, save_safetensors_atomic, write_text_atomic

BASE_FORMAT = "bolid-miniature-base"
BASE_FORMAT_VERSION = 1
IMAGE_SIZE = 64  # pixels; also SDXL's time ids (original = target = 64, crop 0)
LATENT_SIZE = 16
LATENT_CHANNELS = 4
VAE_SCALING = 0.13025  # SDXL's latent scale factor
POOLED_WIDTH = 1280  # SDXL's pooled text width (CLIP-G projection)
TIME_ID_WIDTH = 256  # SDXL embeds each of its 6 time ids with 256 sinusoids
ADM_WIDTH = POOLED_WIDTH + 6 * TIME_ID_WIDTH  # 2816
VOCAB_SIZE = 49408
TOKENS = 77
# UNet widths: at least 64 everywhere, since ComfyUI's GroupNorms have 32 groups and a 32-wide level would normalise
# each channel alone; one forward+backward of batch 16 at 16x16x4 takes ~0.2 s on 2 cores.
UNET_CHANNELS = (64, 64, 64)
HEAD_CHANNELS = 64  # SDXL's head width, which ComfyUI's SDXL config fixes; diffusers gets heads per level = width // 64
GROUPS = 32  # ComfyUI's UNet and VAE GroupNorms have 32 groups, whatever the width
# 3 blocks: 2 downsamplings = 4x. 64 wide at full resolution: with 32 groups a 32-wide layer would normalise each
# channel on its own, and the decoder's last GroupNorm would then erase every absolute colour.
VAE_CHANNELS = (64, 64, 64)
VAE_LAYERS = 0  # resnets per encoder level (the decoder has one more); equal widths allow 0
TEXT_WIDTH = 16  # each of CLIP-L and CLIP-G; context = 32 wide
TEXT_LAYERS = 3  # so that SDXL's penultimate layer exists
TEXT_HEADS = 2
# ComfyUI's CLIP-L (sd1_clip_config.json) uses quick_gelu, its CLIP-G (clip_config_bigg.json) gelu.
TEXT_ACTIVATIONS = ("quick_gelu", "gelu")
START_TOKEN, END_TOKEN, BANG_TOKEN = 49406, 49407, 0  # "!" is id 0: SDXL's second tokenizer pads with it

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")
SUBFOLDERS = (*PARTS, "tokenizer", "tokenizer_2", "scheduler")


class MiniatureFileError(ValueError):
    """A file or folder that is not a miniature base model."""


# --- configs -------------------------------------------------------------------------------------------------


def unet_config(context_width: int = 2 * TEXT_WIDTH, channels: Sequence[int] = UNET_CHANNELS) -> dict:
    """diffusers UNet2DConditionModel kwargs in SDXL's layout: no attention at the first level, one transformer per
    res block at the others, a cross-attention mid block, SDXL's text_time added conditioning."""
    channels = tuple(int(c) for c in channels)
    if len(channels) != 3 or any(c % GROUPS for c in channels) or any(c % HEAD_CHANNELS for c in channels[1:]):
        raise ValueError(
            f"UNet channels {channels}: give 3 widths, multiples of {GROUPS}; the two with attention, of "
            f"{HEAD_CHANNELS}."
        )
    return {
        "sample_size": LATENT_SIZE, "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn", "block_out_channels": channels, "layers_per_block": 2,
        "transformer_layers_per_block": 1, "attention_head_dim": tuple(max(1, c // HEAD_CHANNELS) for c in channels),
        "cross_attention_dim": context_width, "use_linear_projection": True, "norm_num_groups": GROUPS,
        "addition_embed_type": "text_time", "addition_time_embed_dim": TIME_ID_WIDTH,
        "projection_class_embeddings_input_dim": ADM_WIDTH,
    }  # fmt: skip


def vae_config(channels: Sequence[int] = VAE_CHANNELS) -> dict:
    channels = tuple(int(c) for c in channels)
    if any(c % GROUPS for c in channels):
        raise ValueError(f"VAE channels {channels}: each must be a multiple of {GROUPS} (ComfyUI's GroupNorm).")
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": LATENT_CHANNELS, "block_out_channels": channels,
        "layers_per_block": VAE_LAYERS, "down_block_types": ("DownEncoderBlock2D",) * len(channels),
        "up_block_types": ("UpDecoderBlock2D",) * len(channels), "norm_num_groups": GROUPS,
        "sample_size": IMAGE_SIZE, "scaling_factor": VAE_SCALING,
    }  # fmt: skip


def text_config(which: int, width: int = TEXT_WIDTH):
    """transformers CLIPTextConfig of CLIP-L (0) or CLIP-G (1): ComfyUI's vocabulary and token ids, tiny widths."""
    import transformers

    return transformers.CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=TEXT_HEADS, max_position_embeddings=TOKENS, hidden_act=TEXT_ACTIVATIONS[which],
        layer_norm_eps=1e-5, projection_dim=POOLED_WIDTH if which else width, bos_token_id=START_TOKEN,
        eos_token_id=END_TOKEN, pad_token_id=END_TOKEN if which == 0 else BANG_TOKEN,
    )  # fmt: skip


def sdxl_scheduler():
    """SDXL's noise schedule: scaled_linear betas 0.00085..0.012 over 1000 steps, epsilon prediction."""
    import diffusers

    return diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", clip_sample=False,
    )  # fmt: skip


# --- building the folder ------------------------------------------------------------------------------------


def _tokenizers(tokenizer_dir: str | os.PathLike):
    """CLIP-L's and CLIP-G's tokenizers from ComfyUI's comfy/sd1_tokenizer files: the second pads with "!" (id 0),
    as SDXL's tokenizer_2 and ComfyUI's clip_g tokenizer do; the first pads with the end token."""
    import transformers

    root = Path(tokenizer_dir)
    if not (root / "vocab.json").is_file() or not (root / "merges.txt").is_file():
        raise MiniatureFileError(
            f"{root} has no vocab.json and merges.txt: pass ComfyUI's comfy/sd1_tokenizer folder as tokenizer_dir."
        )
    kwargs = {"local_files_only": True, "model_max_length": TOKENS}
    tokenizer = transformers.CLIPTokenizer.from_pretrained(root, **kwargs)
    tokenizer_2 = transformers.CLIPTokenizer.from_pretrained(root, pad_token="!", **kwargs)  # noqa: S106 (a token)
    if tokenizer_2.pad_token_id != BANG_TOKEN or tokenizer.eos_token_id != END_TOKEN:
        raise MiniatureFileError(f"{root} is not CLIP's tokenizer (49408 tokens): use ComfyUI's comfy/sd1_tokenizer.")
    return tokenizer, tokenizer_2


@torch.no_grad()
def _text_encoders(seed: int):
    """Frozen, seeded-random CLIP-L and CLIP-G. Token and position embeddings are N(0, 1), so the context (the
    penultimate hidden states, before any final norm) is O(1), as in a real SDXL, and distinct words stay apart."""
    import transformers

    generator = torch.Generator().manual_seed(seed + 1)
    encoders = []
    for which, model_class in enumerate((transformers.CLIPTextModel, transformers.CLIPTextModelWithProjection)):
        encoder = model_class(text_config(which)).eval()
        modules = dict(encoder.named_modules())  # transformers 5 dropped CLIPTextModel's text_model level
        embeddings = next(module for name, module in modules.items() if name.endswith("embeddings"))
        for table in (embeddings.token_embedding.weight, embeddings.position_embedding.weight):
            table.copy_(torch.randn(table.shape, generator=generator))
        encoders.append(encoder)
    return encoders


def build_sdxl_folder(folder: str | os.PathLike, tokenizer_dir: str | os.PathLike, seed: int) -> Path:
    """A diffusers SDXL folder at the miniature widths, every weight drawn from `seed` (the same seed gives the same
    folder). The torch RNG outside is left as it was."""
    import diffusers

    folder = Path(folder)
    tokenizer, tokenizer_2 = _tokenizers(tokenizer_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(**unet_config())
        vae = diffusers.AutoencoderKL(**vae_config())
        text_encoder, text_encoder_2 = _text_encoders(seed)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    text_encoder_2.save_pretrained(folder / "text_encoder_2")
    tokenizer.save_pretrained(folder / "tokenizer")
    tokenizer_2.save_pretrained(folder / "tokenizer_2")
    sdxl_scheduler().save_pretrained(folder / "scheduler")
    _write_model_index(folder)
    return folder


def _write_model_index(folder: Path) -> None:
    index = {
        "_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"], "force_zeros_for_empty_prompt": False,
    }  # fmt: skip
    write_text_atomic(folder / "model_index.json", json.dumps(index, indent=2))


# --- the one-file form --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseWeights:
    """A miniature base file's contents: each part's state dict (diffusers / transformers keys, fp16) and config."""

    state: dict[str, dict[str, torch.Tensor]]  # part -> state dict
    configs: dict[str, dict]  # part -> config dict (diffusers config, or transformers CLIPTextConfig.to_dict())


def _load_parts(folder: Path) -> dict[str, torch.nn.Module]:
    import diffusers
    import transformers

    missing = [name for name in PARTS if not (folder / name / "config.json").is_file()]
    if missing:
        raise MiniatureFileError(f"{folder} has no {missing[0]}/config.json: point at a miniature SDXL folder.")
    kwargs = {"local_files_only": True, "use_safetensors": True}
    return {
        "unet": diffusers.UNet2DConditionModel.from_pretrained(folder / "unet", **kwargs),
        "vae": diffusers.AutoencoderKL.from_pretrained(folder / "vae", **kwargs),
        "text_encoder": transformers.CLIPTextModel.from_pretrained(folder / "text_encoder", **kwargs),
        "text_encoder_2": transformers.CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", **kwargs),
    }


def _config_dict(module: torch.nn.Module) -> dict:
    config = module.config
    if hasattr(config, "to_dict"):  # transformers
        return {key: value for key, value in config.to_dict().items() if not key.startswith("_")}
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}  # diffusers FrozenDict


def export_base(folder: str | os.PathLike, file: str | os.PathLike) -> Path:
    """The folder's UNet, VAE and text encoders in one fp16 safetensors, keys "<part>.<key>", configs in the metadata;
    written atomically."""
    parts = _load_parts(Path(folder))
    tensors, metadata = {}, {"format": BASE_FORMAT, "format_version": str(BASE_FORMAT_VERSION)}
    for name, module in parts.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.to(torch.float16)
        metadata[f"{name}_config"] = json.dumps(_config_dict(module), sort_keys=True)
    return save_safetensors_atomic(tensors, file, metadata)


def read_base(file: str | os.PathLike) -> BaseWeights:
    """A miniature base file, checked: format, version, every part's config and weights present."""
    try:
        tensors, metadata = read_pack_file(file, BASE_FORMAT, BASE_FORMAT_VERSION, "miniature base model")
    except ValueError as error:
        raise MiniatureFileError(
            f"{error} A miniature base model is written by bolid_core.miniature.models.export_base."
        ) from error
    state: dict[str, dict[str, torch.Tensor]] = {name: {} for name in PARTS}
    for key, value in tensors.items():
        part, _, name = key.partition(".")
        if part not in state:
            raise MiniatureFileError(f"{Path(file).name} holds {key!r}, which belongs to no miniature part.")
        state[part][name] = value
    configs = {}
    for part in PARTS:
        if not state[part] or f"{part}_config" not in metadata:
            raise MiniatureFileError(f"{Path(file).name} has no {part}: write it again with export_base.")
        configs[part] = json.loads(metadata[f"{part}_config"])
    return BaseWeights(state, configs)


def import_base(file: str | os.PathLike, folder: str | os.PathLike, tokenizer_dir: str | os.PathLike) -> Path:
    """A miniature base file back into the diffusers folder the CLI host opens (float32 weights holding the file's
    fp16 values exactly), with the tokenizers from `tokenizer_dir` and SDXL's scheduler."""
    import diffusers
    import transformers

    base = read_base(file)
    folder = Path(folder)
    tokenizer, tokenizer_2 = _tokenizers(tokenizer_dir)
    models = {
        "unet": diffusers.UNet2DConditionModel.from_config(base.configs["unet"]),
        "vae": diffusers.AutoencoderKL.from_config(base.configs["vae"]),
        "text_encoder": transformers.CLIPTextModel(transformers.CLIPTextConfig(**base.configs["text_encoder"])),
        "text_encoder_2": transformers.CLIPTextModelWithProjection(
            transformers.CLIPTextConfig(**base.configs["text_encoder_2"])
        ),
    }
    for name, module in models.items():
        state = {key: value.to(torch.float32) for key, value in base.state[name].items()}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise MiniatureFileError(f"{Path(file).name}: its {name} weights do not fit its config: {error}") from error
        module.save_pretrained(folder / name)
    tokenizer.save_pretrained(folder / "tokenizer")
    tokenizer_2.save_pretrained(folder / "tokenizer_2")
    sdxl_scheduler().save_pretrained(folder / "scheduler")
    _write_model_index(folder)
    return folder


def parameter_count(folder: str | os.PathLike) -> dict[str, int]:
    """Parameters per part of a miniature folder."""
    return {name: sum(p.numel() for p in module.parameters()) for name, module in _load_parts(Path(folder)).items()}


__all__ = [
    "ADM_WIDTH",
    "BASE_FORMAT",
    "BASE_FORMAT_VERSION",
    "IMAGE_SIZE",
    "LATENT_SIZE",
    "POOLED_WIDTH",
    "TEXT_WIDTH",
    "VAE_SCALING",
    "BaseWeights",
    "MiniatureFileError",
    "build_sdxl_folder",
    "export_base",
    "import_base",
    "parameter_count",
    "read_base",
    "sdxl_scheduler",
    "text_config",
    "unet_config",
    "vae_config",
]  # fmt: skip
