"""FastFace's evaluation protocol: ID similarity, CLIP score, face_fail_cnt, face_style_score."""

from .metrics import ImageRecord, Scorers, aggregate, clip_score, score_image, style_part

__all__ = ["ImageRecord", "Scorers", "aggregate", "clip_score", "score_image", "style_part"]
