"""FACE_EMBEDS: what the face-embed step hands to the adapters."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FaceEmbeds:
    """ArcFace embeddings of one or more reference faces, with their aligned crops for CLIP-vision.

    arcface: (faces, 512) L2-normalised embeddings.
    crops: (faces, size, size, 3) aligned face crops in [0, 1], channels last; None if not kept.
    """

    arcface: torch.Tensor
    crops: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.arcface.ndim != 2 or self.arcface.shape[0] == 0:
            raise ValueError(f"Face embeddings must be shaped (faces, dim); got {tuple(self.arcface.shape)}.")
        if self.crops is not None and self.crops.shape[0] != self.arcface.shape[0]:
            raise ValueError("Face embeddings and face crops must come in the same number.")
