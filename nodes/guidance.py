"""FastFace guidance: the decoupled CFG guider (GUIDER, for SamplerCustomAdvanced)."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.comfy.dcg_guider import DCGGuider as DCGGuiderImpl
from ..bolid_core.comfy.dcg_guider import DCGSettings
from ..bolid_core.guidance import DCGVariant, parse_step_values

STEP_VALUES_TIP = "One number for every step, or one per step separated by commas."


class DecoupledCFGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDDecoupledCFGGuider",
            display_name="BoLID Decoupled CFG Guider (FastFace)",
            category="BoLID/guidance",
            description=(
                "FastFace DCG: eps = eps(∅,∅) + alpha (eps(∅,id) - eps(∅,∅)) + beta (eps(text,id) - eps(∅,id)) by "
                "default, all branches in one batched UNet call, std rescale with phi. Defaults are the paper's "
                "4-step values. Use with a model patched by BoLID Apply Adapter."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Combo.Input("variant", options=[variant.value for variant in DCGVariant]),
                io.String.Input("alpha", default="1, 1.5, 1.5, 1", tooltip="Identity weight. " + STEP_VALUES_TIP),
                io.String.Input("beta", default="1, 3, 3, 1", tooltip="Text weight. " + STEP_VALUES_TIP),
                io.Float.Input("rescale_phi", default=0.75, min=0.0, max=1.0, step=0.01),
                io.Boolean.Input(
                    "intermediate_only", default=True,
                    tooltip="Leave the first and last step at plain conditional prediction, as the paper does.",
                ),
            ],
            outputs=[io.Guider.Output()],
        )  # fmt: skip

    @classmethod
    def validate_inputs(cls, alpha: str, beta: str) -> bool | str:
        try:
            parse_step_values(alpha)
            parse_step_values(beta)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(
        cls, model, positive, negative, variant: str, alpha: str, beta: str, rescale_phi: float, intermediate_only: bool
    ) -> io.NodeOutput:
        guider = DCGGuiderImpl(model)
        guider.set_conds(positive, negative)
        settings = DCGSettings(
            DCGVariant(variant), parse_step_values(alpha), parse_step_values(beta), rescale_phi, intermediate_only
        )
        guider.set_settings(settings)
        return io.NodeOutput(guider)
