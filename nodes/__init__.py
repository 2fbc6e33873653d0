"""Thin V3 node classes, one module per concern: a schema and a call into bolid_core."""

from comfy_api.latest import ComfyExtension, io

from .adapter import AdapterLoader, ApplyAdapter
from .attention_manipulation import FastFaceAttention
from .body import (
    BlendBodyIDs,
    BodyEncoderLoader,
    BodyIDFromImages,
    LoadBodyID,
    PoseModelLoader,
    RandomBodyID,
    SaveBodyID,
)
from .embeds import EncodeImage, LoadFaceEmbeds, LoadImageEmbeds, SaveFaceEmbeds, SaveImageEmbeds
from .evaluation import FastFaceMetrics
from .face import FaceEmbed, InsightFaceLoader
from .guidance import DecoupledCFGGuider
from .identity import FacesOfOnePerson, IdentityMix
from .keypoints import KeypointsFromJSON, KeypointWeighting
from .miniature import MiniatureModelLoader
from .negative_noise import NegativeImageNoise
from .regions import AddRegion, RegionsPreview
from .segmentation import PersonRegions, SegmentationModelLoader
from .style_composition import ApplyStyleComposition
from .training import TrainAdapter
from .unified_loader import UnifiedLoader


class BoLIDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [
            KeypointsFromJSON, KeypointWeighting, AdapterLoader, ApplyAdapter, InsightFaceLoader, FaceEmbed,
            PoseModelLoader, BodyEncoderLoader, BodyIDFromImages, SaveBodyID, LoadBodyID, RandomBodyID, BlendBodyIDs,
            DecoupledCFGGuider, FastFaceAttention, FastFaceMetrics, IdentityMix, FacesOfOnePerson,
            SegmentationModelLoader, PersonRegions, AddRegion, RegionsPreview, TrainAdapter,
            MiniatureModelLoader, UnifiedLoader, ApplyStyleComposition,
            EncodeImage, SaveImageEmbeds, LoadImageEmbeds, SaveFaceEmbeds, LoadFaceEmbeds, NegativeImageNoise,
        ]  # fmt: skip
