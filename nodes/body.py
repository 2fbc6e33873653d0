"""Body ID: pose model and body encoder loaders, views -> BODY_ID, save/load, random and blended bodies."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..bolid_core.body import BodyID, blend_body_ids, load_body_id, sample_prior, save_body_id
from ..bolid_core.body.pipeline import WeightingParams, body_id_from_views, draw_preview
from ..bolid_core.body.pose import detect_poses, load_pose_model
from ..bolid_core.body.vae import DEFAULT_LATENT_DIM, BodyEncoder, load_body_vae
from ..bolid_core.comfy.folders import (
    body_encoder_choices,
    body_id_choices,
    body_id_path,
    file_fingerprint,
    model_file_fingerprint,
    model_files,
    resolve_model_file,
    saved_body_id_path,
)
from ..bolid_core.comfy.progress import progress_callbacks
from .checks import require_finite_numbers, validate_finite_numbers
from .types import BodyEncoderType, BodyIDType, PoseModelType

log = logging.getLogger("bolid")


class PoseModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDPoseModelLoader",
            display_name="BoLID Pose Model Loader",
            category="BoLID/body",
            description=(
                "A YOLO11-pose model (.pt or .onnx) from models/ultralytics. Runs offline; nothing is downloaded. "
                ".pt files are checked before loading and refused if they hold anything but a pose model."
            ),
            inputs=[io.Combo.Input("pose_model", options=model_files("ultralytics"))],
            outputs=[PoseModelType.Output(display_name="pose_model")],
        )

    @classmethod
    def fingerprint_inputs(cls, pose_model: str) -> str:
        return model_file_fingerprint("ultralytics", pose_model)

    @classmethod
    def execute(cls, pose_model: str) -> io.NodeOutput:
        return io.NodeOutput(load_pose_model(resolve_model_file("ultralytics", pose_model)))


class BodyEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDBodyEncoderLoader",
            display_name="BoLID Body Encoder Loader",
            category="BoLID/body",
            description="The multi-view body VAE (safetensors) from models/bolid.",
            inputs=[io.Combo.Input("body_encoder", options=body_encoder_choices())],
            outputs=[BodyEncoderType.Output(display_name="body_encoder")],
        )

    @classmethod
    def fingerprint_inputs(cls, body_encoder: str) -> str:
        return model_file_fingerprint("bolid", body_encoder)

    @classmethod
    def execute(cls, body_encoder: str) -> io.NodeOutput:
        return io.NodeOutput(load_body_vae(resolve_model_file("bolid", body_encoder)))


class BodyIDFromImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDBodyIDFromImages",
            display_name="BoLID Body ID From Images",
            category="BoLID/body",
            description=(
                "Views of one person -> BODY_ID: YOLO11-pose keypoints, Gaussian keypoint weighting, and the "
                "body VAE's per-view posteriors averaged by pose confidence. Views without a person are skipped."
            ),
            inputs=[
                PoseModelType.Input("pose_model"),
                BodyEncoderType.Input("body_encoder"),
                io.Image.Input("images", tooltip="One or many views (any number) of the same person."),
                io.Float.Input("sigma", default=0.08, min=0.001, max=1.0, step=0.001),
                io.Float.Input("alpha", default=0.25, min=0.0, max=1.0, step=0.01),
                io.Float.Input("detection_confidence", default=0.25, min=0.0001, max=1.0, step=0.01),
                io.Float.Input("keypoint_confidence", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Keypoints below this confidence count as invisible and are zeroed."),
            ],
            outputs=[
                BodyIDType.Output(display_name="body_id"),
                io.Image.Output(display_name="preview"),
                io.String.Output(display_name="report"),
            ],
        )  # fmt: skip

    @classmethod
    def validate_inputs(
        cls, sigma: float | None = None, alpha: float | None = None, detection_confidence: float | None = None,
        keypoint_confidence: float | None = None,
    ) -> bool | str:  # fmt: skip
        return validate_finite_numbers(cls, locals())

    @classmethod
    def execute(
        cls, pose_model, body_encoder: BodyEncoder, images, sigma: float, alpha: float,
        detection_confidence: float, keypoint_confidence: float,
    ) -> io.NodeOutput:  # fmt: skip
        require_finite_numbers(cls, {
            "sigma": sigma, "alpha": alpha, "detection_confidence": detection_confidence,
            "keypoint_confidence": keypoint_confidence,
        })  # fmt: skip
        progress, check_interrupt = progress_callbacks(images.shape[0])
        poses = detect_poses(
            pose_model, images, detection_confidence=detection_confidence, keypoint_confidence=keypoint_confidence,
            progress=progress, check_interrupt=check_interrupt,
        )  # fmt: skip
        weighting = WeightingParams(sigma, alpha)
        body = body_id_from_views(body_encoder.vae, body_encoder.identity, images, poses, weighting, check_interrupt)
        for note in poses.notes:
            log.warning("BoLID Body ID From Images: %s", note)
        report = "\n".join([f"body ID from {body.source_count} of {images.shape[0]} view(s).", *poses.notes])
        return io.NodeOutput(body, draw_preview(images, poses, weighting), report)


class SaveBodyID(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDSaveBodyID",
            display_name="BoLID Save Body ID",
            category="BoLID/body",
            description="Saves a body ID to models/bolid/bodies/<name>.safetensors, for text-only use later.",
            inputs=[BodyIDType.Input("body_id"), io.String.Input("name", default="my_body")],
            outputs=[io.String.Output(display_name="saved_as")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, body_id: BodyID, name: str) -> io.NodeOutput:
        path = save_body_id(body_id, body_id_path(name))
        return io.NodeOutput(path.name)


class LoadBodyID(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDLoadBodyID",
            display_name="BoLID Load Body ID",
            category="BoLID/body",
            inputs=[io.Combo.Input("body", options=body_id_choices())],
            outputs=[BodyIDType.Output(display_name="body_id")],
        )

    @classmethod
    def fingerprint_inputs(cls, body: str) -> str:
        try:
            return file_fingerprint(saved_body_id_path(body))
        except FileNotFoundError:
            return file_fingerprint(body_id_path(body))  # "missing:<where Save Body ID would write it>"
        except ValueError:
            return f"invalid:{body!r}"  # execute says why

    @classmethod
    def execute(cls, body: str) -> io.NodeOutput:
        return io.NodeOutput(load_body_id(saved_body_id_path(body)))


class RandomBodyID(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDRandomBodyID",
            display_name="BoLID Random Body ID",
            category="BoLID/body",
            description="A body sampled from the body VAE's prior, N(0, I), with a seed.",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True),
                io.Int.Input("dim", default=DEFAULT_LATENT_DIM, min=1, max=8192, tooltip="The body latent size."),
            ],
            outputs=[BodyIDType.Output(display_name="body_id")],
        )

    @classmethod
    def execute(cls, seed: int, dim: int) -> io.NodeOutput:
        return io.NodeOutput(sample_prior(dim, seed))


class BlendBodyIDs(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDBlendBodyIDs",
            display_name="BoLID Blend Body IDs",
            category="BoLID/body",
            inputs=[
                BodyIDType.Input("body_a"),
                BodyIDType.Input("body_b"),
                io.Float.Input("weight_b", default=0.5, min=0.0, max=1.0, step=0.01),
            ],
            outputs=[BodyIDType.Output(display_name="body_id")],
        )

    @classmethod
    def validate_inputs(cls, weight_b: float | None = None) -> bool | str:
        return validate_finite_numbers(cls, locals())

    @classmethod
    def execute(cls, body_a: BodyID, body_b: BodyID, weight_b: float) -> io.NodeOutput:
        require_finite_numbers(cls, {"weight_b": weight_b})
        return io.NodeOutput(blend_body_ids([body_a, body_b], [1.0 - weight_b, weight_b]))
