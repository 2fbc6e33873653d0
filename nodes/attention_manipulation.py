"""FastFace attention manipulation (AM) of an applied adapter's identity branch."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.adapter import Source
from ..bolid_core.attention.manipulation import (
    AM1_POWER,
    AM1_SCALE_DOWN,
    AM1_SCALE_UP,
    AM2_ADAIN_WEIGHT,
    AM2_QUANTILE,
    AM2_SCALE,
    AM2_SHARPNESS,
    SCALE_RANGE,
    SHARPNESS_RANGE,
    AMCustom,
    AMPreset,
    manipulation_for,
    step_schedule,
)
from ..bolid_core.comfy.attn2 import with_manipulation
from .checks import require_finite_numbers, validate_finite_numbers

_PUBLISHED = "The published presets use exactly this default."


def _schedules(am2_scale: str | None, am2_sharpness: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The two AM2 schedule strings as numbers; a ValueError naming the input. None (a link) passes."""
    scale = step_schedule(am2_scale, "am2_scale", *SCALE_RANGE) if am2_scale is not None else ()
    sharpness = (
        step_schedule(am2_sharpness, "am2_sharpness", *SHARPNESS_RANGE, low_included=False)
        if am2_sharpness is not None
        else ()
    )
    return scale, sharpness


class FastFaceAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        low, high = SCALE_RANGE

        def am1_scale(name: str, value: float, tooltip: str) -> io.Float.Input:
            return io.Float.Input(name, default=value, min=low, max=high, step=0.01, tooltip=tooltip)

        return io.Schema(
            node_id="BoLIDFastFaceAttention",
            display_name="BoLID FastFace Attention Manipulation",
            category="BoLID/guidance",
            description=(
                "FastFace AM on the identity branch of an applied adapter (ours or IP-Adapter FaceID-Plus-v2). "
                "AM1: s * A^p. AM2: scheduled softmax around the p-quantile, token-0 inversion, AdaIN. The "
                "published presets run the authors' code's values, which are the am1_* and am2_* defaults, on the "
                "down and up blocks; the custom presets use the am1_* or am2_* values and the block switches. "
                "Schedules follow the sampler's sigma: one value per step, the last holds for later steps."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A model patched by BoLID Apply Adapter."),
                io.Combo.Input(
                    "preset", options=[preset.value for preset in AMPreset], default=AMPreset.AM2_PUBLISHED.value
                ),
                io.Combo.Input("source", options=[source.value for source in Source], default=Source.FACE.value),
                io.Boolean.Input("down_blocks", default=True, tooltip="Custom presets. " + _PUBLISHED),
                io.Boolean.Input("mid_block", default=False, tooltip="Custom presets. " + _PUBLISHED),
                io.Boolean.Input("up_blocks", default=True, tooltip="Custom presets. " + _PUBLISHED),
                am1_scale(
                    "am1_scale_down", AM1_SCALE_DOWN,
                    f"AM1's s on down blocks. {_PUBLISHED} (The paper's text says 1.45 here; the code uses 1.55.)",
                ),
                am1_scale(
                    "am1_scale_mid", 1.0,
                    "AM1's s on the mid block, with mid_block on. No published value: the published presets leave "
                    "the mid block alone.",
                ),
                am1_scale(
                    "am1_scale_up", AM1_SCALE_UP,
                    f"AM1's s on up blocks. {_PUBLISHED} (The paper's text says 1.55 here; the code uses 1.45.)",
                ),
                io.Float.Input(
                    "am1_power", default=AM1_POWER, min=0.1, max=5.0, step=0.05, tooltip=f"AM1's p. {_PUBLISHED}"
                ),
                io.String.Input(
                    "am2_scale", default=", ".join(str(v) for v in AM2_SCALE),
                    tooltip=f"AM2's s per step, each in [0, 10]; the last value holds. {_PUBLISHED}",
                ),
                io.String.Input(
                    "am2_sharpness", default=", ".join(str(v) for v in AM2_SHARPNESS),
                    tooltip=f"AM2's d per step, each above 0 and at most 100; the last value holds. {_PUBLISHED}",
                ),
                io.Float.Input(
                    "am2_quantile", default=AM2_QUANTILE, min=0.0, max=1.0, step=0.01,
                    tooltip=f"AM2's p: the quantile over queries that splits low from high. {_PUBLISHED}",
                ),
                io.Float.Input(
                    "am2_adain_weight", default=AM2_ADAIN_WEIGHT, min=0.0, max=1.0, step=0.01,
                    tooltip=f"AM2's AdaIN blend w on map and output; 1 = no AdaIN. {_PUBLISHED}",
                ),
                io.Boolean.Input(
                    "am2_invert_first_token", default=True, tooltip=f"AM2: token 0 is inverted around the transform. "
                    f"{_PUBLISHED}",
                ),
            ],
            outputs=[io.Model.Output()],
        )  # fmt: skip

    @classmethod
    def validate_inputs(
        cls, am1_scale_down: float | None = None, am1_scale_mid: float | None = None,
        am1_scale_up: float | None = None, am1_power: float | None = None, am2_scale: str | None = None,
        am2_sharpness: str | None = None, am2_quantile: float | None = None, am2_adain_weight: float | None = None,
    ) -> bool | str:  # fmt: skip
        try:
            _schedules(am2_scale, am2_sharpness)
        except ValueError as error:
            return str(error)
        return validate_finite_numbers(cls, locals())

    @classmethod
    def execute(
        cls, model, preset: str, source: str, down_blocks: bool, mid_block: bool, up_blocks: bool,
        am1_scale_down: float, am1_scale_mid: float, am1_scale_up: float, am1_power: float, am2_scale: str,
        am2_sharpness: str, am2_quantile: float, am2_adain_weight: float, am2_invert_first_token: bool,
    ) -> io.NodeOutput:  # fmt: skip
        require_finite_numbers(
            cls,
            {
                "am1_scale_down": am1_scale_down, "am1_scale_mid": am1_scale_mid, "am1_scale_up": am1_scale_up,
                "am1_power": am1_power, "am2_quantile": am2_quantile, "am2_adain_weight": am2_adain_weight,
            },
        )  # fmt: skip
        scale, sharpness = _schedules(am2_scale, am2_sharpness)
        switches = {"input": down_blocks, "middle": mid_block, "output": up_blocks}
        custom = AMCustom(
            blocks=frozenset(block for block, on in switches.items() if on),
            am1_scales={"input": am1_scale_down, "middle": am1_scale_mid, "output": am1_scale_up},
            am1_power=am1_power, am2_scale=scale, am2_sharpness=sharpness, am2_quantile=am2_quantile,
            am2_adain_weight=None if am2_adain_weight >= 1.0 else am2_adain_weight,
            am2_invert_first_token=am2_invert_first_token,
        )  # fmt: skip
        manipulation = manipulation_for(AMPreset(preset), custom)
        return io.NodeOutput(with_manipulation(model, manipulation, {Source(source)}))
