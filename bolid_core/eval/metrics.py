"""The FastFace evaluation protocol: identity similarity, CLIP score, face failures, face style score, AE, IR.

- id_similarity: cosine between the ArcFace embeddings of the source face and of the generated face.
- clip_score: the raw cosine between CLIP image and text embeddings (the whole prompt), as the paper's tables
  give it (about 0.24), not 100 x cosine.
- face_fail_cnt: generated images in which no face is detected (detection sizes 640 down to 320).
- face_style_score: clip_score of the generated face crop against the style part of the prompt. FastFace prompts
  are `style ; Person, location, action`: the style part is the text before the first ';'. As in the published
  metric code, a prompt without ';' is scored against the whole prompt.
- aesthetic (AE) and image_reward (IR): optional, over the whole image (see aesthetic.py, image_reward.py).
A prompt with a ';' is stylistic; the others are realistic. Results are aggregated per set and over all images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

STYLE_SEPARATOR = ";"


def is_stylistic(prompt: str) -> bool:
    return STYLE_SEPARATOR in prompt


def style_part(prompt: str) -> str:
    """The text before the first ';' (`style ; Person, location, action`); the whole prompt when it has none."""
    return prompt.split(STYLE_SEPARATOR, 1)[0].strip()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


@dataclass(frozen=True)
class ImageRecord:
    """The metrics of one generated image; None where a face was not found."""

    image: str
    prompt: str
    id_similarity: float | None
    clip_score: float
    face_style_score: float | None
    aesthetic: float | None = None
    image_reward: float | None = None

    @property
    def stylistic(self) -> bool:
        return is_stylistic(self.prompt)

    @property
    def face_failed(self) -> bool:
        return self.id_similarity is None


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def aggregate(records: list[ImageRecord]) -> dict[str, dict]:
    """Per set ("realistic", "stylistic", "all"): image count, mean of each metric, face_fail_cnt."""
    sets = {
        "realistic": [r for r in records if not r.stylistic],
        "stylistic": [r for r in records if r.stylistic],
        "all": records,
    }
    return {
        name: {
            "images": len(group),
            "id_similarity": _mean(r.id_similarity for r in group),
            "clip_score": _mean(r.clip_score for r in group),
            "face_style_score": _mean(r.face_style_score for r in group),
            "aesthetic": _mean(r.aesthetic for r in group),
            "image_reward": _mean(r.image_reward for r in group),
            "face_fail_cnt": sum(r.face_failed for r in group),
        }
        for name, group in sets.items()
    }


@dataclass(frozen=True)
class Scorers:
    """The models the protocol needs, as plain callables (so tests can give known embeddings).

    face: images (N, H, W, 3) in [0, 1] -> (embeddings (N, 512), crops (N, S, S, 3)), raising on no face.
    image_features / text_features: CLIP embeddings.
    aesthetic: CLIP image embeddings (N, D) -> AE scores (N,); optional.
    image_reward: (images (N, H, W, 3), prompts) -> IR scores (N,); optional.
    """

    face: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    image_features: Callable[[torch.Tensor], torch.Tensor]
    text_features: Callable[[list[str]], torch.Tensor]
    no_face_error: type[Exception] = ValueError
    aesthetic: Callable[[torch.Tensor], torch.Tensor] | None = None
    image_reward: Callable[[torch.Tensor, list[str]], torch.Tensor] | None = None


def clip_score(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """The raw cosine, as the published metric code and the paper's tables report it."""
    return cosine(image_features, text_features)


def score_image(
    scorers: Scorers, name: str, image: torch.Tensor, prompt: str, source_embedding: torch.Tensor
) -> ImageRecord:
    """All metrics of one generated image (1, H, W, 3) against its source identity's embedding."""
    image_features = scorers.image_features(image)
    overall = clip_score(image_features, scorers.text_features([prompt]))[0].item()
    aesthetic = scorers.aesthetic(image_features)[0].item() if scorers.aesthetic is not None else None
    reward = scorers.image_reward(image, [prompt])[0].item() if scorers.image_reward is not None else None
    try:
        embedding, crop = scorers.face(image)
    except scorers.no_face_error:
        return ImageRecord(name, prompt, None, overall, None, aesthetic, reward)
    similarity = cosine(embedding[0], source_embedding).item()
    face_style = clip_score(scorers.image_features(crop), scorers.text_features([style_part(prompt)]))[0].item()
    return ImageRecord(name, prompt, similarity, overall, face_style, aesthetic, reward)


def records_table(records: list[ImageRecord]) -> list[dict]:
    rows = []
    for record in records:
        row = asdict(record)
        row["set"] = "stylistic" if record.stylistic else "realistic"
        row["face_failed"] = record.face_failed
        rows.append(row)
    return rows
