"""Faces: load an insightface pack, embed reference faces (ArcFace + aligned crops for CLIP vision)."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.comfy.folders import file_fingerprint, insightface_packs, insightface_root
from ..bolid_core.comfy.progress import progress_callbacks
from ..bolid_core.identity.face import (
    DEFAULT_CROP_SIZE,
    ExecutionProvider,
    FaceAnalyzer,
    FaceModelError,
    find_model_pack,
    load_face_analysis,
)
from .types import FaceAnalyzerType, FaceEmbedsType


class InsightFaceLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDInsightFaceLoader",
            display_name="BoLID InsightFace Loader",
            category="BoLID/face",
            description=(
                "Loads an insightface pack (detector + ArcFace) from models/insightface/models/<pack>. "
                "Nothing is downloaded: put the pack folder there."
            ),
            inputs=[
                io.Combo.Input("model_pack", options=insightface_packs()),
                io.Combo.Input("provider", options=[provider.name for provider in ExecutionProvider]),
            ],
            outputs=[FaceAnalyzerType.Output(display_name="face_analyzer")],
        )

    @classmethod
    def fingerprint_inputs(cls, model_pack: str, provider: str) -> str:
        try:
            return file_fingerprint(str(find_model_pack(insightface_root(), model_pack)))
        except (ValueError, FaceModelError):
            return f"missing:{model_pack!r}"  # execute says why

    @classmethod
    def execute(cls, model_pack: str, provider: str) -> io.NodeOutput:
        # By name, with a message listing the known ones: a prompt can send any string.
        return io.NodeOutput(load_face_analysis(insightface_root(), model_pack, provider))


class FaceEmbed(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDFaceEmbed",
            display_name="BoLID Face Embed",
            category="BoLID/face",
            description=(
                "The largest face of each image: its ArcFace embedding and an aligned crop for CLIP vision. "
                "Several images give several references; the apply node averages or concatenates them."
            ),
            inputs=[
                FaceAnalyzerType.Input("face_analyzer"),
                io.Image.Input("images"),
                io.Int.Input(
                    "crop_size", default=DEFAULT_CROP_SIZE, min=112, max=1024, step=16,
                    tooltip="Aligned crop size: 256 as SDXL FaceID uses; a multiple of 112 or 128.",
                ),
            ],
            outputs=[FaceEmbedsType.Output(display_name="face_embeds")],
        )  # fmt: skip

    @classmethod
    def execute(cls, face_analyzer: FaceAnalyzer, images, crop_size: int) -> io.NodeOutput:
        progress, check_interrupt = progress_callbacks(images.shape[0])
        embeds = face_analyzer.embed(images, crop_size, progress=progress, check_interrupt=check_interrupt)
        return io.NodeOutput(embeds)
