"""FACE_EMBEDS: what the face-embed step hands to the adapters."""

from __future__ import annotations

from dataclasses import dataclass

import torch

WEIGHT_SUM_TOLERANCE = 1e-4


@dataclass(frozen=True)
class FaceEmbeds:
    """ArcFace embeddings of one or more reference faces, with their aligned crops for CLIP-vision.

    arcface: (faces, 512) L2-normalised embeddings.
    crops: (faces, size, size, 3) aligned face crops in [0, 1], channels last; None if not kept.
    norms: (faces,) ArcFace norms before L2-normalisation (larger for clearer faces); None if not known.
    weights: (faces,) non-negative, summing to 1: set when these faces are ONE identity, to be mixed with these
        weights (`mix`); None when each face is a reference of its own.
    """

    arcface: torch.Tensor
    crops: torch.Tensor | None = None
    norms: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.arcface.ndim != 2 or self.arcface.shape[0] == 0:
            raise ValueError(f"Face embeddings must be shaped (faces, dim); got {tuple(self.arcface.shape)}.")
        if self.crops is not None and self.crops.shape[0] != self.arcface.shape[0]:
            raise ValueError("Face embeddings and face crops must come in the same number.")
        if not bool(torch.isfinite(self.arcface).all()):
            raise ValueError("Face embeddings hold NaN or infinite values: embed the faces again.")
        faces = self.arcface.shape[0]
        for name, values in (("norms", self.norms), ("weights", self.weights)):
            if values is None:
                continue
            if values.shape != (faces,):
                raise ValueError(
                    f"Face {name} must hold one number per face, shaped ({faces},); got {tuple(values.shape)}."
                )
            if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
                raise ValueError(f"Face {name} must be finite and non-negative; got {values.tolist()}.")
        if self.weights is not None and abs(float(self.weights.double().sum()) - 1.0) > WEIGHT_SUM_TOLERANCE:
            raise ValueError(
                f"Face weights must sum to 1; got {self.weights.tolist()}. Build them with "
                "bolid_core.identity.mixing (mix_faces, combine_photos), which normalises them."
            )

    @property
    def faces(self) -> int:
        return self.arcface.shape[0]

    @property
    def identities(self) -> int:
        """1 when the faces are mixed into one identity, else one identity per face."""
        return 1 if self.weights is not None else self.faces

    def mix(self, features: torch.Tensor) -> torch.Tensor:
        """features (faces, ...) → (1, ...) = Σ_i w_i·features_i, FaceStudio's e = Σ β_i·e_i; unchanged when
        the faces are not one mixed identity. Called on ArcFace embeddings and on CLIP features of the crops."""
        if self.weights is None:
            return features
        if features.ndim == 0 or features.shape[0] != self.faces:
            raise ValueError(
                f"Features to mix must have one row per face ({self.faces}); got shape {tuple(features.shape)}."
            )
        weights = self.weights.to(device=features.device, dtype=features.dtype)
        return torch.tensordot(weights, features, dims=1).unsqueeze(0)
