"""FastFace evaluation in the graph: ID similarity, CLIP score, face failures, face style score, optional AE and IR."""

from __future__ import annotations

import json

from comfy_api.latest import io

from ..bolid_core.comfy.folders import (
    clip_scorer_choices,
    clip_scorer_path,
    file_fingerprint,
    model_file_fingerprint,
    model_files,
    resolve_model_file,
)
from ..bolid_core.eval.aesthetic import AestheticPredictor
from ..bolid_core.eval.image_reward import ImageRewardScorer, vocab_path
from ..bolid_core.eval.metrics import aggregate, score_image
from ..bolid_core.eval.scorers import ClipScorer, make_scorers
from ..bolid_core.identity.face import FaceAnalyzer
from .types import FaceAnalyzerType

NO_MODEL = "none"
AESTHETIC_FOLDER = "aesthetic_predictors"
IMAGE_REWARD_FOLDER = "image_reward"


class FastFaceMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDFastFaceMetrics",
            display_name="BoLID FastFace Metrics",
            category="BoLID/evaluation",
            description=(
                "FastFace's protocol on generated images: ArcFace ID similarity to the reference face, CLIP score "
                "(raw cosine) against the prompt, face_fail_cnt, and the face crop's CLIP score against the style "
                "part of the prompt (`style ; person, location, action`: the text before the first ';'). Optional: "
                "LAION aesthetic score (AE, needs CLIP ViT-L/14) and ImageReward (IR). CLIP comes from a "
                "transformers folder in models/clip_scorers; AE from models/aesthetic_predictors; IR from "
                "models/image_reward (ImageReward.pt with bert-base-uncased's vocab.txt beside it)."
            ),
            inputs=[
                io.Image.Input("images", tooltip="Generated images, all made from this prompt."),
                io.Image.Input("reference_face"),
                io.String.Input("prompt", multiline=True),
                FaceAnalyzerType.Input("face_analyzer"),
                io.Combo.Input("clip_model", options=clip_scorer_choices()),
                io.Combo.Input(
                    "aesthetic_model",
                    options=[NO_MODEL, *model_files(AESTHETIC_FOLDER)],
                    default=NO_MODEL,
                    optional=True,
                    tooltip="LAION aesthetic predictor (e.g. sac+logos+ava1-l14-linearMSE.pth) for AE.",
                ),
                io.Combo.Input(
                    "image_reward_model",
                    options=[NO_MODEL, *model_files(IMAGE_REWARD_FOLDER)],
                    default=NO_MODEL,
                    optional=True,
                    tooltip="ImageReward.pt for IR; bert-base-uncased's vocab.txt must sit next to it.",
                ),
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
    def fingerprint_inputs(cls, **inputs) -> str:
        """The files read here, so a replaced or edited model file re-runs the node."""
        try:
            clip = file_fingerprint(clip_scorer_path(inputs.get("clip_model") or ""))
        except (ValueError, FileNotFoundError):
            clip = f"missing:{inputs.get('clip_model')}"
        parts = [clip]
        aesthetic = inputs.get("aesthetic_model") or NO_MODEL
        if aesthetic != NO_MODEL:
            parts.append(model_file_fingerprint(AESTHETIC_FOLDER, aesthetic))
        reward = inputs.get("image_reward_model") or NO_MODEL
        if reward != NO_MODEL:
            parts.append(model_file_fingerprint(IMAGE_REWARD_FOLDER, reward))
            try:
                parts.append(file_fingerprint(str(vocab_path(resolve_model_file(IMAGE_REWARD_FOLDER, reward)))))
            except (ValueError, FileNotFoundError):
                pass  # the checkpoint's own fingerprint already says missing
        return "|".join(parts)

    @classmethod
    def execute(
        cls,
        images,
        reference_face,
        prompt: str,
        face_analyzer: FaceAnalyzer,
        clip_model: str,
        aesthetic_model: str = NO_MODEL,
        image_reward_model: str = NO_MODEL,
    ) -> io.NodeOutput:
        clip = ClipScorer(clip_scorer_path(clip_model))
        aesthetic = None
        if aesthetic_model != NO_MODEL:
            aesthetic = AestheticPredictor(resolve_model_file(AESTHETIC_FOLDER, aesthetic_model))
        reward = None
        if image_reward_model != NO_MODEL:
            reward = ImageRewardScorer(resolve_model_file(IMAGE_REWARD_FOLDER, image_reward_model))
        scorers = make_scorers(face_analyzer, clip, aesthetic, reward)
        source = scorers.face(reference_face[:1])[0][0]
        records = [score_image(scorers, str(i), images[i : i + 1], prompt, source) for i in range(images.shape[0])]
        table = aggregate(records)["all"]
        return io.NodeOutput(
            json.dumps(table, indent=2), table["id_similarity"] or 0.0, table["clip_score"], table["face_fail_cnt"]
        )
