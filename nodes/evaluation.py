"""FastFace evaluation in the graph: ID similarity, CLIP score, face failures, face style score."""

from __future__ import annotations

import json

from comfy_api.latest import io

from ..bolid_core.comfy.folders import clip_scorer_choices, clip_scorer_path
from ..bolid_core.eval.metrics import aggregate, score_image
from ..bolid_core.eval.scorers import ClipScorer, make_scorers
from ..bolid_core.identity.face import FaceAnalyzer
from .types import FaceAnalyzerType


class FastFaceMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDFastFaceMetrics",
            display_name="BoLID FastFace Metrics",
            category="BoLID/evaluation",
            description=(
                "FastFace's protocol on generated images: ArcFace ID similarity to the reference face, CLIP score "
                "against the prompt, face_fail_cnt, and the face crop's CLIP score against the style part of the "
                "prompt (after ';'). CLIP comes from a transformers folder in models/clip_scorers."
            ),
            inputs=[
                io.Image.Input("images", tooltip="Generated images, all made from this prompt."),
                io.Image.Input("reference_face"),
                io.String.Input("prompt", multiline=True),
                FaceAnalyzerType.Input("face_analyzer"),
                io.Combo.Input("clip_model", options=clip_scorer_choices()),
            ],
            outputs=[
                io.String.Output(display_name="report"),
                io.Float.Output(display_name="id_similarity"),
                io.Float.Output(display_name="clip_score"),
                io.Int.Output(display_name="face_fail_cnt"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls, images, reference_face, prompt: str, face_analyzer: FaceAnalyzer, clip_model: str
    ) -> io.NodeOutput:
        scorers = make_scorers(face_analyzer, ClipScorer(clip_scorer_path(clip_model)))
        source = scorers.face(reference_face[:1])[0][0]
        records = [score_image(scorers, str(i), images[i : i + 1], prompt, source) for i in range(images.shape[0])]
        table = aggregate(records)["all"]
        return io.NodeOutput(
            json.dumps(table, indent=2), table["id_similarity"] or 0.0, table["clip_score"], table["face_fail_cnt"]
        )
