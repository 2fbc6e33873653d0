"""Identity: face embeddings (insightface), hybrid fusion, identity mixing, regions."""

from .embeds import FaceEmbeds

__all__ = ["FaceEmbeds"]
# The insightface-backed analyser lives in .face and imports insightface only when a pack is loaded.
