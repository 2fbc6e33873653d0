"""ComfyUI's full-size SDXL UNet with random weights, IP-Adapter SDXL presets at full widths, and inputs fed directly.

Shared by tests/test_comfy_sdxl_equivalence.py (against the plain formulas) and bolid_dev/peer_equivalence.py
(against IPAdapter_plus itself). Import after ComfyUI is importable (the `comfy_path` fixture, or
bolid_dev.runtime.import_comfy_in_process).
"""

from __future__ import annotations

import enum
import math
import types
from collections.abc import Callable
from dataclasses import dataclass

import plain_ip_adapter as plain
import torch
from adapter_factories import faceid_ip_adapter, faceid_plus_v2, kv_layers, plain_ip_adapter, plus_ip_adapter

FULL_SDXL_MEMORY_GB = 17  # measured peak 16.4 GB: the fp32 UNet (10.3 GB), shared K/V, one adapter file and its load
CONTEXT_DIM = 2048
VIT_H_HIDDEN = 1280  # penultimate hidden width of CLIP ViT-H/14
VIT_H_EMBEDS = 1024
VIT_BIGG_HIDDEN = 1664
VIT_BIGG_EMBEDS = 1280
CLIP_TOKENS = 257  # 16 x 16 patches of a 224 px image, plus the class token
ARCFACE_DIM = 512
BUILDER_KV_STD = 0.1  # adapter_factories draws the K/V weights at this std
_FILL_POOL = 2**24 + 43  # seeded normals, reused cyclically: filling 2.6 B weights costs a copy, not a draw


@torch.no_grad()
def fill_quickly_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter from one pool of seeded normals: matrices and convolutions scaled by 1/√fan-in (so
    activations stay O(1)), biases small, norm weights near 1. Drawing 2.6 B normals one by one takes ~40 s on two
    cores; copying from a pool of 16.8 M (a prime-ish length, so rows do not line up with it) takes a few."""
    pool = torch.randn(_FILL_POOL, generator=torch.Generator().manual_seed(seed))
    offset = 0
    for name, param in module.named_parameters():
        flat = param.view(-1)
        if param.ndim >= 2:
            scale, shift = 1.0 / math.sqrt(math.prod(param.shape[1:])), 0.0
        elif "norm" in name and name.endswith("weight"):
            scale, shift = 0.02, 1.0
        else:
            scale, shift = 0.02, 0.0
        start = 0
        while start < flat.numel():
            take = min(flat.numel() - start, _FILL_POOL - offset)
            torch.mul(pool[offset : offset + take], scale, out=flat[start : start + take])
            start, offset = start + take, (offset + take) % _FILL_POOL
        if shift:
            flat.add_(shift)
    return module.requires_grad_(False)


def full_sdxl_model(seed: int = 0):
    """SDXL base's UNet (comfy's own classes, 2.6 B parameters, 70 attn2 layers), fp32, in a real ModelPatcher."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    from bolid_test_models.tiny_models import FULL_UNET_CONFIG

    config = comfy.supported_models.SDXL(FULL_UNET_CONFIG)
    config.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.SDXL(config, device="cpu")  # comfy's layers skip init: the fill is the only write
    fill_quickly_(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


@dataclass(frozen=True)
class UNetInputs:
    """One batched call as a sampler makes it: two chunks (positions 0, 1) whose cond indices are cond_or_uncond."""

    latent: torch.Tensor  # (2, 4, 16, 16)
    sigma: torch.Tensor  # (2,)
    context: torch.Tensor  # (2, tokens, 2048)
    adm: torch.Tensor  # (2, 2816)
    cond_or_uncond: tuple[int, ...] = (1, 0)  # uncond first: chunks are routed by index, never by position


def unet_inputs(seed: int = 7, context_tokens: int = 8, latent_hw: int = 16) -> UNetInputs:
    g = torch.Generator().manual_seed(seed)
    return UNetInputs(
        latent=torch.randn(2, 4, latent_hw, latent_hw, generator=g),
        sigma=torch.tensor([3.0, 3.0]),
        context=torch.randn(2, context_tokens, CONTEXT_DIM, generator=g),
        adm=torch.randn(2, 2816, generator=g),
    )


def run_unet(model, inputs: UNetInputs) -> torch.Tensor:
    """The UNet's output for `inputs` with `model`'s patches, as calc_cond_batch would call it."""
    options = dict(model.model_options["transformer_options"])
    options.update(cond_or_uncond=list(inputs.cond_or_uncond), sigmas=inputs.sigma)
    return model.model.apply_model(
        inputs.latent, inputs.sigma, c_crossattn=inputs.context, y=inputs.adm, transformer_options=options
    )


def text_attention(q, k, v, extra_options) -> torch.Tensor:
    """What an unpatched attn2 layer computes between to_q/k/v and to_out."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))


class SideBySide:
    """One attn2 layer for several runs batched side by side, each a two-chunk part of the batch with its own patch
    (None: the unpatched layer) and the extra_options ComfyUI would give that run alone. The UNet treats samples
    independently, so one batched call gives each run's output; it reads the 10 GB of weights once, not per run."""

    def __init__(self, patches: list, cond_or_uncond: tuple[int, ...]) -> None:
        self.patches, self.cond_or_uncond = patches, list(cond_or_uncond)

    def __call__(self, q, k, v, extra_options):
        per_run = q.shape[0] // len(self.patches)
        outputs = []
        for run, patch in enumerate(self.patches):
            part = slice(run * per_run, (run + 1) * per_run)
            options = {
                **extra_options,
                "cond_or_uncond": self.cond_or_uncond,
                "sigmas": extra_options["sigmas"][part],
                "original_shape": [per_run, *extra_options["original_shape"][1:]],
            }
            outputs.append((patch or text_attention)(q[part], k[part], v[part], options))
        return torch.cat(outputs)

    def __deepcopy__(self, memo):
        return self


def run_side_by_side(model, inputs: UNetInputs, patches: dict) -> list[torch.Tensor]:
    """Each run's UNet output: patches maps every attn2 key to one patch per run (None: unpatched there)."""
    runs = len(next(iter(patches.values())))
    together = model.clone()
    for key, layer_patches in patches.items():
        together.set_model_attn2_replace(SideBySide(layer_patches, inputs.cond_or_uncond), *key)
    batched = UNetInputs(
        inputs.latent.repeat(runs, 1, 1, 1), inputs.sigma.repeat(runs), inputs.context.repeat(runs, 1, 1),
        inputs.adm.repeat(runs, 1), inputs.cond_or_uncond * runs,
    )  # fmt: skip
    return list(run_unet(together, batched).chunk(runs))


def relative_difference(found: torch.Tensor, expected: torch.Tensor) -> float:
    """max |found − expected| / max |expected|."""
    return float((found.double() - expected.double()).abs().max() / expected.double().abs().max())


# --- the presets -------------------------------------------------------------------------------------------------


class Reads(enum.Enum):
    """What a preset's projection reads; the inputs to feed it."""

    IMAGE_EMBEDS = "image embeds"
    HIDDEN_STATES = "hidden states"
    FACE = "face"
    FACE_AND_CROP = "face and crop hidden states"


@dataclass(frozen=True)
class Preset:
    name: str  # IPAdapter_plus's (and our unified loader's) preset name
    file_name: str  # the published file (h94), whose name IPAdapter_plus reads flags from
    reads: Reads
    clip_width: int  # width of the CLIP features it reads (image embeds or hidden states)
    make_projection: Callable[[int], dict]  # seed -> the published layout's image_proj.* tensors
    lora: bool = False  # FaceID files carry LoRA weights next to the K/V ones (IPAdapter_plus detects FaceID by them)


def _plus(seed: int) -> dict:
    """ip-adapter-plus[-face]_sdxl_vit-h: 16 learned latents 1280 wide, 4 layers of 20 heads, out 2048."""
    return plus_ip_adapter(CONTEXT_DIM, (), VIT_H_HIDDEN, dim=1280, queries=16, depth=4, seed=seed)


# Each builder is called without layers (widths=()): the 70 layers' K/V weights, 340 M numbers, are drawn once
# (shared_kv) and shared by all presets; drawing them per preset would double the file's run time.
PRESETS = (
    Preset(
        "standard", "ip-adapter_sdxl_vit-h.safetensors", Reads.IMAGE_EMBEDS, VIT_H_EMBEDS,
        lambda seed: plain_ip_adapter(CONTEXT_DIM, (), VIT_H_EMBEDS, tokens=4, seed=seed),
    ),
    Preset(
        "vit-g", "ip-adapter_sdxl.safetensors", Reads.IMAGE_EMBEDS, VIT_BIGG_EMBEDS,
        lambda seed: plain_ip_adapter(CONTEXT_DIM, (), VIT_BIGG_EMBEDS, tokens=4, seed=seed),
    ),
    Preset("plus", "ip-adapter-plus_sdxl_vit-h.safetensors", Reads.HIDDEN_STATES, VIT_H_HIDDEN, _plus),
    Preset("plus face", "ip-adapter-plus-face_sdxl_vit-h.safetensors", Reads.HIDDEN_STATES, VIT_H_HIDDEN, _plus),
    Preset(
        "faceid", "ip-adapter-faceid_sdxl.safetensors", Reads.FACE, VIT_H_HIDDEN,
        lambda seed: faceid_ip_adapter(CONTEXT_DIM, (), ARCFACE_DIM, tokens=4, seed=seed), lora=True,
    ),
    Preset(
        "faceid plus v2", "ip-adapter-faceid-plusv2_sdxl.safetensors", Reads.FACE_AND_CROP, VIT_H_HIDDEN,
        lambda seed: faceid_plus_v2(CONTEXT_DIM, (), VIT_H_HIDDEN, ARCFACE_DIM, tokens=4, depth=4, seed=seed),
        lora=True,
    ),
    # ip-adapter-faceid-portrait_sdxl: FaceID's MLP with 16 tokens, and no LoRA weights in the file.
    Preset(
        "portrait", "ip-adapter-faceid-portrait_sdxl.safetensors", Reads.FACE, VIT_H_HIDDEN,
        lambda seed: faceid_ip_adapter(CONTEXT_DIM, (), ARCFACE_DIM, tokens=16, seed=seed),
    ),
)  # fmt: skip


def shared_kv(widths: tuple[int, ...], seed: int = 1) -> dict:
    """ip_adapter.{2n+1}.to_{k,v}_ip.weight of every layer, and FaceID's ip_adapter.{2n}.to_q_lora.* next to them.

    K/V weights are rescaled from the builder's std 0.1 to 1/√2048, the init a trained layer starts from. At 0.1 the
    ip logits reach tens, each softmax is nearly one-hot, and the random 70-layer UNet then amplifies fp32 rounding
    about 600-fold (1e-6 noise on every attention output moved its output by 6e-4), which no tolerance survives;
    at 1/√2048 the same noise moves it by 8e-8, as it does without an adapter.
    """
    state: dict = {}
    kv_layers(state, torch.Generator().manual_seed(seed), CONTEXT_DIM, widths, with_lora=True)
    rescale = (1.0 / math.sqrt(CONTEXT_DIM)) / BUILDER_KV_STD
    return {key: (value * rescale if "_ip." in key else value).half().float() for key, value in state.items()}


def preset_state(preset: Preset, kv: dict, seed: int) -> dict:
    """The preset's whole file, its values fp16 as h94 publishes them (held in fp32; save it with save_fp16)."""
    projection = {key: value.half().float() for key, value in preset.make_projection(seed).items()}
    return {**projection, **{key: value for key, value in kv.items() if preset.lora or "lora" not in key}}


def save_fp16(state: dict, path) -> None:
    from safetensors.torch import save_file

    save_file({key: value.half().contiguous() for key, value in state.items()}, str(path))


SD15_ONLY_PRESETS = ("light", "full face")


# --- inputs, fed directly ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Features:
    """What the encoders would give for one reference: CLIP features of the image (or face crop) and of a black
    image (the null input of hidden-state adapters), and the ArcFace embedding."""

    image: torch.Tensor  # (1, 224, 224, 3): stands for the reference; only the stand-in encoder looks at it
    face_crop: torch.Tensor  # (1, 256, 256, 3)
    image_embeds: torch.Tensor  # (1, clip embeds width)
    hidden_states: torch.Tensor  # (1, 257, hidden width)
    black_image_embeds: torch.Tensor
    black_hidden_states: torch.Tensor
    arcface: torch.Tensor  # (1, 512), L2-normalised


def features(preset: Preset, seed: int) -> Features:
    g = torch.Generator().manual_seed(seed)
    embeds = preset.clip_width if preset.reads == Reads.IMAGE_EMBEDS else VIT_H_EMBEDS
    hidden = VIT_BIGG_HIDDEN if preset.name == "vit-g" else VIT_H_HIDDEN
    arcface = torch.randn(1, ARCFACE_DIM, generator=g)
    return Features(
        image=torch.rand(1, 224, 224, 3, generator=g) * 0.9 + 0.05,
        face_crop=torch.rand(1, 256, 256, 3, generator=g) * 0.9 + 0.05,
        image_embeds=torch.randn(1, embeds, generator=g),
        hidden_states=torch.randn(1, CLIP_TOKENS, hidden, generator=g),
        black_image_embeds=torch.randn(1, embeds, generator=g),
        black_hidden_states=torch.randn(1, CLIP_TOKENS, hidden, generator=g),
        arcface=arcface / arcface.norm(dim=-1, keepdim=True),
    )


class FedClipVision:
    """Stands in for a CLIP vision model: an all-black image gets the black-image features, any other image the
    reference's. Both the pack and the peer then see exactly the same features."""

    def __init__(self, fed: Features) -> None:
        self.fed = fed

    def outputs(self, images: torch.Tensor) -> types.SimpleNamespace:
        black = not bool(images.abs().amax() > 0)
        embeds = self.fed.black_image_embeds if black else self.fed.image_embeds
        hidden = self.fed.black_hidden_states if black else self.fed.hidden_states
        rows = images.shape[0]
        return types.SimpleNamespace(
            image_embeds=embeds.expand(rows, -1).clone(),
            penultimate_hidden_states=hidden.expand(rows, -1, -1).clone(),
            last_hidden_state=hidden.expand(rows, -1, -1).clone(),
        )

    def encode_image(self, images: torch.Tensor, **kwargs) -> types.SimpleNamespace:
        return self.outputs(images)


def reference_tokens(preset: Preset, state: dict, fed: Features, shortcut: float = 1.0) -> tuple[torch.Tensor, ...]:
    """ID and null tokens by the plain formulas. Null inputs, as IP-Adapter and IPAdapter_plus use them: zero image
    embeds; the hidden states of a black image; a zero ArcFace vector (with the black image's hidden states for
    FaceID-Plus-v2)."""
    if preset.reads is Reads.IMAGE_EMBEDS:
        null = torch.zeros_like(fed.image_embeds)
        return plain.plain_tokens(state, fed.image_embeds), plain.plain_tokens(state, null)
    if preset.reads is Reads.HIDDEN_STATES:
        return plain.plus_tokens(state, fed.hidden_states), plain.plus_tokens(state, fed.black_hidden_states)
    null_face = torch.zeros_like(fed.arcface)
    if preset.reads is Reads.FACE:
        return plain.faceid_tokens(state, fed.arcface), plain.faceid_tokens(state, null_face)
    on = plain.faceid_plus_tokens(state, fed.arcface, fed.hidden_states, shortcut)
    return on, plain.faceid_plus_tokens(state, null_face, fed.black_hidden_states, shortcut)


def pack_applied_sources(
    model, adapter, preset: Preset, fed: Features, weight: float = 1.0, shortcut: float = 1.0, **options
):
    """The pack's applied sources for one reference with the apply node's default options (or SourceInputs
    `options`, e.g. weight_type, embeds_scaling), encoders stood in for."""
    from bolid_core.adapter import Source
    from bolid_core.adapter.tokens import ReferenceCombine
    from bolid_core.comfy.sources import SourceInputs, applied_sources
    from bolid_core.identity.embeds import FaceEmbeds

    face = image = None
    if preset.reads in (Reads.FACE, Reads.FACE_AND_CROP):
        face = FaceEmbeds(arcface=fed.arcface, crops=fed.face_crop)
    else:
        image = fed.image
    inputs = SourceInputs(
        clip_vision=FedClipVision(fed), image=image, face=face, body=None,
        weights={Source.IMAGE: weight, Source.FACE: weight, Source.BODY: weight},
        start_percent=0.0, end_percent=1.0, combine=ReferenceCombine("concat"), mask=None,
        faceid_v2_shortcut=shortcut, **options,
    )  # fmt: skip
    sources, regions = applied_sources(model, adapter, inputs)
    assert regions is None
    return sources
