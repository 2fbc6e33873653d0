"""Style & composition: one adapter, a style reference and a composition reference, each with its own weight."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.adapter import Adapter, Source
from ..bolid_core.adapter.layer_weights import EmbedsScaling
from ..bolid_core.adapter.tokens import ReferenceCombine
from ..bolid_core.comfy.attn2 import apply_adapter
from ..bolid_core.comfy.sources import SourceInputs, StyleComposition, applied_sources
from .adapter import combine_input, embeds_scaling_input, encode_batch_size_input, weight_input, window_order_error
from .checks import number_problem, require_finite_numbers
from .types import AdapterType


class ApplyStyleComposition(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDApplyStyleComposition",
            display_name="BoLID Apply Style & Composition",
            category="BoLID/adapter",
            description=(
                "An image adapter with two references (SDXL or SD1.5 blocks, as IPAdapter_plus's style & "
                "composition): the style image acts at the style block(s), the composition image at the "
                "composition block(s), each with its own weight; both share the unconditional input."
            ),
            inputs=[
                io.Model.Input("model"),
                AdapterType.Input("adapter"),
                io.ClipVision.Input("clip_vision"),
                io.Image.Input("image_style"),
                io.Image.Input("image_composition"),
                weight_input("weight_style", "Weight of the style reference at the style blocks."),
                weight_input("weight_composition", "Weight of the composition reference at the composition block."),
                io.Boolean.Input(
                    "expand_style", default=False,
                    tooltip="The style acts at every block but the composition one ('strong style and composition').",
                ),
                io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.01),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01),
                combine_input(),
                embeds_scaling_input(optional=False),
                io.Image.Input("image_negative", optional=True, tooltip="What the unconditional branch sees."),
                io.Mask.Input("attn_mask", optional=True, tooltip="Where the references act; any resolution."),
                encode_batch_size_input(),
            ],
            outputs=[io.Model.Output()],
        )  # fmt: skip

    @classmethod
    def validate_inputs(
        cls, weight_style: float, weight_composition: float, start_at: float, end_at: float
    ) -> bool | str:
        return number_problem(cls, locals()) or window_order_error(start_at, end_at) or True

    @classmethod
    def execute(
        cls, model, adapter: Adapter, clip_vision, image_style, image_composition, weight_style: float,
        weight_composition: float, expand_style: bool, start_at: float, end_at: float, combine_references: str,
        embeds_scaling: str, image_negative=None, attn_mask=None, encode_batch_size: int = 0,
    ) -> io.NodeOutput:  # fmt: skip
        numbers = {
            "weight_style": weight_style, "weight_composition": weight_composition,
            "start_at": start_at, "end_at": end_at,
        }  # fmt: skip
        require_finite_numbers(cls, numbers)
        inputs = SourceInputs(
            clip_vision, image_style, None, None, {Source.IMAGE: weight_style}, start_at, end_at,
            ReferenceCombine(combine_references), attn_mask,
            embeds_scaling=EmbedsScaling(embeds_scaling), image_negative=image_negative,
            encode_batch_size=encode_batch_size,
            composition=StyleComposition(image_composition, weight_composition, bool(expand_style)),
        )  # fmt: skip
        sources, _ = applied_sources(model, adapter, inputs)
        return io.NodeOutput(apply_adapter(model, adapter, sources))
