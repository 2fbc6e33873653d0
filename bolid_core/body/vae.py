"""The multi-view body VAE (BoLID §4.2): views of a person -> one compact body latent c_body.

Each view is encoded from its keypoint-weighted image and its keypoints into (mu_i, log sigma_i^2).
Views are aggregated weighted by pose confidence: mu = sum_i c_i mu_i / sum_i c_i (likewise for
log sigma^2), streamed over chunks of views so memory does not grow with their number. A decoder
(keypoints and a coarse weight map) and the KL term serve training.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..files import read_pack_file, save_safetensors_atomic
from .keypoints import NUM_KEYPOINTS

ENCODER_FORMAT = "bolid-body-vae"
ENCODER_FORMAT_VERSION = 1
DEFAULT_LATENT_DIM = 756  # the paper's default size of c_body


class BodyEncoderError(ValueError):
    """A body-encoder file that cannot be used, or inputs it cannot encode."""


@dataclass(frozen=True)
class BodyVAEConfig:
    latent_dim: int = DEFAULT_LATENT_DIM
    image_size: int = 128  # each weighted view is letterboxed to this square
    channels: tuple[int, ...] = (32, 64, 128, 256)
    keypoint_hidden: int = 256
    decoder_hidden: int = 512
    map_size: int = 32  # side of the weight map the decoder reconstructs


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())


def letterbox(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, C) in [0, 1] -> (N, 3, size, size), aspect kept, padded with black."""
    images = images[..., :3] if images.shape[-1] >= 3 else images.expand(-1, -1, -1, 3)
    x = images.permute(0, 3, 1, 2).float()
    height, width = x.shape[-2:]
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    return F.pad(x, (left, size - new_w - left, top, size - new_h - top))


class BodyVAE(nn.Module):
    def __init__(self, config: BodyVAEConfig = BodyVAEConfig()) -> None:
        super().__init__()
        self.config = config
        channels = (3, *config.channels)
        self.image_encoder = nn.Sequential(*(_conv_block(a, b) for a, b in itertools.pairwise(channels)))
        self.keypoint_encoder = nn.Sequential(nn.Linear(NUM_KEYPOINTS * 3, config.keypoint_hidden), nn.SiLU())
        self.to_posterior = nn.Linear(config.channels[-1] + config.keypoint_hidden, 2 * config.latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(config.latent_dim, config.decoder_hidden),
            nn.SiLU(),
            nn.Linear(config.decoder_hidden, NUM_KEYPOINTS * 3 + config.map_size**2),
        )

    def encode_views(self, weighted: torch.Tensor, keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-view posterior: weighted views (N, H, W, C) and keypoints (N, 17, 3) -> mu, log sigma^2 (N, D)."""
        x = letterbox(weighted, self.config.image_size).to(self.to_posterior.weight)
        image_features = self.image_encoder(x).mean(dim=(2, 3))
        keypoint_features = self.keypoint_encoder(keypoints.reshape(-1, NUM_KEYPOINTS * 3).to(x))
        mu, logvar = self.to_posterior(torch.cat([image_features, keypoint_features], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, c_body: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """c_body (N, D) -> keypoints (N, 17, 3: x, y in [0, 1], visibility logit) and weight map (N, S, S)."""
        out = self.decoder(c_body)
        keypoints = out[:, : NUM_KEYPOINTS * 3].reshape(-1, NUM_KEYPOINTS, 3)
        keypoints = torch.cat([keypoints[..., :2].sigmoid(), keypoints[..., 2:]], dim=-1)
        size = self.config.map_size
        return keypoints, out[:, NUM_KEYPOINTS * 3 :].reshape(-1, size, size).sigmoid()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)), summed over latent dims, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


@dataclass(frozen=True)
class BodyPosterior:
    mu: torch.Tensor  # (1, D): c_body
    logvar: torch.Tensor  # (1, D)
    views_used: int


ViewChunk = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # weighted views, keypoints, confidences


@torch.no_grad()
def aggregate_views(
    vae: BodyVAE, chunks: Iterator[ViewChunk], check_interrupt: Callable[[], None] | None = None
) -> BodyPosterior:
    """Confidence-weighted mean of the per-view posteriors, over chunks of views, in constant memory.

    A view of confidence 0 adds nothing; the result does not depend on the order of the views.
    """
    dim = vae.config.latent_dim
    device = vae.to_posterior.weight.device
    sum_mu = torch.zeros(1, dim, dtype=torch.float64, device=device)
    sum_logvar = torch.zeros_like(sum_mu)
    total, used = torch.zeros((), dtype=torch.float64, device=device), 0
    for weighted, keypoints, confidence in chunks:
        if check_interrupt is not None:
            check_interrupt()
        keep = confidence > 0
        if not keep.any():
            continue
        mu, logvar = vae.encode_views(weighted[keep], keypoints[keep])
        weights = confidence[keep].to(device, torch.float64)[:, None]
        sum_mu += (weights * mu.double()).sum(dim=0, keepdim=True)
        sum_logvar += (weights * logvar.double()).sum(dim=0, keepdim=True)
        total += weights.sum()
        used += int(keep.sum())
    if used == 0:
        raise BodyEncoderError("No view shows a person: give at least one view where the whole body is visible.")
    return BodyPosterior((sum_mu / total).float(), (sum_logvar / total).float(), used)


# --- files ----------------------------------------------------------------------------------------------


def encoder_identity(state: dict[str, torch.Tensor]) -> str:
    """A short fingerprint of the weights: body IDs remember which encoder made them."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_body_vae(vae: BodyVAE, path: str | os.PathLike) -> Path:
    config = asdict(vae.config)
    metadata = {"format": ENCODER_FORMAT, "format_version": str(ENCODER_FORMAT_VERSION), "config": json.dumps(config)}
    return save_safetensors_atomic(vae.state_dict(), path, metadata)


class BodyEncoder(NamedTuple):
    vae: BodyVAE
    identity: str  # weights fingerprint, stored in the body IDs it makes


def load_body_vae(path: str | os.PathLike) -> BodyEncoder:
    """The VAE and its identity (weights fingerprint)."""
    try:
        state, metadata = read_pack_file(path, ENCODER_FORMAT, ENCODER_FORMAT_VERSION, "BoLID body encoder")
    except ValueError as error:
        raise BodyEncoderError(str(error)) from None
    fields = json.loads(metadata["config"])
    fields["channels"] = tuple(fields["channels"])
    vae = BodyVAE(BodyVAEConfig(**fields))
    vae.load_state_dict(state)
    return BodyEncoder(vae.eval().requires_grad_(False), encoder_identity(state))
