"""BODY_ID: a person's body shape as the body VAE's latent c_body, reusable with text alone."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import read_pack_file, save_safetensors_atomic

BODY_ID_FORMAT = "bolid-body-id"
BODY_ID_FORMAT_VERSION = 1
RANDOM_ENCODER = "prior"  # body IDs sampled from the prior fit any encoder of their size


@dataclass(frozen=True)
class BodyID:
    """c_body: (1, dim) latent; source_count: views it was built from; encoder: the encoder's identity."""

    c_body: torch.Tensor
    source_count: int
    encoder: str

    def __post_init__(self) -> None:
        if self.c_body.ndim != 2 or self.c_body.shape[0] != 1:
            raise ValueError(f"c_body must be shaped (1, dim); got {tuple(self.c_body.shape)}.")
        _require_finite(self.c_body, "This body ID")

    @property
    def dim(self) -> int:
        return self.c_body.shape[1]


def _require_finite(c_body: torch.Tensor, what: str) -> None:
    if not torch.isfinite(c_body).all():
        raise ValueError(
            f"{what} holds NaN or infinite values: rebuild it from images, or pick another body. "
            "A NaN body would only ever give NaN images."
        )


def save_body_id(body: BodyID, path: str | os.PathLike) -> Path:
    _require_finite(body.c_body, "The body ID to save")  # checked again: a tensor can change after construction
    metadata = {
        "format": BODY_ID_FORMAT,
        "format_version": str(BODY_ID_FORMAT_VERSION),
        "source_count": str(body.source_count),
        "encoder": body.encoder,
    }
    return save_safetensors_atomic({"c_body": body.c_body.float()}, path, metadata)


def load_body_id(path: str | os.PathLike) -> BodyID:
    tensors, metadata = read_pack_file(path, BODY_ID_FORMAT, BODY_ID_FORMAT_VERSION, "saved body ID")
    if "c_body" not in tensors:
        raise ValueError(f"{Path(path).name} holds no c_body; write it again with BoLID Save Body ID.")
    _require_finite(tensors["c_body"], f"The saved body ID {Path(path).name}")
    return BodyID(tensors["c_body"], int(metadata["source_count"]), metadata["encoder"])


def sample_prior(dim: int, seed: int) -> BodyID:
    """A random body: c_body ~ N(0, I), the VAE's prior."""
    generator = torch.Generator().manual_seed(seed)
    return BodyID(torch.randn((1, dim), generator=generator), 0, RANDOM_ENCODER)


def blend_body_ids(bodies: list[BodyID], weights: list[float]) -> BodyID:
    """Weighted mean of body latents made by the same encoder (or sampled from the prior)."""
    if len(bodies) != len(weights) or not bodies:
        raise ValueError("Give one weight per body ID.")
    if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
        raise ValueError(f"Blend weights must be finite numbers; got {weights}.")
    if sum(weights) <= 0 or any(w < 0 for w in weights):
        raise ValueError("Blend weights must be non-negative and not all zero.")
    dims = {body.dim for body in bodies}
    encoders = {body.encoder for body in bodies} - {RANDOM_ENCODER}
    if len(dims) > 1 or len(encoders) > 1:
        raise ValueError(
            "These body IDs come from different body encoders (or sizes) and cannot be blended: "
            f"sizes {sorted(dims)}, encoders {sorted(encoders)}. Rebuild them with one encoder."
        )
    total = sum(weights)
    c_body = sum(w * body.c_body for w, body in zip(weights, bodies, strict=True)) / total
    return BodyID(c_body, sum(body.source_count for body in bodies), encoders.pop() if encoders else RANDOM_ENCODER)
