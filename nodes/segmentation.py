"""Person regions: a YOLO segmentation model finds the people in a layout image, one MASK layer each."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.body.segmentation import load_segmentation_model, person_masks
from ..bolid_core.comfy.folders import model_file_fingerprint, model_files, resolve_model_file
from ..bolid_core.identity.region_preview import draw_regions_preview
from .checks import require_finite_numbers, validate_finite_numbers
from .types import SegmentationModelType


class SegmentationModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDSegmentationModelLoader",
            display_name="BoLID Segmentation Model Loader",
            category="BoLID/regions",
            description=(
                "A YOLO11-seg model (.pt or .onnx) from models/ultralytics, with a 'person' class (the COCO models "
                "have one). Runs offline; nothing is downloaded. .pt files are checked before loading and refused "
                "if they hold anything but a segmentation model."
            ),
            inputs=[io.Combo.Input("segmentation_model", options=model_files("ultralytics"))],
            outputs=[SegmentationModelType.Output(display_name="segmentation_model")],
        )

    @classmethod
    def fingerprint_inputs(cls, segmentation_model: str) -> str:
        return model_file_fingerprint("ultralytics", segmentation_model)

    @classmethod
    def execute(cls, segmentation_model: str) -> io.NodeOutput:
        return io.NodeOutput(load_segmentation_model(resolve_model_file("ultralytics", segmentation_model)))


class PersonRegions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDPersonRegions",
            display_name="BoLID Person Regions",
            category="BoLID/regions",
            description=(
                "The people in one image, one mask each, numbered left to right (by the centre of each person's "
                "box): mask i is person i. The most confident max_people are kept; `order` reorders or picks them."
            ),
            inputs=[
                SegmentationModelType.Input("segmentation_model"),
                io.Image.Input("image", tooltip="One image (the layout). A batch is refused: pick one image first."),
                io.Float.Input("confidence", default=0.25, min=0.000001, max=1.0, step=0.01,
                               tooltip="People the model is less sure of are ignored. Lower it if someone is missed."),
                io.Int.Input("max_people", default=2, min=1, max=16,
                             tooltip="Keep at most this many people, the most confident ones."),
                io.String.Input("order", default="",
                                tooltip="Empty: left to right. '1,0': the left-to-right numbers of the preview in "
                                        "the order you want. A shorter list keeps only the people it names."),
            ],
            outputs=[
                io.Mask.Output(display_name="masks", tooltip="(people, H, W): layer i is person i."),
                io.Image.Output(display_name="preview", tooltip="Each person tinted in their colour and numbered."),
            ],
        )  # fmt: skip

    @classmethod
    def validate_inputs(cls, confidence: float | None = None) -> bool | str:
        return validate_finite_numbers(cls, locals())

    @classmethod
    def execute(cls, segmentation_model, image, confidence: float, max_people: int, order: str) -> io.NodeOutput:
        require_finite_numbers(cls, {"confidence": confidence})
        people = person_masks(segmentation_model, image, confidence=confidence, max_people=max_people, order=order)
        preview = draw_regions_preview(image, [mask[None] for mask in people.masks])
        return io.NodeOutput(people.masks, preview)
