"""What each training target (config.target) trains, reads and writes, the same for every host (the ComfyUI node,
the diffusers CLI):

- `adapter`: the adapter; a body source reads c_body from a frozen body VAE, once per person before training;
- `body_vae`: the body VAE alone (its ELBO over keypoint-weighted views); no UNet, no adapter file;
- `adapter_and_body_vae`: both, c_body computed through the VAE with gradients every step (AdapterTask JOINT);
- `base_unet`: the diffusers UNet's own weights on the cached latents and captions (BaseUNetTask), the command line
  only; written as the diffusers folder `<run.name>_unet/` in the output folder.

A body VAE trained here is written beside the adapter as `<adapter stem>_body_vae.safetensors` (the CLI's
`<run.name>_body_vae.safetensors` in its output folder; the node's models/bolid/<adapter_name>_body_vae.safetensors).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..adapter.checkpoint import Adapter, AdapterKind, AdapterSpec, ClipInput, Source, new_bolid_adapter
from ..body.vae import BodyVAE, BodyVAEConfig, save_body_vae
from .adapter_task import (
    AdapterCollate,
    AdapterTask,
    AuxiliaryScorers,
    BaseUNetTask,
    BodyLossWeights,
    CacheKeys,
    Denoiser,
    LossWeights,
    TextCondition,
    frozen_body_vectors,
    init_kv_from_text,
)
from .config import TrainConfig, TrainTarget
from .dropout import ConditionDropout
from .losses import AuxLossSchedule

BODY_VAE_SUFFIX = "_body_vae"


def trains_adapter(target: TrainTarget) -> bool:
    return target in (TrainTarget.ADAPTER, TrainTarget.JOINT)


def trains_body_vae(target: TrainTarget) -> bool:
    return target in (TrainTarget.BODY_VAE, TrainTarget.JOINT)


def trains_base_unet(target: TrainTarget) -> bool:
    return target is TrainTarget.BASE_UNET


def body_vae_file(adapter_file: str | Path) -> Path:
    """The trained body VAE's file: `<stem>_body_vae.safetensors` in the adapter file's folder."""
    adapter_file = Path(adapter_file)
    stem = adapter_file.name.removesuffix(".safetensors")
    return adapter_file.with_name(f"{stem}{BODY_VAE_SUFFIX}.safetensors")


def start_body_vae(config: TrainConfig, start: BodyVAE | None = None) -> BodyVAE:
    """The body VAE a body target trains: a copy of `start` (so a model the caller still holds, such as a loader's
    cached output, keeps its weights) continued from its weights and shape, or a new one of config.body.latent_dim
    and config.body.image_size drawn from config.seed."""
    if start is not None:
        vae = copy.deepcopy(start)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            vae = BodyVAE(BodyVAEConfig(latent_dim=config.body.latent_dim, image_size=config.body.image_size))
    return vae.float().train().requires_grad_(True)


def new_adapter(
    config: TrainConfig,
    sources: Mapping[Source, int],
    first_example: Mapping[str, Mapping[str, torch.Tensor]],
    context_dim: int,
    layer_widths: tuple[int, ...],
    body_dim: int | None = None,
    text_kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Adapter:
    """A new adapter with `sources` (token counts) for a UNet of this text width and these attn2 widths, reading the
    widths the cache holds (`first_example`: one example's tensors), drawn from config.seed without moving the global
    RNG, its K/V started from the layers' text K/V (`text_kv`) when config.adapter.init_kv_from_text says so."""
    shape = config.adapter
    style = first_example.get(CacheKeys.STYLE, {}).get("image_embeds")
    face = first_example.get(CacheKeys.FACE, {}).get("arcface")
    reads_clip = Source.IMAGE in sources or Source.FACE in sources
    has_face = Source.FACE in sources
    spec = AdapterSpec(
        AdapterKind.BOLID, context_dim, tuple(layer_widths), dict(sources),
        clip_dim=style.shape[-1] if reads_clip and style is not None else None,
        clip_input=ClipInput.EMBEDS if reads_clip else None,
        face_dim=face.shape[-1] if has_face and face is not None else None,
        body_dim=body_dim if Source.BODY in sources else None,
        fusion_dim=shape.fusion_dim if has_face else None,
        text_dim=first_example[CacheKeys.TEXT]["pooled"].shape[-1] if has_face and shape.text_prior else None,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        adapter = new_bolid_adapter(spec)
    if shape.init_kv_from_text and text_kv is not None:
        init_kv_from_text(adapter, text_kv)
    return adapter


@dataclass
class BodySetup:
    """The body VAE's part of a run: modules to add to the Trainer's, and the collate that feeds the task."""

    modules: dict[str, nn.Module]
    collate: AdapterCollate


def body_setup(target: TrainTarget, body_vae: BodyVAE | None, dataset, views: int) -> BodySetup:
    """A trained VAE is a Trainer module (so checkpoints hold it and resume restores it) and reads each sample's
    views; a frozen one gives each person's c_body once, before training; without one the batch has no c_body."""
    if trains_body_vae(target):
        if body_vae is None:
            raise ValueError(f"Training target {target.value} needs a body VAE to train.")
        body_vae.train().requires_grad_(True)
        return BodySetup({"body_vae": body_vae}, AdapterCollate(dataset=dataset, body_views=views))
    if body_vae is not None:
        body_vae.eval().requires_grad_(False)
        return BodySetup({}, AdapterCollate(body_vectors=frozen_body_vectors(body_vae, dataset, views)))
    return BodySetup({}, AdapterCollate())


def build_task(
    config: TrainConfig,
    denoiser: Denoiser | None = None,
    null_text: TextCondition | None = None,
    scorers: AuxiliaryScorers | None = None,
    body_vae: BodyVAE | None = None,
    shard: tuple[int, int] = (0, 1),
) -> AdapterTask | BaseUNetTask:
    """The Trainer's compute_loss for config.target, every weight and schedule read from the config."""
    loss, rates = config.loss, config.dropout
    if trains_base_unet(config.target):
        return BaseUNetTask(denoiser, null_text, rates.text, shard=shard)
    return AdapterTask(
        config.target,
        ConditionDropout(image=rates.image, face=rates.face, body=rates.body, text=rates.text),
        LossWeights(loss.alpha_id, loss.beta_clip, loss.prior_weight),
        denoiser,
        null_text,
        AuxLossSchedule(loss.id_every_steps, *loss.id_timesteps),
        AuxLossSchedule(loss.clip_every_steps, *loss.clip_timesteps),
        scorers,
        body_vae if trains_body_vae(config.target) else None,
        BodyLossWeights(kl=config.body.kl_weight, joint=config.body.joint_weight),
        shard=shard,
        body_views=config.body.views,
    )


@dataclass(frozen=True)
class WrittenFiles:
    adapter: Path | None = None
    body_vae: Path | None = None

    @property
    def paths(self) -> list[Path]:
        return [path for path in (self.adapter, self.body_vae) if path is not None]


def save_trained(
    target: TrainTarget, adapter_file: str | Path, adapter: nn.Module | None, body_vae: BodyVAE | None
) -> WrittenFiles:
    """Write what `target` trained, each file atomically: the adapter to `adapter_file`, the body VAE beside it
    (body_vae_file). Moved to the CPU first; the caller's modules stay where they are."""
    from ..adapter.checkpoint import save_adapter

    adapter_path = body_path = None
    if trains_adapter(target):
        if adapter is None:
            raise ValueError(f"Training target {target.value} trains an adapter, but there is none to save.")
        adapter_path = Path(adapter_file)
        save_adapter(copy.deepcopy(adapter).cpu(), adapter_path)
    if trains_body_vae(target):
        if body_vae is None:
            raise ValueError(f"Training target {target.value} trains a body VAE, but there is none to save.")
        body_path = body_vae_file(adapter_file)
        save_body_vae(copy.deepcopy(body_vae).cpu(), body_path)
    return WrittenFiles(adapter_path, body_path)


__all__ = [
    "BODY_VAE_SUFFIX", "BodySetup", "WrittenFiles", "body_setup", "body_vae_file", "build_task", "new_adapter",
    "save_trained", "start_body_vae", "trains_adapter", "trains_base_unet", "trains_body_vae",
]  # fmt: skip
