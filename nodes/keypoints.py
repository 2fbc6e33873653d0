"""Pose keypoints: typed-in keypoints and the Gaussian keypoint weighting of views (eqs. 11-13)."""

from __future__ import annotations

import json
import logging

from comfy_api.latest import io

from ..bolid_core.body import PoseKeypoints, parse_keypoints_json, weight_views
from .checks import require_finite_numbers, validate_finite_numbers
from .types import Keypoints

log = logging.getLogger("bolid")

# A person standing, facing the camera, in COCO order; x and y are fractions of width and height.
_STANDING_PERSON = [
    [0.50, 0.14, 1.0], [0.52, 0.12, 1.0], [0.48, 0.12, 1.0], [0.55, 0.13, 1.0], [0.45, 0.13, 1.0],
    [0.62, 0.25, 1.0], [0.38, 0.25, 1.0], [0.68, 0.40, 1.0], [0.32, 0.40, 1.0], [0.70, 0.54, 1.0],
    [0.30, 0.54, 1.0], [0.57, 0.55, 1.0], [0.43, 0.55, 1.0], [0.58, 0.73, 1.0], [0.42, 0.73, 1.0],
    [0.58, 0.90, 1.0], [0.42, 0.90, 1.0],
]  # fmt: skip
DEFAULT_KEYPOINTS_JSON = "[\n" + ",\n".join(f"  {json.dumps(p)}" for p in _STANDING_PERSON) + "\n]"


class KeypointsFromJSON(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDKeypointsFromJSON",
            display_name="BoLID Keypoints (JSON)",
            category="BoLID/body",
            description=(
                "COCO-17 pose keypoints typed in as JSON: one view of 17 [x, y, confidence] triples, or a "
                "list of views. x and y are fractions of the image width and height; confidence 0 marks a "
                "point as invisible."
            ),
            inputs=[io.String.Input("keypoints_json", multiline=True, default=DEFAULT_KEYPOINTS_JSON)],
            outputs=[Keypoints.Output(display_name="keypoints")],
        )

    @classmethod
    def validate_inputs(cls, keypoints_json: str) -> bool | str:
        try:
            parse_keypoints_json(keypoints_json)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, keypoints_json: str) -> io.NodeOutput:
        return io.NodeOutput(parse_keypoints_json(keypoints_json))


class KeypointWeighting(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDKeypointWeighting",
            display_name="BoLID Keypoint Weighting",
            category="BoLID/body",
            description=(
                "Emphasises the body around its pose keypoints (BoLID eqs. 11-13): each pixel is scaled by "
                "alpha + (1 - alpha) x the normalised max of Gaussians centred on the visible keypoints."
            ),
            inputs=[
                io.Image.Input("images", tooltip="One or more views of the person."),
                Keypoints.Input("keypoints", tooltip="One keypoint set per image, or one for all images."),
                io.Float.Input(
                    "sigma", default=0.08, min=0.001, max=1.0, step=0.001,
                    tooltip="Gaussian width as a fraction of the image's shorter side.",
                ),
                io.Float.Input(
                    "alpha", default=0.25, min=0.0, max=1.0, step=0.01,
                    tooltip="Weight kept far from every keypoint: 1 leaves the image unchanged.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="weighted_images"),
                io.Image.Output(display_name="weight_maps"),
            ],
        )  # fmt: skip

    @classmethod
    def validate_inputs(cls, sigma: float | None = None, alpha: float | None = None) -> bool | str:
        return validate_finite_numbers(cls, locals())

    @classmethod
    def execute(cls, images, keypoints: PoseKeypoints, sigma: float, alpha: float) -> io.NodeOutput:
        require_finite_numbers(cls, {"sigma": sigma, "alpha": alpha})
        sigma_px = sigma * min(images.shape[1], images.shape[2])
        result = weight_views(images, keypoints, sigma_px=sigma_px, alpha=alpha)
        for view in result.views_without_keypoints:
            log.warning("BoLID Keypoint Weighting: view %d has no visible keypoint; it is left unweighted.", view)
        weight_maps = result.weight_maps[..., None].expand(-1, -1, -1, 3).to(images.dtype)
        return io.NodeOutput(result.images, weight_maps)
