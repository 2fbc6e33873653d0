"""A noise image for an adapter's image_negative: what the unconditional branch sees instead of the null input."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.negative_noise import MAX_BLUR, NoiseType, negative_noise
from .checks import require_finite_numbers, validate_finite_numbers


class NegativeImageNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDNegativeImageNoise",
            display_name="BoLID Negative Image Noise",
            category="BoLID/embeds",
            description=(
                "A 224×224 noise image for the apply node's image_negative: fade (blend towards uniform noise), "
                "dissolve (pixels replaced by noise), gaussian (noise added), shuffle (warped, flipped and noised). "
                "Made from the image's centre square when an image is given, else from black. Seeded."
            ),
            inputs=[
                io.Combo.Input("type", options=[kind.value for kind in NoiseType]),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05),
                io.Int.Input("blur", default=0, min=0, max=MAX_BLUR,
                             tooltip="Gaussian blur kernel size in pixels (even sizes round up to odd); 0: none."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Image.Input("image", optional=True),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )  # fmt: skip

    @classmethod
    def validate_inputs(cls, strength: float | None = None) -> bool | str:
        return validate_finite_numbers(cls, locals())

    @classmethod
    def execute(cls, type: str, strength: float, blur: int, seed: int, image=None) -> io.NodeOutput:
        require_finite_numbers(cls, {"strength": strength})
        return io.NodeOutput(negative_noise(type, strength, blur, seed, image))
