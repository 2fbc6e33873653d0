"""The protocol's models, loaded from local files only: insightface (ArcFace), a transformers CLIP, and the
optional AE and IR scorers."""

from __future__ import annotations

from pathlib import Path

import torch

from ..identity.face import FaceAnalyzer, NoFaceError
from .aesthetic import AestheticPredictor
from .image_reward import ImageRewardScorer
from .metrics import Scorers


class ClipScorer:
    """CLIP image and text embeddings from a local transformers CLIP folder (model + processor files)."""

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"No CLIP model in {folder}: put a transformers CLIP folder there (config.json, weights, "
                "tokenizer and preprocessor files), e.g. openai/clip-vit-large-patch14 saved locally."
            )
        self.model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval().to(device)
        self.processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
        self.device = device

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        inputs = self.processor(images=list(pixels), return_tensors="pt").to(self.device)
        return _embedding(self.model.get_image_features(**inputs)).cpu()

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        inputs = self.processor(text=texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return _embedding(self.model.get_text_features(**inputs)).cpu()


def _embedding(output) -> torch.Tensor:
    # transformers 5 returns a model output object where 4 returned the tensor itself.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def make_scorers(
    faces: FaceAnalyzer,
    clip: ClipScorer,
    aesthetic: AestheticPredictor | None = None,
    image_reward: ImageRewardScorer | None = None,
) -> Scorers:
    def face(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = faces.embed(images)
        return embeds.arcface, embeds.crops

    return Scorers(face, clip.image_features, clip.text_features, NoFaceError, aesthetic, image_reward)
