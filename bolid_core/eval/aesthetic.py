"""LAION aesthetic score (AE): a score head over L2-normalised CLIP ViT-L/14 image embeddings.

The head is the improved-aesthetic-predictor's MLP (the FastFace code's ACUModel): linear layers
input -> 1024 -> 128 -> 64 -> 16 -> 1 with dropouts between the first four and no activations. ImageReward puts
the same head on its BLIP features. Its checkpoints (e.g. `sac+logos+ava1-l14-linearMSE.pth`,
`ava+logos-l14-linearMSE.pth`) are plain state dicts with keys `layers.{0,2,4,6,7}.{weight,bias}`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .weights import EvalModelError, read_weights, require_file

SCORE_HEAD_WIDTHS = (1024, 128, 64, 16, 1)
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth (or the FastFace code's ava+logos-l14-linearMSE.pth)"


class ScoreHead(nn.Module):
    """input -> 1024 -> 128 -> 64 -> 16 -> 1, as `layers` so the published state dicts load unchanged."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def load_score_head(state: dict[str, torch.Tensor], name: str, what: str) -> ScoreHead:
    first = state.get("layers.0.weight")
    if first is None or first.dim() != 2:
        raise EvalModelError(f"{name} has no layers.0.weight: it is not {what} (an MLP head state dict).")
    head = ScoreHead(first.shape[1])
    try:
        head.load_state_dict(state)
    except RuntimeError as error:
        raise EvalModelError(f"{name} does not fit the {what} head (layers {SCORE_HEAD_WIDTHS}): {error}") from None
    return head.eval()


class AestheticPredictor:
    """AE of images from their CLIP image embeddings (the embedding is L2-normalised here, as published)."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        path = require_file(path, "Aesthetic predictor", AESTHETIC_FILE)
        self.head = load_score_head(read_weights(path, "aesthetic predictor"), path.name, "an aesthetic predictor")
        self.head.to(device)
        self.device = device
        self.name = path.name

    @property
    def embedding_size(self) -> int:
        return self.head.input_size

    @torch.no_grad()
    def __call__(self, clip_image_embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) CLIP ViT-L/14 image embeddings -> (N,) aesthetic scores."""
        if clip_image_embeddings.shape[-1] != self.embedding_size:
            raise ValueError(
                f"{self.name} scores {self.embedding_size}-d CLIP embeddings but the CLIP model gives "
                f"{clip_image_embeddings.shape[-1]}-d ones: use CLIP ViT-L/14 (openai/clip-vit-large-patch14)."
            )
        unit = F.normalize(clip_image_embeddings.float().to(self.device), dim=-1)
        return self.head(unit)[:, 0].cpu()
