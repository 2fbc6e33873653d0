"""The diffusers host of the trainer: an SDXL UNet whose cross-attention layers call the core's AdapterAttention.

`BoLIDAttnProcessor` is diffusers' scaled-dot-product processor for attn2 plus the adapter's term, added to the text
attention before to_out, exactly where the ComfyUI attn2 patch (bolid_core.comfy.attn2) adds it at inference.
`DiffusersDenoiser` is adapter_task.Denoiser for SDXL. The loaders read local folders only; nothing downloads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .adapter_task import AdapterAttention, AuxiliaryScorers, NoiseSchedule, TextCondition
from .losses import PredictionType

ATTN2_SUFFIX = "attn2.processor"
# IP-Adapter's layer order, which attn2.attn2_layer_keys walks in ComfyUI's names: input, output, middle blocks.
UNET_BLOCK_ORDER = ("down_blocks", "up_blocks", "mid_block")
SDXL_SUBFOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
# OpenAI CLIP's normalisation, which the IP-Adapter image encoders use; a folder's preprocessor_config.json wins.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ModelFolderError(ValueError):
    """A model folder or file the CLI was pointed at is missing or is not what it should be."""


# --- the attention processor ------------------------------------------------------------------------------


class BoLIDAttnProcessor:
    """attn2 of a diffusers UNet: text attention as diffusers' AttnProcessor2_0 computes it, plus
    Σ_s λ_s·Attn(Q, K_s, V_s) from `attention` (BoLID's decoupled cross-attention), added before to_out."""

    def __init__(self, attention: AdapterAttention, layer: int) -> None:
        self.attention, self.layer = attention, layer

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query_flat = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query_flat.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        if self.attention.active:
            out = out + self.attention(self.layer, query_flat, attn.heads).to(out.dtype)

        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def attn2_names(unet: nn.Module) -> list[str]:
    """The module names of the UNet's cross-attention layers in IP-Adapter's order: down, up, then mid blocks."""
    names = [key[: -len(".processor")] for key in unet.attn_processors if key.endswith(ATTN2_SUFFIX)]
    unknown = [name for name in names if name.split(".")[0] not in UNET_BLOCK_ORDER]
    if unknown:
        raise ModelFolderError(f"Cross-attention layer {unknown[0]} is outside the down/up/mid blocks of an SDXL UNet.")
    return sorted(names, key=lambda name: UNET_BLOCK_ORDER.index(name.split(".")[0]))  # stable within a group


def install_adapter_processors(unet: nn.Module, attention: AdapterAttention) -> list[str]:
    """Our processor on every attn2, layer i = the i-th in attn2_names; attn1 keeps its own. Returns the names."""
    names = attn2_names(unet)
    processors = dict(unet.attn_processors)
    for layer, name in enumerate(names):
        processors[f"{name}.processor"] = BoLIDAttnProcessor(attention, layer)
    unet.set_attn_processor(processors)
    return names


def unet_layer_widths(unet: nn.Module) -> tuple[int, ...]:
    return tuple(unet.get_submodule(name).to_k.out_features for name in attn2_names(unet))


def unet_text_kv(unet: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each attn2's text to_k and to_v weights, in layer order: init_kv_from_text's starting point."""
    layers = [unet.get_submodule(name) for name in attn2_names(unet)]
    return [(layer.to_k.weight.detach(), layer.to_v.weight.detach()) for layer in layers]


# --- the denoiser -----------------------------------------------------------------------------------------


def sdxl_time_ids(height: int, width: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    """SDXL's micro-conditioning: original size, crop top-left, target size, in pixels (the dataset centre-crops to
    the training size, so the original is the target and the crop is (0, 0))."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=like.dtype, device=like.device).expand(batch, 6)


class DiffusersDenoiser:
    """adapter_task.Denoiser for a diffusers SDXL UNet: frozen, with our processor on every attn2, when `attention`
    is given; else the UNet itself trains (target base_unet), with its own processors."""

    def __init__(
        self,
        unet: nn.Module,
        scheduler,
        attention: AdapterAttention | None,
        resolution: int | tuple[int, int],
        gradient_checkpointing: bool = False,
    ) -> None:
        self.unet, self.attention = unet.requires_grad_(attention is None), attention
        alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)
        self.schedule = NoiseSchedule(alphas_cumprod, PredictionType(scheduler.config.prediction_type))
        self.size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        if attention is not None:
            install_adapter_processors(unet, attention)
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing(self._checkpoint if attention is not None else None)
            unet.train()  # SDXL has no dropout: train() changes nothing but what checkpointing looks at
        elif attention is not None:
            unet.eval()

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def _checkpoint(self, module: nn.Module, *args):
        """diffusers' checkpointing (non-reentrant) with the adapter tokens of this forward: the recomputation runs
        during backward, outside the task's `attention.using(...)`, and must attend to the same tokens."""
        tokens = self.attention.tokens

        def forward(*inputs):
            scope = self.attention.using(tokens) if tokens is not None else contextlib.nullcontext()
            with scope:
                return module(*inputs)

        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False)

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: TextCondition) -> torch.Tensor:
        dtype = self.unet.dtype
        context, pooled = text.context.to(noisy.device, dtype), text.pooled.to(noisy.device, dtype)
        added = {"text_embeds": pooled, "time_ids": sdxl_time_ids(*self.size, noisy.shape[0], pooled)}
        out = self.unet(noisy.to(dtype), timesteps, encoder_hidden_states=context, added_cond_kwargs=added).sample
        return out.to(noisy.dtype)


def save_unet_folder(unet: nn.Module, folder: str | os.PathLike) -> Path:
    """The UNet as a diffusers folder (config.json + safetensors weights) at `folder`, atomically: written into a
    temporary folder beside it, then renamed into place; a folder already there is replaced only once the new one is
    complete, so `folder` never holds a partial model."""
    import shutil
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    old = None
    try:
        unet.save_pretrained(partial, safe_serialization=True)
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, old / folder.name)
        os.replace(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if old is not None and not folder.exists() and (old / folder.name).exists():
            os.replace(old / folder.name, folder)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return folder


# --- loading local folders --------------------------------------------------------------------------------


def folder_fingerprint(path: str | os.PathLike) -> str:
    """Changes when any file in the folder is replaced or edited (name, size, modification time)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        stat = file.stat()
        digest.update(
            f"{file.relative_to(path) if file != path else file.name}:{stat.st_size}:{stat.st_mtime_ns}|".encode()
        )
    return digest.hexdigest()[:32]


def _require_folder(path: Path, what: str, files: Sequence[str] = ()) -> Path:
    if not path.is_dir():
        raise ModelFolderError(f"{what} folder {path} not found; point the config at a local diffusers folder.")
    for name in files:
        if not (path / name).is_file():
            raise ModelFolderError(f"{what} folder {path} has no {name}; copy the complete folder there.")
    return path


@dataclass
class SDXLModels:
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    text_encoder_2: nn.Module
    tokenizer: object
    tokenizer_2: object
    scheduler: object
    fingerprints: dict[str, str]  # per subfolder


def load_sdxl(folder: str | os.PathLike, device: torch.device | str = "cpu", dtype=torch.float32) -> SDXLModels:
    """An SDXL diffusers folder (unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler), frozen.
    `dtype` is the UNet's (e.g. bf16 under mixed precision); the VAE and the text encoders stay float32: they run once
    per image, for the cache, and SDXL's VAE overflows in fp16."""
    import diffusers
    import transformers

    root = _require_folder(Path(folder), "The SDXL base model")
    for name in SDXL_SUBFOLDERS:
        _require_folder(root / name, f"The SDXL model's {name}")
    config_file = {"tokenizer": "tokenizer_config.json", "tokenizer_2": "tokenizer_config.json"}
    for name in SDXL_SUBFOLDERS:
        wanted = config_file.get(name, "scheduler_config.json" if name == "scheduler" else "config.json")
        _require_folder(root / name, f"The SDXL model's {name}", [wanted])
    kwargs = {"local_files_only": True}
    try:
        weights = {**kwargs, "use_safetensors": True}  # never a pickle, even one torch would load weights-only
        unet = diffusers.UNet2DConditionModel.from_pretrained(root / "unet", torch_dtype=dtype, **weights)
        vae = diffusers.AutoencoderKL.from_pretrained(root / "vae", torch_dtype=torch.float32, **weights)
        text_encoder = transformers.CLIPTextModel.from_pretrained(root / "text_encoder", **weights)
        text_encoder_2 = transformers.CLIPTextModelWithProjection.from_pretrained(root / "text_encoder_2", **weights)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(root / "tokenizer", **kwargs)
        tokenizer_2 = transformers.CLIPTokenizer.from_pretrained(root / "tokenizer_2", **kwargs)
        scheduler = diffusers.DDPMScheduler.from_pretrained(root / "scheduler", **kwargs)
    except (OSError, ValueError) as error:
        raise ModelFolderError(f"The SDXL model in {root} cannot be loaded: {error}") from error
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.requires_grad_(False).eval().to(device)
    fingerprints = {name: folder_fingerprint(root / name) for name in SDXL_SUBFOLDERS}
    return SDXLModels(unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler, fingerprints)


@torch.no_grad()
def encode_prompts(models: SDXLModels, prompts: Sequence[str]) -> TextCondition:
    """SDXL's text conditioning: both encoders' penultimate hidden states side by side (768 + 1280), and
    text_encoder_2's projected text embeds as the pooled vector."""
    hidden, pooled = [], None
    for tokenizer, encoder in ((models.tokenizer, models.text_encoder), (models.tokenizer_2, models.text_encoder_2)):
        device = next(encoder.parameters()).device
        ids = tokenizer(
            list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)  # fmt: skip
        output = encoder(ids, output_hidden_states=True)
        hidden.append(output.hidden_states[-2].float())
        pooled = getattr(output, "text_embeds", None)
    return TextCondition(torch.cat(hidden, dim=-1), pooled.float())


def latent_scaling(vae: nn.Module) -> tuple[float, float]:
    shift = getattr(vae.config, "shift_factor", None)
    return float(vae.config.scaling_factor), float(shift or 0.0)


@torch.no_grad()
def encode_latents(vae: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Images (B, H, W, 3) in [0, 1] → the UNet's latents: the posterior mean (one deterministic latent per image),
    shifted and scaled as diffusers' SDXL pipelines do."""
    scale, shift = latent_scaling(vae)
    weight = next(vae.parameters())
    x = pixels.permute(0, 3, 1, 2).to(weight) * 2 - 1
    return (vae.encode(x).latent_dist.mean - shift) * scale


def decode_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """The UNet's latents → images (B, H, W, 3) in [0, 1], differentiable (L_id and L_CLIP score them)."""
    scale, shift = latent_scaling(vae)
    weight = next(vae.parameters())
    images = vae.decode(latents.to(weight) / scale + shift).sample
    return ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)


# --- CLIP vision -----------------------------------------------------------------------------------------


class ClipImageEmbedder(nn.Module):
    """CLIPVisionModelWithProjection behind CLIPImageProcessor's resize, centre crop and normalisation, written in
    torch so gradients reach the image: images (B, H, W, 3) in [0, 1] → image_embeds (B, d)."""

    def __init__(self, model: nn.Module, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model, self.size = model, size
        self.register_buffer("mean", torch.tensor(mean).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(self.mean)
        height, width = x.shape[-2:]
        scale = self.size / min(height, width)
        resized = (max(self.size, round(height * scale)), max(self.size, round(width * scale)))
        x = F.interpolate(x, size=resized, mode="bicubic", align_corners=False, antialias=True)
        top, left = (resized[0] - self.size) // 2, (resized[1] - self.size) // 2
        x = x[..., top : top + self.size, left : left + self.size]
        weight = next(self.model.parameters())
        x = ((x - self.mean) / self.std).to(weight.dtype)
        return self.model(pixel_values=x).image_embeds.float()


def _clip_stats(root: Path, size: int) -> tuple[int, Sequence[float], Sequence[float]]:
    """The folder's CLIPImageProcessor crop size, mean and std (preprocessor_config.json), else CLIP's own."""
    import json

    mean, std = CLIP_MEAN, CLIP_STD
    preprocessor = root / "preprocessor_config.json"
    if preprocessor.is_file():
        stats = json.loads(preprocessor.read_text(encoding="utf-8"))
        mean, std = stats.get("image_mean", mean), stats.get("image_std", std)
        crop = stats.get("crop_size", size)
        size = crop.get("height", size) if isinstance(crop, dict) else int(crop)
    return size, mean, std


def load_clip_vision(folder: str | os.PathLike, device: torch.device | str = "cpu") -> ClipImageEmbedder:
    """A CLIPVisionModelWithProjection folder (IP-Adapter's image encoder) as a differentiable image embedder."""
    import transformers

    root = _require_folder(Path(folder), "The CLIP-vision", ["config.json"])
    try:
        model = transformers.CLIPVisionModelWithProjection.from_pretrained(
            root, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelFolderError(f"The CLIP-vision model in {root} cannot be loaded: {error}") from error
    size, mean, std = _clip_stats(root, model.config.image_size)
    return ClipImageEmbedder(model.requires_grad_(False).eval(), size, mean, std).to(device)


class _ProjectedVision(nn.Module):
    """A full CLIPModel's vision tower and projection, answering as CLIPVisionModelWithProjection does."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.vision_model, self.visual_projection = clip.vision_model, clip.visual_projection

    def forward(self, pixel_values: torch.Tensor):
        from types import SimpleNamespace

        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return SimpleNamespace(image_embeds=self.visual_projection(pooled))


@dataclass
class ClipScorer:
    """L_CLIP's shared space: a full CLIP model (both towers). `image` is differentiable in its input."""

    image: ClipImageEmbedder
    text: Callable[[str], torch.Tensor]  # caption → (1, d)


def load_clip_score(folder: str | os.PathLike, device: torch.device | str = "cpu") -> ClipScorer:
    import transformers

    root = _require_folder(Path(folder), "The CLIP model for L_CLIP", ["config.json"])
    try:
        clip = transformers.CLIPModel.from_pretrained(root, local_files_only=True, use_safetensors=True)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelFolderError(f"The CLIP model in {root} cannot be loaded: {error}") from error
    clip = clip.requires_grad_(False).eval().to(device)
    size, mean, std = _clip_stats(root, clip.config.vision_config.image_size)
    image = ClipImageEmbedder(_ProjectedVision(clip), size, mean, std).to(device)

    @torch.no_grad()
    def text(caption: str) -> torch.Tensor:
        ids = tokenizer([caption], padding="max_length", truncation=True, return_tensors="pt").input_ids.to(device)
        return clip.text_projection(clip.text_model(input_ids=ids).pooler_output).float()

    return ClipScorer(image, text)


def auxiliary_scorers(
    vae: nn.Module,
    pose_people: Callable[[torch.Tensor], Sequence[torch.Tensor]] | None = None,
    clip_image: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> AuxiliaryScorers:
    """L_id and L_CLIP's view of the predicted x0: decoded with the VAE (with gradients), then posed and embedded."""
    return AuxiliaryScorers(lambda latents: decode_latents(vae, latents), pose_people, clip_image)


__all__ = [
    "BoLIDAttnProcessor", "ClipImageEmbedder", "ClipScorer", "DiffusersDenoiser", "ModelFolderError", "SDXLModels",
    "attn2_names", "auxiliary_scorers", "decode_latents", "encode_latents", "encode_prompts", "folder_fingerprint",
    "install_adapter_processors", "load_clip_score", "load_clip_vision", "load_sdxl", "save_unet_folder",
    "sdxl_time_ids",
    "unet_layer_widths", "unet_text_kv",
]  # fmt: skip
