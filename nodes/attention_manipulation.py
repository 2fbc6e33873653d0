"""FastFace attention manipulation (AM) of an applied adapter's identity branch."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.adapter import Source
from ..bolid_core.attention.manipulation import AMCustom, AMPreset, manipulation_for
from ..bolid_core.comfy.attn2 import with_manipulation
from ..bolid_core.guidance import parse_step_values


class FastFaceAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        scale = lambda name, value: io.Float.Input(name, default=value, min=0.0, max=10.0, step=0.01)  # noqa: E731
        return io.Schema(
            node_id="BoLIDFastFaceAttention",
            display_name="BoLID FastFace Attention Manipulation",
            category="BoLID/guidance",
            description=(
                "FastFace AM on the identity branch of an applied adapter (ours or IP-Adapter FaceID-Plus-v2). "
                "AM1: s * A^p. AM2: scheduled softmax around the p-quantile, token-0 inversion, AdaIN. The "
                "published presets ignore the values below; the custom ones use them. Schedules follow the "
                "sampler's sigma."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A model patched by BoLID Apply Adapter."),
                io.Combo.Input(
                    "preset", options=[preset.value for preset in AMPreset], default=AMPreset.AM2_PUBLISHED.value
                ),
                io.Combo.Input("source", options=[source.value for source in Source], default=Source.FACE.value),
                io.Boolean.Input("down_blocks", default=True),
                io.Boolean.Input("mid_block", default=False),
                io.Boolean.Input("up_blocks", default=True),
                scale("scale_down", 1.45), scale("scale_mid", 1.55), scale("scale_up", 1.55),
                io.Float.Input("power", default=1.3, min=0.1, max=5.0, step=0.05, tooltip="AM1's p."),
                io.Float.Input("quantile", default=0.65, min=0.0, max=1.0, step=0.01, tooltip="AM2's p."),
                io.String.Input("sharpness", default="7.5, 5", tooltip="AM2's d per step; the last value holds."),
                io.Float.Input("adain_weight", default=0.7, min=0.0, max=1.0, step=0.01, tooltip="AM2; 1 = no AdaIN."),
                io.Boolean.Input("invert_first_token", default=True, tooltip="AM2."),
            ],
            outputs=[io.Model.Output()],
        )  # fmt: skip

    @classmethod
    def validate_inputs(cls, sharpness: str) -> bool | str:
        try:
            parse_step_values(sharpness)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(
        cls, model, preset: str, source: str, down_blocks: bool, mid_block: bool, up_blocks: bool,
        scale_down: float, scale_mid: float, scale_up: float, power: float, quantile: float, sharpness: str,
        adain_weight: float, invert_first_token: bool,
    ) -> io.NodeOutput:  # fmt: skip
        targets = {
            "input": (down_blocks, scale_down),
            "middle": (mid_block, scale_mid),
            "output": (up_blocks, scale_up),
        }
        sharp = parse_step_values(sharpness)
        custom = AMCustom(
            {block: value for block, (on, value) in targets.items() if on}, power, quantile,
            tuple(sharp) if isinstance(sharp, list) else (sharp,), None if adain_weight >= 1.0 else adain_weight,
            invert_first_token,
        )  # fmt: skip
        manipulation = manipulation_for(AMPreset(preset), custom)
        return io.NodeOutput(with_manipulation(model, manipulation, {Source(source)}))
