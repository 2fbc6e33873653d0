"""Tiny pieces for tests of the adapter training task: a BoLID adapter, a hand-written denoiser that records what it
receives, a body VAE, batches, and the task's random draws replayed from the documented draw order."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from bolid_core.adapter import Adapter, AdapterKind, AdapterSpec, ClipInput, Source, new_bolid_adapter
from bolid_core.body.vae import BodyVAE, BodyVAEConfig
from bolid_core.train.adapter_task import AdapterAttention, NoiseSchedule, TextCondition, TrainBatch
from bolid_core.train.dropout import ConditionDropout, ConditionSource
from bolid_core.train.losses import PredictionType

CONTEXT_DIM, CLIP_DIM, FACE_DIM, BODY_DIM, FUSION_DIM, TEXT_DIM = 16, 10, 6, 5, 7, 9
TEXT_TOKENS, CAPTION_CLIP_DIM = 3, 8
WIDTHS = (8, 8, 12)  # two layers of one width, so a wrong layer index could go unnoticed only by value
HEADS = 2
LATENT_SHAPE = (4, 4, 4)
STEPS = 20
TOKENS = {Source.IMAGE: 2, Source.FACE: 3, Source.BODY: 2}


def tiny_adapter(seed: int = 0, tokens: dict[Source, int] | None = None, text_prior: bool = True) -> Adapter:
    tokens = dict(TOKENS if tokens is None else tokens)
    face = Source.FACE in tokens
    spec = AdapterSpec(
        AdapterKind.BOLID, CONTEXT_DIM, WIDTHS, tokens, clip_dim=CLIP_DIM, clip_input=ClipInput.EMBEDS,
        face_dim=FACE_DIM, body_dim=BODY_DIM if Source.BODY in tokens else None,
        fusion_dim=FUSION_DIM if face else None, text_dim=TEXT_DIM if face and text_prior else None,
    )  # fmt: skip
    adapter = new_bolid_adapter(spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.4)
    return adapter


class RecordingAttention(AdapterAttention):
    """AdapterAttention that keeps the tokens of its last `using` block."""

    seen_tokens: dict[Source, torch.Tensor] | None = None

    @contextlib.contextmanager
    def using(self, tokens):
        self.seen_tokens = {source: value.detach().clone() for source, value in tokens.items()}
        with super().using(tokens):
            yield


class TinyDenoiser(nn.Module):
    """Latents (B, 4, 4, 4) read as 16 tokens of width 4; text, pooled and timestep added; one cross-attention per
    adapter layer whose query goes to the adapter's term. Frozen; records every call."""

    def __init__(self, adapter: Adapter, prediction: PredictionType = PredictionType.EPSILON, seed: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        channels = LATENT_SHAPE[0]
        self.schedule = NoiseSchedule(torch.linspace(0.98, 0.05, STEPS), prediction)
        self.attention = RecordingAttention(adapter)
        self.to_q = nn.ModuleList(nn.Linear(channels, width) for width in adapter.spec.layer_widths)
        self.to_out = nn.ModuleList(nn.Linear(width, channels) for width in adapter.spec.layer_widths)
        self.text = nn.Linear(CONTEXT_DIM, channels)
        self.pooled = nn.Linear(TEXT_DIM, channels)
        self.requires_grad_(False)
        self.calls: list[dict[str, torch.Tensor]] = []

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: TextCondition) -> torch.Tensor:
        hidden = noisy.flatten(2).transpose(1, 2)
        condition = self.text(text.context.mean(dim=1)) + self.pooled(text.pooled)
        hidden = hidden + condition[:, None] + (timesteps.float() / STEPS)[:, None, None]
        for layer, (to_q, to_out) in enumerate(zip(self.to_q, self.to_out, strict=True)):
            hidden = hidden + to_out(self.attention(layer, to_q(hidden), HEADS))
        prediction = hidden.transpose(1, 2).reshape(noisy.shape)
        self.calls.append({
            "noisy": noisy.detach().clone(), "timesteps": timesteps.clone(), "context": text.context.clone(),
            "pooled": text.pooled.clone(), "prediction": prediction.detach().clone(),
        })  # fmt: skip
        return prediction


def tiny_body_vae(seed: int = 4) -> BodyVAE:
    torch.manual_seed(seed)
    config = BodyVAEConfig(latent_dim=BODY_DIM, image_size=8, channels=(8,), keypoint_hidden=8, decoder_hidden=8,
                           map_size=4)  # fmt: skip
    return BodyVAE(config)


def person_views(count: int, seed: int, map_size: int = 8) -> dict[str, torch.Tensor]:
    """`count` views; some keypoints invisible; the weight map twice the VAE's side (area-resized by the loss)."""
    generator = torch.Generator().manual_seed(seed)
    keypoints = torch.rand(count, 17, 3, generator=generator)
    keypoints[..., 2] = torch.where(keypoints[..., 2] < 0.3, 0.0, keypoints[..., 2])
    return {
        "weighted": torch.rand(count, 8, 8, 3, generator=generator),
        "keypoints": keypoints,
        "confidence": torch.tensor([0.9, 0.2, 0.0, 0.6][:count]),
        "weight_map": torch.rand(count, map_size, map_size, generator=generator),
    }


@dataclass
class FullBatch:
    """Every input of `size` samples, from which any rows make a TrainBatch."""

    size: int
    seed: int = 0

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(100 + self.seed)
        n = self.size
        self.latents = torch.randn(n, *LATENT_SHAPE, generator=g)
        self.context = torch.randn(n, TEXT_TOKENS, CONTEXT_DIM, generator=g)
        self.pooled = torch.randn(n, TEXT_DIM, generator=g)
        self.style = torch.randn(n, CLIP_DIM, generator=g)
        self.arcface = torch.randn(n, FACE_DIM, generator=g)
        self.keypoints = torch.rand(n, 17, 3, generator=g)
        self.keypoints[..., 2] = torch.where(self.keypoints[..., 2] < 0.2, 0.0, self.keypoints[..., 2])
        self.caption_clip = torch.randn(n, CAPTION_CLIP_DIM, generator=g)
        self.c_body = torch.randn(n, BODY_DIM, generator=g)
        self.views = [person_views(3, 200 + self.seed * 10 + i) for i in range(n)]

    def batch(self, rows: slice = slice(None), body_views: bool = False) -> TrainBatch:
        return TrainBatch(
            persons=[f"p{i}" for i in range(self.size)][rows],
            latents=self.latents[rows], context=self.context[rows], pooled=self.pooled[rows],
            style=self.style[rows], arcface=self.arcface[rows], keypoints=self.keypoints[rows],
            caption_clip=self.caption_clip[rows], c_body=self.c_body[rows],
            body_views=self.views[rows] if body_views else None,
        )  # fmt: skip


def null_text() -> TextCondition:
    g = torch.Generator().manual_seed(9)
    return TextCondition(torch.randn(1, TEXT_TOKENS, CONTEXT_DIM, generator=g), torch.randn(1, TEXT_DIM, generator=g))


@dataclass
class Draws:
    timesteps: torch.Tensor
    noise: torch.Tensor
    dropped: dict[ConditionSource, torch.Tensor]
    generator: torch.Generator  # where the body VAE's draws continue


def replay_draws(seed: int, size: int, dropout: ConditionDropout) -> Draws:
    """The documented draw order of one adapter step: timesteps, noise, one uniform per (sample, source) in
    ConditionSource order, then the body VAE's ε."""
    generator = torch.Generator().manual_seed(seed)
    timesteps = torch.randint(0, STEPS, (size,), generator=generator)
    noise = torch.randn((size, *LATENT_SHAPE), generator=generator)
    uniform = torch.rand((size, len(ConditionSource)), generator=generator)
    dropped = {source: uniform[:, column] < dropout.rate(source) for column, source in enumerate(ConditionSource)}
    return Draws(timesteps, noise, dropped, generator)


def mixed_seed(size: int, dropout: ConditionDropout, start: int = 0) -> int:
    """The first seed whose dropout masks both drop and keep some sample of every source."""
    for seed in range(start, start + 1000):
        dropped = replay_draws(seed, size, dropout).dropped
        if all(0 < int(mask.sum()) < size for mask in dropped.values()):
            return seed
    raise AssertionError("no seed mixes every dropout mask")


# --- the projections and attention written out plainly, in float64 ---------------------------------------------


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + norm.eps) * norm.weight.double() + norm.bias.double()


def linear(x: torch.Tensor, module: nn.Linear) -> torch.Tensor:
    y = x.double() @ module.weight.double().T
    return y if module.bias is None else y + module.bias.double()


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def to_tokens(projected: torch.Tensor, tokens: int, norm: nn.LayerNorm) -> torch.Tensor:
    return layer_norm(projected.reshape(projected.shape[0], tokens, -1), norm)


def image_tokens_by_hand(adapter: Adapter, style: torch.Tensor) -> torch.Tensor:
    module = adapter.projection(Source.IMAGE)
    return to_tokens(linear(style, module.proj), module.tokens, module.norm)


def face_tokens_by_hand(adapter: Adapter, style: torch.Tensor, arcface: torch.Tensor) -> torch.Tensor:
    """e = W_clip·style + W_face·arcface + b (FaceStudio's fusion, CLIP part first), then Linear, reshape, LayerNorm."""
    module = adapter.projection(Source.FACE)
    weight = module.fusion.weight.double()
    fused = style.double() @ weight[:, :CLIP_DIM].T + arcface.double() @ weight[:, CLIP_DIM:].T
    fused = fused + module.fusion.bias.double()
    head = module.to_tokens
    return to_tokens(linear(fused, head.proj), head.tokens, head.norm)


def body_tokens_by_hand(adapter: Adapter, c_body: torch.Tensor) -> torch.Tensor:
    module = adapter.projection(Source.BODY)
    hidden = gelu(linear(c_body, module.proj[0]))
    return to_tokens(linear(hidden, module.proj[2]), module.tokens, module.norm)


def prior_by_hand(adapter: Adapter, pooled: torch.Tensor) -> torch.Tensor:
    norm, first, _, second = adapter.projection(Source.FACE).prior.net
    return linear(gelu(linear(layer_norm(pooled.double(), norm), first)), second)


def attention_by_hand(kv_of, layer: int, query: torch.Tensor, tokens: dict, heads: int, weights: dict) -> torch.Tensor:
    """Σ_s λ_s softmax(Q K_sᵀ/√d) V_s per sample and head, K_s = tokens·W_kᵀ with kv_of(layer, source)'s weights."""
    batch, queries, width = query.shape
    dim = width // heads
    out = torch.zeros(batch, queries, width, dtype=torch.float64)
    for source, source_tokens in tokens.items():
        kv = kv_of(layer, source)
        for b in range(batch):
            own = source_tokens[b if source_tokens.shape[0] > 1 else 0].double()
            keys, values = own @ kv.to_k.weight.double().T, own @ kv.to_v.weight.double().T
            for h in range(heads):
                cols = slice(h * dim, (h + 1) * dim)
                scores = query[b, :, cols].double() @ keys[:, cols].T / math.sqrt(dim)
                probs = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
                probs = probs / probs.sum(dim=-1, keepdim=True)
                out[b, :, cols] += weights[source] * (probs @ values[:, cols])
    return out
