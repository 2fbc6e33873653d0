"""BODY_ID: a person's body shape as the body VAE's latent c_body, reusable with text alone."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BodyID:
    """c_body: (1, dim) latent; source_count: views it was built from; encoder: the encoder's identity."""

    c_body: torch.Tensor
    source_count: int
    encoder: str

    def __post_init__(self) -> None:
        if self.c_body.ndim != 2 or self.c_body.shape[0] != 1:
            raise ValueError(f"c_body must be shaped (1, dim); got {tuple(self.c_body.shape)}.")
