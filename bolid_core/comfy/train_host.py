"""The ComfyUI training host: the adapter trained on the loaded MODEL, its cache filled by the loaded VAE, CLIP and
CLIP vision, the loop and losses from bolid_core.train; or the body VAE alone, or both (bolid_core.train.targets).

`ComfyDenoiser` runs the UNet the way sampling does (apply_model with the model's own conds), on a clone that adds
the trained adapter's term at every cross-attention layer; the user's MODEL is never patched. `train_adapter` is the
training node's one call.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import torch

from ..adapter.checkpoint import Adapter, Source
from ..body.pipeline import WeightingParams
from ..body.vae import BodyVAEConfig
from ..train.adapter_task import (
    AdapterAttention,
    AuxiliaryScorers,
    CacheKeys,
    NoiseSchedule,
    TextCondition,
)
from ..train.config import TrainConfig, TrainTarget
from ..train.dataset import (
    DatasetIndex,
    Encoder,
    PreprocessedDataset,
    build_cache,
    images_without_keypoints,
    listed,
    min_side_for,
    scan_dataset,
)
from ..train.loop import Trainer
from ..train.losses import PredictionType
from ..train.targets import (
    body_setup,
    body_vae_file,
    build_task,
    save_trained,
    start_body_vae,
    trains_adapter,
    trains_body_vae,
)
from ..train.targets import new_adapter as new_adapter_for
from .attn2 import attn2_layer_keys, wrapped_attention

log = logging.getLogger("bolid")

LossCallback = Callable[[int, int, dict[str, float]], None]
BODY_WEIGHTING = WeightingParams(sigma=0.08, alpha=0.25)  # the Body ID node's defaults


# --- the denoiser ---------------------------------------------------------------------------------------------


def noise_schedule(model: comfy.model_patcher.ModelPatcher) -> NoiseSchedule:
    """ᾱ_t = 1 / (1 + σ_t²) of the model's discrete sigmas, and what its UNet predicts."""
    sampling = model.get_model_object("model_sampling")
    discrete = isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete)
    edm_like = isinstance(sampling, (comfy.model_sampling.EDM, comfy.model_sampling.X0)) or isinstance(
        sampling, comfy.model_sampling.ModelSamplingDiscreteEDM
    )
    if not discrete or edm_like or not isinstance(sampling, comfy.model_sampling.EPS):
        raise ValueError(
            f"Training needs a model with a discrete DDPM schedule predicting ε or v (SD1.x/SDXL); this one samples "
            f"with {type(sampling).__name__}. Remove ModelSampling* patches, or use an SDXL/SD model."
        )
    prediction = (
        PredictionType.V_PREDICTION
        if isinstance(sampling, comfy.model_sampling.V_PREDICTION)
        else PredictionType.EPSILON
    )
    sigmas = sampling.sigmas.detach().float().cpu()
    return NoiseSchedule(1.0 / (1.0 + sigmas.square()), prediction)


class TrainingAttentionPatch:
    """attn2 replacement while training: the layer's own attention (or the patch it wraps) plus the adapter's term
    computed with gradients. Outside `AdapterAttention.using` it adds nothing."""

    def __init__(self, attention: AdapterAttention, layer: int, inner: Callable | None) -> None:
        self.attention, self.layer, self.inner = attention, layer, inner

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        out = wrapped_attention(self.inner, q, k, v, extra_options)
        if not self.attention.active:
            return out
        # The adapter trains in float32 whatever the UNet's dtype: its weights stay float32.
        return out + self.attention(self.layer, q.float(), extra_options["n_heads"]).to(out.dtype)

    def to(self, device: torch.device) -> TrainingAttentionPatch:
        if self.inner is not None and hasattr(self.inner, "to"):
            self.inner = self.inner.to(device)
        return self

    def models(self) -> list:
        return self.inner.models() if self.inner is not None and hasattr(self.inner, "models") else []

    def __deepcopy__(self, memo: dict) -> TrainingAttentionPatch:
        return self


def _unet_layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    blocks = [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
    return [layer for block in blocks for layer in block]


class ComfyDenoiser:
    """adapter_task.Denoiser on a clone of `model`: DDPM x_t and integer t in, ε or v out."""

    def __init__(
        self, model: comfy.model_patcher.ModelPatcher, attention: AdapterAttention, gradient_checkpointing: bool = False
    ) -> None:
        self.schedule = noise_schedule(model)
        self.attention = attention
        self.gradient_checkpointing = gradient_checkpointing
        layers = attn2_layer_keys(model)
        widths = tuple(width for _, width in layers)
        if widths != attention.adapter.spec.layer_widths:
            raise ValueError(
                f"The adapter has {len(attention.adapter.spec.layer_widths)} cross-attention layers of widths "
                f"{attention.adapter.spec.layer_widths}; the model has {widths}. Resume or train on the same model."
            )
        self.patcher = model.clone()
        existing = self.patcher.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
        for layer, (key, _) in enumerate(layers):
            inner = existing.get(key, existing.get(key[:2]))
            self.patcher.set_model_attn2_replace(TrainingAttentionPatch(attention, layer, inner), *key)
        self._prepared = False

    @property
    def device(self) -> torch.device:
        return self.patcher.load_device

    def prepare(self) -> None:
        """Load the clone with its weight patches (LoRA, ...) applied, as sampling would. Weights ComfyUI made under
        inference mode cannot take part in a backward pass: they are replaced by equal ordinary tensors."""
        comfy.model_management.load_models_gpu([self.patcher])
        if not self._prepared:
            with torch.inference_mode(False):
                _make_autograd_safe(self.patcher.get_model_object("diffusion_model"))
            self._prepared = True

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Around a training run: the model loaded, its blocks checkpointed when asked (restored after)."""
        self.prepare()
        wrapped = []
        try:
            if self.gradient_checkpointing:
                for layer in _unet_layers(self.patcher.get_model_object("diffusion_model")):
                    layer.forward = self._checkpointed(layer.forward)
                    wrapped.append(layer)
            yield
        finally:
            for layer in wrapped:
                del layer.forward

    def _checkpointed(self, forward: Callable) -> Callable:
        attention = self.attention

        def run(*args, **kwargs):
            if not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            # The recomputation runs during backward, after `using` has ended and after the UNet has moved on to
            # other blocks: it gets this forward's tokens back, and its own copy of transformer_options (which
            # names the block whose attn2 patch applies).
            tokens = attention.tokens
            args = tuple(dict(arg) if isinstance(arg, dict) else arg for arg in args)
            kwargs = {name: dict(arg) if isinstance(arg, dict) else arg for name, arg in kwargs.items()}

            def recomputable(*args, **kwargs):
                with attention.using(tokens) if tokens is not None else contextlib.nullcontext():
                    return forward(*args, **kwargs)

            return torch.utils.checkpoint.checkpoint(recomputable, *args, use_reentrant=False, **kwargs)

        return run

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: TextCondition) -> torch.Tensor:
        if not self._prepared:
            self.prepare()
        base = self.patcher.model
        sampling = self.patcher.get_model_object("model_sampling")
        device = self.device
        sigma = sampling.sigmas.to(device)[timesteps.to(device)].float()
        scale = sigma.reshape(-1, 1, 1, 1)
        # DDPM x_t = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε with ᾱ = 1/(1 + σ²) is x/sqrt(1 + σ²) for ComfyUI's x = x0 + σ·ε.
        x = noisy.to(device).float() * (1.0 + scale.square()).sqrt()
        height, width = x.shape[-2:]
        conds = base.extra_conds(
            pooled_output=text.pooled.to(device), cross_attn=text.context.to(device), noise=x, device=device,
            width=width * 8, height=height * 8, prompt_type="positive",
        )  # fmt: skip
        kwargs = {name: cond.process_cond(batch_size=x.shape[0], device=device).cond for name, cond in conds.items()}
        context = kwargs.pop("c_crossattn")
        options = dict(self.patcher.model_options["transformer_options"])
        options.update(cond_or_uncond=[0], sigmas=sigma)
        denoised = base.apply_model(x, sigma, c_crossattn=context, transformer_options=options, **kwargs)
        eps = (x - denoised.float()) / scale
        if self.schedule.prediction is PredictionType.EPSILON:
            return eps
        alpha_bar = 1.0 / (1.0 + scale.square())
        return alpha_bar.sqrt() * eps - (1.0 - alpha_bar).sqrt() * denoised.float()  # v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x0


def _make_autograd_safe(module: torch.nn.Module) -> None:
    for sub in module.modules():
        for name, parameter in list(sub._parameters.items()):
            if parameter is not None and parameter.is_inference():
                sub._parameters[name] = torch.nn.Parameter(parameter.clone(), requires_grad=False)
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None and buffer.is_inference():
                sub._buffers[name] = buffer.clone()


# --- encoders from ComfyUI objects ----------------------------------------------------------------------------


def weights_fingerprint(module: torch.nn.Module, samples: int = 16) -> str:
    """Names, shapes and a strided sample of values of `samples` evenly spread tensors: changes with the weights,
    at a cost independent of the model's size."""
    digest = hashlib.sha256()
    tensors = list(module.state_dict().items())
    digest.update(repr([(name, tuple(t.shape), str(t.dtype)) for name, t in tensors]).encode())
    if tensors:
        stride = max(1, len(tensors) // samples)
        for _, tensor in tensors[::stride]:
            flat = tensor.detach().flatten()
            values = flat[:: max(1, flat.numel() // 4096)].float().cpu()
            digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:24]


def _patches_fingerprint(patcher) -> str:
    patches = getattr(patcher, "patches", {}) or {}
    digest = hashlib.sha256(repr(sorted(patches)).encode())
    digest.update(str(getattr(patcher, "patches_uuid", "")).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class TrainingModels:
    model: comfy.model_patcher.ModelPatcher
    vae: object  # comfy.sd.VAE
    clip: object  # comfy.sd.CLIP
    clip_vision: object | None = None
    face_analyzer: object | None = None
    pose_model: object | None = None
    body_encoder: object | None = None  # bolid_core.body.vae.BodyEncoder


def encode_text(clip, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        context, pooled = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)
    return context.float().cpu(), pooled.float().cpu()


def _clip_image(clip_vision) -> Callable[[torch.Tensor], torch.Tensor]:
    def embed(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return clip_vision.encode_image(pixels).image_embeds.float().cpu()

    return embed


def _clip_vision_width(clip_vision) -> int | None:
    projection = getattr(clip_vision.model, "visual_projection", None)
    return getattr(projection, "out_features", None)


def check_models(models: TrainingModels, config: TrainConfig) -> None:
    """The inputs config.target needs are connected; otherwise say which to connect. (A body target's pose model is
    checked against the dataset: `check_pose_source`.)"""
    target = config.target
    if target is TrainTarget.BASE_UNET:
        raise ValueError(
            "Training target 'base_unet' trains a diffusers UNet's own weights and runs from the command line only "
            "(python -m bolid_core.train); this node trains adapters on the loaded MODEL: pick another target."
        )
    if _clip_loss_on(models, config):
        _check_clip_loss_space(models)
    if target is TrainTarget.JOINT and not config.adapter.body_tokens:
        raise ValueError(
            "Training target 'adapter_and_body_vae' trains the body VAE through the adapter's body source, but "
            "adapter.body_tokens is 0 in the training config: give it tokens, or pick the target 'body_vae'."
        )


def _clip_loss_on(models: TrainingModels, config: TrainConfig) -> bool:
    """L_CLIP trains the adapter, and needs a CLIP vision model to embed the decoded image."""
    return trains_adapter(config.target) and config.loss.beta_clip > 0 and models.clip_vision is not None


def _check_clip_loss_space(models: TrainingModels) -> None:
    """L_CLIP compares the decoded image's CLIP-vision embedding with the caption's pooled text embedding: both must
    come from one CLIP, so one width. SDXL's pooled text is CLIP-G's (1280): ViT-bigG matches it, ViT-H (1024) not."""
    if getattr(getattr(models.clip_vision.model, "vision_model", None), "output_layernorm", False):
        raise ValueError(
            "loss beta_clip > 0 (L_CLIP) needs a CLIP vision model with a class token and a projection; the connected "
            "clip_vision is SigLIP. For SDXL connect CLIP-ViT-bigG-14 as clip_vision, or set beta_clip to 0."
        )
    vision_width = _clip_vision_width(models.clip_vision)
    _, pooled = encode_text(models.clip, "")
    if vision_width != pooled.shape[-1]:
        raise ValueError(
            f"loss beta_clip > 0 (L_CLIP) compares the image's CLIP-vision embedding ({vision_width} wide) with the "
            f"caption's pooled text embedding ({pooled.shape[-1]} wide), which must come from the same CLIP. For "
            "SDXL connect CLIP-ViT-bigG-14 as clip_vision, or set beta_clip to 0."
        )


def check_pose_source(models: TrainingModels, config: TrainConfig, index: DatasetIndex) -> None:
    """A body VAE that trains reads every image's pose keypoints: from its <stem>.keypoints.json, else from the
    connected pose_model; without one, every image must have its keypoints file."""
    if not trains_body_vae(config.target) or models.pose_model is not None:
        return
    missing = images_without_keypoints(index)
    if missing:
        raise ValueError(
            f"Training target '{config.target.value}' trains the body VAE on pose keypoints: connect pose_model (BoLID "
            f"Pose Model Loader), or write <stem>.keypoints.json beside the {len(missing)} image(s) without one "
            f"({listed(missing)}), or pick the target 'adapter'."
        )


def adapter_sources(models: TrainingModels, config: TrainConfig, keypoint_files: bool = False) -> dict[Source, int]:
    """The sources a new adapter gets: those with tokens in config.adapter whose inputs are connected. The body
    source needs pose keypoints (pose_model, or `keypoint_files`: every image has its keypoints file) and a body
    VAE: the connected body_encoder, or the one a body target trains."""
    shape, wanted = config.adapter, {}
    missing = []
    if shape.image_tokens:
        if models.clip_vision:
            wanted[Source.IMAGE] = shape.image_tokens
        else:
            missing.append("image")
    if shape.face_tokens:
        if models.clip_vision and models.face_analyzer:
            wanted[Source.FACE] = shape.face_tokens
        else:
            missing.append("face")
    if shape.body_tokens:
        if (models.pose_model or keypoint_files) and (models.body_encoder or trains_body_vae(config.target)):
            wanted[Source.BODY] = shape.body_tokens
        else:
            missing.append("body")
    if missing:
        log.info("BoLID training: no %s source (its inputs are not connected).", ", ".join(missing))
    if not wanted:
        raise ValueError(
            "The adapter would have no source: connect clip_vision (image), clip_vision + face_analyzer (face) or "
            "pose_model + body_encoder (body), with a token count above 0 for it."
        )
    return wanted


def build_encoders(
    models: TrainingModels, config: TrainConfig, sources: Mapping[Source, int], body_vae: BodyVAEConfig | None = None
) -> dict[str, Encoder]:
    """The cache's encoders: latents and captions when the adapter trains, the sources' inputs, and the body VAE's
    keypoints and weighted views (shaped by `body_vae`) when a body VAE is read or trained."""
    from ..train import encoders as host_free

    resolution = config.data.resolution
    encoders = {}
    if trains_adapter(config.target):
        base = models.model.model
        vae_print = f"vae:{weights_fingerprint(models.vae.first_stage_model)}:{type(base.latent_format).__name__}"
        clip_print = (
            f"clip:{weights_fingerprint(models.clip.cond_stage_model)}:{_patches_fingerprint(models.clip.patcher)}"
            f":{getattr(models.clip, 'layer_idx', None)}"
        )

        def encode_latents(pixels: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return base.process_latent_in(models.vae.encode(pixels[..., :3])).float().cpu()

        encoders[CacheKeys.LATENTS] = host_free.latents_encoder(encode_latents, vae_print, resolution)
        encoders[CacheKeys.TEXT] = host_free.text_encoder(lambda caption: encode_text(models.clip, caption), clip_print)
    if Source.IMAGE in sources or Source.FACE in sources:
        vision_print = f"clip_vision:{weights_fingerprint(models.clip_vision.model)}"
        clip_image = _clip_image(models.clip_vision)
        if models.face_analyzer is not None:
            face_print = f"face:{getattr(models.face_analyzer, 'pack_dir', type(models.face_analyzer).__name__)}"
            encoders[CacheKeys.FACE] = host_free.face_encoder(models.face_analyzer, face_print, resolution)
        hide_face = CacheKeys.FACE in encoders
        encoders[CacheKeys.STYLE] = host_free.style_encoder(clip_image, vision_print, resolution, hide_face=hide_face)
    if body_vae is not None:
        if models.pose_model is not None:
            yolo = getattr(models.pose_model, "yolo", None)
            pose_print = f"pose:{getattr(yolo, 'ckpt_path', None) or weights_fingerprint(yolo.model)}"
        else:  # every image has its keypoints file (check_pose_source, adapter_sources)
            pose_print = host_free.KEYPOINT_FILES_ONLY
        encoders[CacheKeys.POSE] = host_free.pose_encoder(models.pose_model, pose_print, resolution)
        encoders[CacheKeys.BODY_VIEW] = host_free.body_view_encoder(
            f"body:{body_vae.image_size}:{body_vae.map_size}", body_vae.image_size, body_vae.map_size, BODY_WEIGHTING
        )
    if _clip_loss_on(models, config):
        encoders[CacheKeys.CAPTION_CLIP] = host_free.caption_clip_encoder(  # widths checked by check_models
            lambda caption: encode_text(models.clip, caption)[1], f"caption:{clip_print}"
        )
    return encoders


def auxiliary_scorers(models: TrainingModels, config: TrainConfig) -> AuxiliaryScorers | None:
    """What L_id (pose keypoints of the decoded x0) and L_CLIP (its CLIP image embeds) need, differentiably; None
    when neither term is on."""
    if config.loss.alpha_id <= 0 and config.loss.beta_clip <= 0:
        return None
    base, vae = models.model.model, models.vae

    def decode(latents: torch.Tensor) -> torch.Tensor:
        autoencoder = vae.first_stage_model
        raw = base.process_latent_out(latents).to(vae.device, vae.vae_dtype)
        images = autoencoder.decode(raw).float()
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)

    pose_people = None
    if config.loss.alpha_id > 0 and models.pose_model is not None:
        from ..body.pose_training import pose_people as detect

        pose_people = lambda images: detect(models.pose_model, images)  # noqa: E731
    clip_image = None
    if config.loss.beta_clip > 0 and models.clip_vision is not None:
        from comfy.clip_vision import clip_preprocess

        vision = models.clip_vision

        def clip_image(images: torch.Tensor) -> torch.Tensor:
            pixels = clip_preprocess(
                images.to(vision.load_device), size=vision.image_size, mean=vision.image_mean, std=vision.image_std
            )
            return image_embeds_with_grad(vision.model, pixels.float()).float()

    with torch.inference_mode(False):  # ComfyUI loads models under inference mode: see _make_autograd_safe
        _make_autograd_safe(vae.first_stage_model)
        if clip_image is not None:
            _make_autograd_safe(models.clip_vision.model)
    return AuxiliaryScorers(decode, pose_people, clip_image)


def image_embeds_with_grad(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """ComfyUI's CLIPVisionModelProjection image embeds (post-LayerNorm class token, projected), computed out of
    place: its CLIPLayer adds the residuals in place (`x += ...`), which autograd refuses once LayerNorm has saved x."""
    from comfy.ldm.modules.attention import optimized_attention_for_device

    vision = model.vision_model  # CLIP, not SigLIP: check_models refuses the latter
    x = vision.pre_layrnorm(vision.embeddings(pixels))
    attention = optimized_attention_for_device(x.device, mask=False, small_input=True)
    for layer in vision.encoder.layers:
        x = x + layer.self_attn(layer.layer_norm1(x), None, attention)
        x = x + layer.mlp(layer.layer_norm2(x))
    return model.visual_projection(vision.post_layernorm(x[:, 0, :]))


# --- one training run -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRun:
    dataset_root: Path
    adapter_path: Path  # where the finished adapter is written (atomically); a trained body VAE goes beside it
    run_dir: Path  # its checkpoints go to run_dir / "checkpoints"
    cache_dir: Path
    config: TrainConfig
    resume: bool = False

    @property
    def body_vae_path(self) -> Path:
        """Where a trained body VAE is written: <adapter stem>_body_vae.safetensors beside the adapter."""
        return body_vae_file(self.adapter_path)


@dataclass(frozen=True)
class TrainingResult:
    adapter_path: Path | None  # None when only the body VAE trained
    body_vae_path: Path | None  # None when the body VAE did not train
    history: list[dict[str, float]]

    @property
    def written(self) -> list[Path]:
        return [path for path in (self.adapter_path, self.body_vae_path) if path is not None]


def new_adapter(
    model: comfy.model_patcher.ModelPatcher,
    sources: Mapping[Source, int],
    dataset: PreprocessedDataset,
    config: TrainConfig,
    body_dim: int | None = None,
) -> Adapter:
    """An adapter shaped by the model's layers and the widths the cache holds, K/V started from the text K/V."""
    from comfy.ldm.modules.attention import BasicTransformerBlock

    layers = attn2_layer_keys(model)
    unet = model.get_model_object("diffusion_model")
    blocks = {"input": unet.input_blocks, "output": unet.output_blocks, "middle": [unet.middle_block]}
    text_kv = []
    for (name, number, index), _ in layers:
        block = [m for m in blocks[name][number].modules() if isinstance(m, BasicTransformerBlock)][index]
        text_kv.append((block.attn2.to_k.weight.detach().float(), block.attn2.to_v.weight.detach().float()))
    context_dim = model.model.model_config.unet_config["context_dim"]
    widths = tuple(width for _, width in layers)
    return new_adapter_for(config, sources, dataset[0].tensors, context_dim, widths, body_dim, text_kv)


def train_adapter(
    models: TrainingModels,
    run: TrainingRun,
    *,
    cache_progress: Callable[[int, int], None] | None = None,
    on_step: LossCallback | None = None,
    check_interrupt: Callable[[], object] | None = None,
) -> TrainingResult:
    """Scan the dataset, fill the cache, train config.target (resuming from the run's newest checkpoint when asked),
    write what it trained: the adapter, the body VAE (run.body_vae_path), or both. Interrupted, the Trainer
    checkpoints the last completed step and the error propagates."""
    config = run.config
    target = config.target
    check_models(models, config)
    with torch.inference_mode(False), torch.enable_grad():
        index = scan_dataset(
            run.dataset_root, min_views=config.data.min_views, min_side=min_side_for(config.data.resolution)
        )
        check_pose_source(models, config, index)
        keypoint_files = not images_without_keypoints(index)
        sources = adapter_sources(models, config, keypoint_files) if trains_adapter(target) else {}
        body_vae = None
        if trains_body_vae(target):
            body_vae = start_body_vae(config, models.body_encoder.vae if models.body_encoder is not None else None)
        elif Source.BODY in sources:
            body_vae = models.body_encoder.vae
        encoders = build_encoders(models, config, sources, body_vae.config if body_vae is not None else None)
        dataset = build_cache(index, run.cache_dir, encoders, cache_progress, check_interrupt)

        modules, adapter, denoiser, null_text, scorers = {}, None, None, None, None
        device = comfy.model_management.get_torch_device()
        if trains_adapter(target):
            body_dim = body_vae.config.latent_dim if body_vae is not None else None
            adapter = new_adapter(models.model, sources, dataset, config, body_dim)
            denoiser = ComfyDenoiser(models.model, AdapterAttention(adapter), config.gradient_checkpointing)
            device = denoiser.device
            adapter.to(device).train().requires_grad_(True)
            modules["adapter"] = adapter
            null_context, null_pooled = encode_text(models.clip, "")
            null_text = TextCondition(null_context[0], null_pooled[0])
            scorers = auxiliary_scorers(models, config)
        if body_vae is not None:
            body_vae.to(device)
        body = body_setup(target, body_vae, dataset, config.body.views)
        modules.update(body.modules)
        task = build_task(config, denoiser, null_text, scorers, body_vae)
        trainer = Trainer(
            config, modules, dataset, task, body.collate,
            checkpoint_dir=run.run_dir / "checkpoints", progress=on_step, check_interrupt=check_interrupt,
            interrupt_errors=(comfy.model_management.InterruptProcessingException,),
        )  # fmt: skip
        if run.resume and trainer.resume() is None:
            raise ValueError(f"No complete checkpoint in {run.run_dir / 'checkpoints'} to resume from.")
        with denoiser.session() if denoiser is not None else contextlib.nullcontext():
            history = trainer.train()  # a Cancel checkpoints, then reaches ComfyUI as the Cancel it is
        written = save_trained(target, run.adapter_path, adapter, body_vae)
    return TrainingResult(written.adapter, written.body_vae, history)


def with_overrides(config: TrainConfig, top: Mapping[str, object] | None = None, **sections) -> TrainConfig:
    """config with top-level fields and fields of its sections replaced (plain values), checked again."""
    data = config.to_dict()
    data.update(top or {})
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    return TrainConfig.from_dict(data)
