"""FastFace's evaluation protocol (ID similarity, CLIP score, face_fail_cnt, face_style_score, AE, IR) and
BoLID's distribution metrics (FID, IS)."""

from .metrics import ImageRecord, Scorers, aggregate, clip_score, is_stylistic, score_image, style_part

__all__ = ["ImageRecord", "Scorers", "aggregate", "clip_score", "is_stylistic", "score_image", "style_part"]
