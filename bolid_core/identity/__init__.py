"""Identity: face embeddings (insightface), hybrid fusion, identity mixing, regions."""

from .embeds import FaceEmbeds

__all__ = ["FaceEmbeds"]
