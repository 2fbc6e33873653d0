"""One training step of the adapter and of the body VAE, host-independent: BoLID eq. 14, FaceStudio §3.3.

A host (the ComfyUI node, the diffusers CLI) supplies
- encoders, which fill the preprocessing cache under the names below (`CacheKeys` says which tensors each gives);
- a `Denoiser`: its UNet with `AdapterAttention` called at every cross-attention layer, and its noise schedule;
- optionally `AuxiliaryScorers` for L_id and L_CLIP (decode x0, find pose keypoints, embed with CLIP).
This module owns what is the same for every host: sampling timesteps and noise, condition dropout, the adapter's
tokens with gradients, the losses and the body VAE's ELBO.
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..adapter.checkpoint import Adapter, Source
from ..attention import SourceKV, adapter_attention
from ..body.vae import BodyVAE, kl_divergence
from .config import TrainTarget
from .dropout import ConditionDropout, ConditionSource
from .losses import (
    AuxLossSchedule,
    PredictionType,
    clip_loss,
    diffusion_loss,
    diffusion_target,
    keypoint_identity_loss,
    match_person,
    matched_keypoints,
    predicted_x0,
    total_loss,
)


class CacheKeys:
    """Encoder names of the preprocessing cache, and the tensors each must give per image (no batch axis)."""

    LATENTS = "latents"  # "latents": (C, h, w) in the model's latent space (VAE output, scaled as the UNet reads it)
    TEXT = "text"  # "context": (tokens, context_dim), "pooled": (pooled_dim,): the caption, as the UNet reads it
    STYLE = "style"  # "image_embeds": (clip_dim,): CLIP-vision image embeds of the image with its face hidden
    FACE = "face"  # "arcface": (face_dim,), "found": (): ArcFace of the face crop; zeros and 0 without a face
    POSE = "pose"  # "keypoints": (17, 3): the main person, x and y in fractions of the image, confidence
    BODY_VIEW = "body_view"  # "weighted": (S, S, 3) keypoint-weighted view, "keypoints": (17, 3), "confidence": (),
    #                          "weight_map": (m, m): the body VAE's input and its reconstruction target
    CAPTION_CLIP = "caption_clip"  # "text_embeds": (d,): the caption in the shared CLIP space, for L_CLIP


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete DDPM schedule: ᾱ_t for t = 0 … T − 1, and what the UNet predicts."""

    alphas_cumprod: torch.Tensor  # (T,)
    prediction: PredictionType = PredictionType.EPSILON

    def __post_init__(self) -> None:
        ab = self.alphas_cumprod
        if ab.ndim != 1 or ab.numel() < 2 or not bool(((ab > 0) & (ab <= 1)).all()):
            raise ValueError("The noise schedule's alphas_cumprod must be a (T,) tensor of values in (0, 1].")

    @property
    def steps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def alpha_bar(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(timesteps.device)[timesteps].float()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε (DDPM eq. 4)."""
        ab = self.alpha_bar(timesteps).to(x0.device).reshape(-1, *([1] * (x0.ndim - 1)))
        return (ab.sqrt() * x0.float() + (1 - ab).sqrt() * noise.float()).to(x0.dtype)


@dataclass(frozen=True)
class TextCondition:
    context: torch.Tensor  # (B, tokens, context_dim)
    pooled: torch.Tensor  # (B, pooled_dim)


class AdapterAttention:
    """What every host's cross-attention layer adds to its text attention: Σ_s λ_s·Attn(Q, K_s, V_s) (BoLID's
    multi-source decoupled cross-attention), K_s and V_s projected with gradients from the current forward's tokens.

    The ComfyUI training patch and the diffusers attention processor both call this, so both hosts train the same
    function; inference (bolid_core.comfy.attn2) reaches the same `adapter_attention` with cached K/V.
    """

    def __init__(self, adapter: Adapter, weights: Mapping[Source, float] | None = None) -> None:
        self.adapter = adapter
        self.weights = {source: 1.0 for source in adapter.spec.sources}
        self.weights.update(weights or {})
        self._tokens: Mapping[Source, torch.Tensor] | None = None

    @contextlib.contextmanager
    def using(self, tokens: Mapping[Source, torch.Tensor]) -> Iterator[None]:
        """Tokens (B, n_s, context_dim) per source for the forwards run inside this block."""
        previous, self._tokens = self._tokens, dict(tokens)
        try:
            yield
        finally:
            self._tokens = previous

    @property
    def active(self) -> bool:
        return self._tokens is not None

    @property
    def tokens(self) -> Mapping[Source, torch.Tensor] | None:
        """The tokens of the forward in progress (a host's activation checkpointing re-enters `using` with them)."""
        return self._tokens

    def __call__(self, layer: int, query: torch.Tensor, heads: int) -> torch.Tensor:
        """(B, queries, heads·dim) → the adapter's term, shaped like `query`; zeros outside `using`."""
        if self._tokens is None:
            return torch.zeros_like(query)
        batch = query.shape[0]
        sources = []
        for source, tokens in self._tokens.items():
            if tokens.shape[0] not in (1, batch):
                raise ValueError(f"The {source.value} tokens are a batch of {tokens.shape[0]}; the UNet's is {batch}.")
            kv = self.adapter.kv(layer, source)
            tokens = tokens.to(query.dtype)
            weight = float(self.weights[source])
            if weight == 0:
                continue
            scale = torch.full((batch,), weight, device=query.device)
            sources.append(SourceKV(kv.to_k(tokens), kv.to_v(tokens), scale, known_active=True))
        return adapter_attention(query, sources, heads)


class Denoiser(typing.Protocol):
    """A host's UNet with `attention` called at each cross-attention layer, in its own parameterisation."""

    schedule: NoiseSchedule
    attention: AdapterAttention | None

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: TextCondition) -> torch.Tensor:
        """x_t (B, C, h, w), integer DDPM timesteps (B,) → ε or v, as `schedule.prediction` says."""
        ...


@dataclass(frozen=True)
class AuxiliaryScorers:
    """What L_id and L_CLIP need from the host, all differentiable in their image input."""

    decode: Callable[[torch.Tensor], torch.Tensor]  # model latents (B, C, h, w) → images (B, H, W, 3) in [0, 1]
    pose_people: Callable[[torch.Tensor], Sequence[torch.Tensor]] | None = None  # images → per image (P, 17, ≥2)
    clip_image: Callable[[torch.Tensor], torch.Tensor] | None = None  # images → (B, d) in the shared CLIP space


@dataclass(frozen=True)
class BodyLossWeights:
    kl: float = 1.0  # the ELBO's KL weight
    keypoints: float = 1.0
    visibility: float = 1.0
    weight_map: float = 1.0
    joint: float = 1.0  # weight of the body VAE's loss beside L when both train


@dataclass
class TrainBatch:
    """A collated batch; absent sources are None."""

    persons: list[str]
    latents: torch.Tensor | None = None
    context: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    style: torch.Tensor | None = None
    arcface: torch.Tensor | None = None
    keypoints: torch.Tensor | None = None
    caption_clip: torch.Tensor | None = None
    c_body: torch.Tensor | None = None  # (B, D), fixed per person when the body VAE is frozen
    body_views: list[dict[str, torch.Tensor]] | None = None  # per sample, the person's stacked views


def _stack(examples: Sequence, encoder: str, key: str) -> torch.Tensor | None:
    if not all(encoder in example.tensors for example in examples):
        return None
    return torch.stack([example.tensors[encoder][key] for example in examples])


class AdapterCollate:
    """Examples → TrainBatch. `body_vectors` (person → (1, D)) serves a frozen body VAE; with `dataset` and
    `body_views` > 0 each sample instead carries its person's first `body_views` views for the VAE to encode."""

    def __init__(
        self,
        body_vectors: Mapping[str, torch.Tensor] | None = None,
        dataset=None,
        body_views: int = 0,
    ) -> None:
        self.body_vectors, self.dataset, self.body_views = body_vectors, dataset, body_views

    def __call__(self, examples: Sequence) -> TrainBatch:
        batch = TrainBatch(
            persons=[example.person for example in examples],
            latents=_stack(examples, CacheKeys.LATENTS, "latents"),
            context=_stack(examples, CacheKeys.TEXT, "context"),
            pooled=_stack(examples, CacheKeys.TEXT, "pooled"),
            style=_stack(examples, CacheKeys.STYLE, "image_embeds"),
            arcface=_stack(examples, CacheKeys.FACE, "arcface"),
            keypoints=_stack(examples, CacheKeys.POSE, "keypoints"),
            caption_clip=_stack(examples, CacheKeys.CAPTION_CLIP, "text_embeds"),
        )
        if self.body_vectors is not None:
            batch.c_body = torch.cat([self.body_vectors[person] for person in batch.persons])
        if self.dataset is not None and self.body_views > 0:
            batch.body_views = [self.person_views(person) for person in batch.persons]
        return batch

    def person_views(self, person: str) -> dict[str, torch.Tensor]:
        indices = self.dataset.indices_of(person)[: self.body_views]
        views = [self.dataset[index].tensors[CacheKeys.BODY_VIEW] for index in indices]
        return {key: torch.stack([view[key] for view in views]) for key in views[0]}


def body_posterior(vae: BodyVAE, views: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view (mu, log σ²) of stacked views, with gradients: (N, D) each."""
    return vae.encode_views(views["weighted"], views["keypoints"])


def aggregate_posterior(mu: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """c_body = Σ_i c_i·mu_i / Σ_i c_i (BoLID §4.2's confidence-weighted view aggregation), differentiable."""
    weights = confidence.to(mu).clamp_min(0).reshape(-1, 1)
    return (weights * mu).sum(dim=0, keepdim=True) / weights.sum().clamp_min(1e-8)


@torch.no_grad()
def frozen_body_vectors(vae: BodyVAE, dataset, views: int) -> dict[str, torch.Tensor]:
    """Each person's c_body from a frozen VAE, once before training: their first `views` views, aggregated."""
    collate = AdapterCollate(dataset=dataset, body_views=views)
    vectors = {}
    for person in dataset.persons:
        stacked = collate.person_views(person)
        mu, _ = body_posterior(vae, stacked)
        vectors[person] = aggregate_posterior(mu, stacked["confidence"])
    return vectors


def body_vae_loss(
    vae: BodyVAE, views: Mapping[str, torch.Tensor], weights: BodyLossWeights, eps: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The body VAE's negative ELBO over stacked views: reconstruction of each view's keypoints (x, y where visible;
    visibility as a logit) and weight map from z = mu + σ·eps ~ q(z | view), plus weights.kl·KL(q ‖ N(0, I))."""
    mu, logvar = body_posterior(vae, views)
    z = mu + (0.5 * logvar).exp() * eps.to(mu)
    keypoints, weight_map = vae.decode(z)
    target = views["keypoints"].to(keypoints)
    visible = (target[..., 2] > 0).to(keypoints)
    xy_error = (keypoints[..., :2] - target[..., :2]).square().sum(dim=-1)
    xy = (visible * xy_error).sum() / visible.sum().clamp_min(1.0)
    visibility = F.binary_cross_entropy_with_logits(keypoints[..., 2], visible)
    map_target = views["weight_map"].to(weight_map)
    if map_target.shape[-2:] != weight_map.shape[-2:]:
        map_target = F.interpolate(map_target[:, None], size=weight_map.shape[-2:], mode="area")[:, 0]
    map_error = F.mse_loss(weight_map, map_target)
    kl = kl_divergence(mu, logvar)
    loss = weights.keypoints * xy + weights.visibility * visibility + weights.weight_map * map_error + weights.kl * kl
    return {"loss": loss, "vae_keypoints": xy.detach(), "vae_visibility": visibility.detach(),
            "vae_map": map_error.detach(), "vae_kl": kl.detach()}  # fmt: skip


def source_tokens(
    adapter: Adapter,
    style: torch.Tensor | None,
    arcface: torch.Tensor | None,
    c_body: torch.Tensor | None,
) -> dict[Source, torch.Tensor]:
    """Tokens of each of the adapter's sources, with gradients; dropped samples arrive as zero inputs, which is the
    null embedding inference gives the unconditional branch (bolid_core.adapter.tokens)."""
    tokens: dict[Source, torch.Tensor] = {}
    for source in adapter.spec.sources:
        projection = adapter.projection(source)
        if source is Source.IMAGE:
            tokens[source] = projection(_required(style, "style image embeds (encoder 'style')").float())
        elif source is Source.FACE:
            face = _required(arcface, "ArcFace embeddings (encoder 'face')").float()
            clip = _required(style, "style image embeds (encoder 'style')").float()
            tokens[source] = projection(projection.embed_image(clip, face))
        elif source is Source.BODY:
            tokens[source] = projection(_required(c_body, "body vectors (a body VAE and 'body_view')").float())
    return tokens


def _required(value: torch.Tensor | None, what: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"This adapter trains a source that needs {what}; the dataset cache has none.")
    return value


@dataclass(frozen=True)
class LossWeights:
    alpha_id: float = 0.0
    beta_clip: float = 0.0
    prior: float = 1.0  # the text prior's regression onto the image embeds (our choice; FaceStudio gives none)


def draw_step(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    dropout: ConditionDropout,
    shard: tuple[int, int],
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, dict[ConditionSource, torch.Tensor]]:
    """A step's timesteps, noise and dropout masks, in this order, drawn for the whole global batch (world size
    times this process's rows) and cut to this process's rows: N processes see what one with N times the batch sees."""
    size = x0.shape[0]
    rank, world = shard
    rows = slice(rank * size, (rank + 1) * size)
    timesteps = torch.randint(0, schedule.steps, (size * world,), generator=generator, device=generator.device)
    noise = torch.randn(
        (size * world, *x0.shape[1:]), generator=generator, device=generator.device, dtype=torch.float32
    )
    dropped = {source: mask[rows] for source, mask in dropout.draw(size * world, generator).items()}
    return timesteps[rows].to(device), noise[rows].to(device=device, dtype=x0.dtype), dropped


class AdapterTask:
    """compute_loss(batch, step, generator) for the Trainer: one forward of the host's UNet on noised latents with
    every condition dropped at its own rate, BoLID eq. 14 on top, and the body VAE's ELBO when it trains jointly."""

    def __init__(
        self,
        target: TrainTarget,
        dropout: ConditionDropout,
        loss: LossWeights,
        denoiser: Denoiser | None = None,
        null_text: TextCondition | None = None,
        id_schedule: AuxLossSchedule | None = None,
        clip_schedule: AuxLossSchedule | None = None,
        scorers: AuxiliaryScorers | None = None,
        body_vae: BodyVAE | None = None,
        body_weights: BodyLossWeights = BodyLossWeights(),
        shard: tuple[int, int] = (0, 1),
        body_views: int = 4,
    ) -> None:
        """`shard` = (rank, world size): under data parallelism each process draws the randomness of the whole
        global batch and keeps its own rows, so N processes see what one process with N times the batch sees."""
        if target is TrainTarget.BASE_UNET:
            raise ValueError("Training target base_unet trains the UNet itself: use BaseUNetTask, not AdapterTask.")
        if target is not TrainTarget.BODY_VAE and denoiser is None:
            raise ValueError("Training the adapter needs the host's denoiser (its UNet and noise schedule).")
        if target is not TrainTarget.ADAPTER and body_vae is None:
            raise ValueError(f"Training target {target.value} needs a body VAE to train.")
        needs_scorer = {"alpha_id": loss.alpha_id > 0, "beta_clip": loss.beta_clip > 0}
        if needs_scorer["alpha_id"] and (scorers is None or scorers.pose_people is None):
            raise ValueError("loss.alpha_id > 0 needs a pose model to score x0 (L_id); connect one or set it to 0.")
        if needs_scorer["beta_clip"] and (scorers is None or scorers.clip_image is None):
            raise ValueError("loss.beta_clip > 0 needs a CLIP model to score x0 (L_CLIP); connect one or set it to 0.")
        if target is not TrainTarget.BODY_VAE and (denoiser.attention is None):
            raise ValueError("The denoiser has no AdapterAttention installed: the adapter would not be trained.")
        if target is not TrainTarget.BODY_VAE and null_text is None and dropout.text > 0:
            raise ValueError("Text dropout needs the empty prompt's encoding (null_text).")
        self.target, self.dropout, self.loss = target, dropout, loss
        self.denoiser, self.null_text = denoiser, null_text
        self.id_schedule = id_schedule or AuxLossSchedule()
        self.clip_schedule = clip_schedule or AuxLossSchedule()
        self.scorers, self.body_vae, self.body_weights = scorers, body_vae, body_weights
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard must be (rank, world size) with 0 <= rank < world size; got {shard}.")
        self.shard = shard
        if body_views < 1:
            raise ValueError(f"body_views must be at least 1; got {body_views}.")
        self.body_views = body_views

    def __call__(self, batch: TrainBatch, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.target is TrainTarget.BODY_VAE:
            return self._body_only(batch, generator)
        return self._adapter(batch, step, generator)

    def _body_only(self, batch: TrainBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if not batch.body_views:
            raise ValueError("Training the body VAE needs the 'body_view' encoder's views in the cache.")
        eps = self._body_noise(batch.body_views, generator)
        return body_vae_loss(self.body_vae, _concat_views(batch.body_views), self.body_weights, eps)

    def _body_noise(self, per_sample: Sequence[Mapping[str, torch.Tensor]], generator: torch.Generator) -> torch.Tensor:
        """The VAE's ε for each sample's views: drawn for the whole global batch, `body_views` rows a sample, so a
        shard uses what one process with the global batch would; a sample with fewer views uses its first rows."""
        rank, world = self.shard
        size = len(per_sample)
        latent_dim = self.body_vae.config.latent_dim
        shape = (size * world, self.body_views, latent_dim)
        eps = torch.randn(shape, generator=generator, device=generator.device)[rank * size : (rank + 1) * size]
        counts = [views["keypoints"].shape[0] for views in per_sample]
        if max(counts) > self.body_views:
            raise ValueError(f"A sample has {max(counts)} body views; this task draws noise for {self.body_views}.")
        return torch.cat([eps[row, :count] for row, count in enumerate(counts)])

    def _adapter(self, batch: TrainBatch, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        denoiser, schedule = self.denoiser, self.denoiser.schedule
        adapter = denoiser.attention.adapter
        device = _device_of(adapter)
        x0 = _required(batch.latents, "latents (encoder 'latents')").to(device)
        # One draw order every step, whatever is used: timesteps, noise, dropout, then the body VAE's sampling.
        timesteps, noise, dropped = draw_step(schedule, x0, self.dropout, self.shard, generator, device)

        body_terms: dict[str, torch.Tensor] = {}
        c_body = batch.c_body
        if self.target is TrainTarget.JOINT:
            c_body, body_terms = self._joint_body(batch, generator, device)

        def kept(value: torch.Tensor | None, source: ConditionSource) -> torch.Tensor | None:
            if value is None:
                return None
            value = value.to(device)
            mask = dropped[source].to(device).reshape(-1, *([1] * (value.ndim - 1)))
            return torch.where(mask, torch.zeros_like(value), value)

        style = kept(batch.style, ConditionSource.IMAGE)
        tokens = source_tokens(
            adapter, style, kept(batch.arcface, ConditionSource.FACE), kept(c_body, ConditionSource.BODY)
        )
        context = _required(batch.context, "caption encodings (encoder 'text')").to(device)
        pooled = _required(batch.pooled, "caption encodings (encoder 'text')").to(device)
        if self.null_text is not None:
            mask = dropped[ConditionSource.TEXT].to(device)
            context = torch.where(mask[:, None, None], self.null_text.context.to(context), context)
            pooled = torch.where(mask[:, None], self.null_text.pooled.to(pooled), pooled)

        noisy = schedule.add_noise(x0, noise, timesteps)
        with denoiser.attention.using(tokens):
            prediction = denoiser(noisy, timesteps, TextCondition(context, pooled))
        alpha_bar = schedule.alpha_bar(timesteps)
        target = diffusion_target(x0, noise, alpha_bar, schedule.prediction)
        l_diff = diffusion_loss(prediction, target)
        id_term, clip_term = self._auxiliary(batch, step, timesteps, noisy, prediction, alpha_bar, device)
        terms = total_loss(l_diff, self.loss.alpha_id, self.loss.beta_clip, id_term, clip_term)
        prior = self._prior_loss(adapter, batch, device)
        if prior is not None:
            terms["loss"] = terms["loss"] + self.loss.prior * prior
            terms["prior"] = prior.detach()
        if body_terms:
            terms["loss"] = terms["loss"] + self.body_weights.joint * body_terms.pop("loss")
            terms.update(body_terms)
        return terms

    def _joint_body(self, batch: TrainBatch, generator: torch.Generator, device) -> tuple[torch.Tensor, dict]:
        if not batch.body_views:
            raise ValueError("Joint training needs the 'body_view' encoder's views in the cache.")
        vectors = []
        for views in batch.body_views:
            mu, _ = body_posterior(self.body_vae, views)
            vectors.append(aggregate_posterior(mu, views["confidence"].to(device)))
        eps = self._body_noise(batch.body_views, generator)
        terms = body_vae_loss(self.body_vae, _concat_views(batch.body_views), self.body_weights, eps)
        return torch.cat(vectors), terms

    def _prior_loss(self, adapter: Adapter, batch: TrainBatch, device) -> torch.Tensor | None:
        """FaceStudio's text prior maps the caption's pooled text embedding to the image's CLIP embeds: trained here
        as a regression onto them (MSE), so a prompt can stand in for a style image at inference."""
        if Source.FACE not in adapter.spec.tokens or not self.loss.prior:
            return None
        prior = adapter.projection(Source.FACE).prior
        if prior is None or batch.pooled is None or batch.style is None:
            return None
        return F.mse_loss(prior(batch.pooled.to(device).float()), batch.style.to(device).float())

    def _auxiliary(self, batch, step, timesteps, noisy, prediction, alpha_bar, device):
        wants_id = self.loss.alpha_id > 0 and batch.keypoints is not None
        wants_clip = self.loss.beta_clip > 0 and batch.caption_clip is not None
        if not (wants_id or wants_clip):
            return None, None
        id_rows = self.id_schedule.applies(step, timesteps) if wants_id else None
        clip_rows = self.clip_schedule.applies(step, timesteps) if wants_clip else None
        rows = torch.zeros_like(timesteps, dtype=torch.bool)
        for selected in (id_rows, clip_rows):
            if selected is not None:
                rows = rows | selected
        if not bool(rows.any()):
            return None, None
        x0 = predicted_x0(noisy[rows], prediction[rows], alpha_bar[rows], self.denoiser.schedule.prediction)
        images = self.scorers.decode(x0)
        id_term = clip_term = None
        if id_rows is not None and bool(id_rows[rows].any()):
            pick = id_rows[rows]
            reference = batch.keypoints.to(device)[id_rows]
            people = self.scorers.pose_people(images[pick])
            match = match_person(people, reference[..., :2], reference[..., 2])
            id_term = keypoint_identity_loss(
                matched_keypoints(people, match), reference[..., :2], reference[..., 2], match.found.to(device)
            )
        if clip_rows is not None and bool(clip_rows[rows].any()):
            pick = clip_rows[rows]
            clip_term = clip_loss(self.scorers.clip_image(images[pick]), batch.caption_clip.to(device)[clip_rows])
        return id_term, clip_term


class BaseUNetTask:
    """compute_loss(batch, step, generator) for the Trainer when the UNet's own weights train (target base_unet):
    the plain DDPM objective ‖ε − ε_θ(x_t, t, text)‖² (or v, as the schedule says) on the cached latents and
    captions, each caption replaced by the null text (the empty prompt's encoding) with probability `text_dropout`
    so the model learns ε(∅) for classifier-free guidance. No adapter, no body, no L_id or L_CLIP.

    The draws follow AdapterTask's order (timesteps, noise, then the dropout's uniforms for every source, of which
    only the text's is used), drawn for the whole global batch under `shard` and cut to this process's rows."""

    def __init__(
        self,
        denoiser: Denoiser,
        null_text: TextCondition | None,
        text_dropout: float,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if denoiser is None:
            raise ValueError("Training the base UNet needs the host's denoiser (its UNet and noise schedule).")
        if getattr(denoiser, "attention", None) is not None:
            raise ValueError("Training the base UNet needs a denoiser without adapter attention.")
        self.dropout = ConditionDropout(image=0.0, face=0.0, body=0.0, text=text_dropout)
        if null_text is None and text_dropout > 0:
            raise ValueError("Text dropout needs the empty prompt's encoding (null_text).")
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard must be (rank, world size) with 0 <= rank < world size; got {shard}.")
        self.denoiser, self.null_text, self.shard = denoiser, null_text, shard

    def __call__(self, batch: TrainBatch, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        denoiser, schedule = self.denoiser, self.denoiser.schedule
        x0 = _required(batch.latents, "latents (encoder 'latents')")
        context = _required(batch.context, "caption encodings (encoder 'text')")
        pooled = _required(batch.pooled, "caption encodings (encoder 'text')")
        device = getattr(denoiser, "device", x0.device)
        x0, context, pooled = x0.to(device), context.to(device), pooled.to(device)
        timesteps, noise, dropped = draw_step(schedule, x0, self.dropout, self.shard, generator, device)
        dropped = dropped[ConditionSource.TEXT].to(device)
        if self.null_text is not None:
            context = torch.where(dropped[:, None, None], self.null_text.context.to(context), context)
            pooled = torch.where(dropped[:, None], self.null_text.pooled.to(pooled), pooled)
        noisy = schedule.add_noise(x0, noise, timesteps)
        prediction = denoiser(noisy, timesteps, TextCondition(context, pooled))
        target = diffusion_target(x0, noise, schedule.alpha_bar(timesteps), schedule.prediction)
        l_diff = diffusion_loss(prediction, target)
        return {"loss": l_diff, "diff": l_diff.detach(), "text_dropped": dropped.float().mean()}


def _concat_views(per_sample: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([views[key] for views in per_sample]) for key in per_sample[0]}


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def init_kv_from_text(adapter: Adapter, text_kv: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Start every source's K/V at its layer's text K/V weights, as IP-Adapter does: the new tokens then enter each
    layer in the space its text keys and values live in."""
    if len(text_kv) != len(adapter.layers):
        raise ValueError(f"{len(text_kv)} text K/V pairs for an adapter of {len(adapter.layers)} layers.")
    with torch.no_grad():
        for layer, (weight_k, weight_v) in enumerate(text_kv):
            for source in adapter.spec.sources:
                kv = adapter.kv(layer, source)
                kv.to_k.weight.copy_(weight_k)
                kv.to_v.weight.copy_(weight_v)


__all__ = [
    "AdapterAttention", "AdapterCollate", "AdapterTask", "AuxiliaryScorers", "BaseUNetTask", "BodyLossWeights",
    "CacheKeys",
    "Denoiser", "LossWeights", "NoiseSchedule", "TextCondition", "TrainBatch", "TrainTarget", "aggregate_posterior",
    "body_vae_loss", "frozen_body_vectors", "init_kv_from_text", "source_tokens",
]  # fmt: skip
