"""Identity: face embeddings (insightface), hybrid fusion, identity mixing, regions."""

from .embeds import FaceEmbeds
from .mixing import (
    DEFAULT_OUTLIER_BELOW,
    PhotoCombine,
    SimilarityReport,
    combine_photos,
    face_similarity,
    mix_faces,
    mix_identities,
    mixing_ratios,
)

__all__ = [
    "DEFAULT_OUTLIER_BELOW",
    "FaceEmbeds",
    "PhotoCombine",
    "SimilarityReport",
    "combine_photos",
    "face_similarity",
    "mix_faces",
    "mix_identities",
    "mixing_ratios",
]
# The insightface-backed analyser lives in .face and imports insightface only when a pack is loaded.
