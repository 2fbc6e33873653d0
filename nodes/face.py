"""Faces: load an insightface pack, embed reference faces (ArcFace + aligned crops for CLIP vision)."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.comfy.folders import file_fingerprint, insightface_packs, insightface_root
from ..bolid_core.comfy.progress import progress_callbacks
from ..bolid_core.identity.face import (
    DEFAULT_CROP_SIZE,
    ExecutionProvider,
    FaceAnalyzer,
    FaceChoice,
    FaceModelError,
    find_model_pack,
    load_face_analysis,
)
from ..bolid_core.identity.face_preview import draw_face_preview
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
                "One face of each image (the largest, or the i-th from the left in a group photo): its ArcFace "
                "embedding and an aligned crop for CLIP vision. Several images give several references; the apply "
                "node averages or concatenates them. The preview shows every face found, numbered left to right, "
                "with the chosen one highlighted."
            ),
            inputs=[
                FaceAnalyzerType.Input("face_analyzer"),
                io.Image.Input("images"),
                io.Int.Input(
                    "crop_size", default=DEFAULT_CROP_SIZE, min=112, max=1024, step=16,
                    tooltip="Aligned crop size: 256 as SDXL FaceID uses; a multiple of 112 or 128.",
                ),
                # Optional, so API workflows saved before these inputs existed still validate.
                io.Combo.Input(
                    "face", options=[choice.value for choice in FaceChoice], default=FaceChoice.LARGEST.value,
                    optional=True,
                    tooltip="Which face of a group photo: the largest, or the face_index-th counting from the left.",
                ),
                io.Int.Input(
                    "face_index", default=0, min=0, max=63, optional=True,
                    tooltip="With index_left_to_right: 0 is the leftmost face (by box centre). See the preview.",
                ),
            ],
            outputs=[
                FaceEmbedsType.Output(display_name="face_embeds"),
                io.Image.Output(display_name="preview"),
            ],
        )  # fmt: skip

    @classmethod
    def execute(
        cls,
        face_analyzer: FaceAnalyzer,
        images,
        crop_size: int,
        face: str = FaceChoice.LARGEST.value,
        face_index: int = 0,
    ) -> io.NodeOutput:
        progress, check_interrupt = progress_callbacks(images.shape[0])
        embeds, found = face_analyzer.embed_and_locate(
            images, crop_size, progress=progress, check_interrupt=check_interrupt, choice=face, face_index=face_index
        )
        return io.NodeOutput(embeds, draw_face_preview(images, found))
