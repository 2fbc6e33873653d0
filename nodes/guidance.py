"""FastFace guidance: the decoupled CFG guider (GUIDER, for SamplerCustomAdvanced)."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.comfy.dcg_guider import DCGGuider as DCGGuiderImpl
from ..bolid_core.comfy.dcg_guider import DCGSettings
from ..bolid_core.guidance import DCGVariant, EndSteps, parse_step_values
from .checks import require_finite_numbers, validate_finite_numbers

STEP_VALUES_TIP = "One number for every step, or one per step separated by commas."
_CODE_TYPE = {DCGVariant.ID_THEN_TEXT: 3, DCGVariant.TEXT_THEN_ID: 1, DCGVariant.SEPARATE: 2}


def _term_list(which: int) -> str:
    return "; ".join(f"{variant.value}: {variant.terms[which]}" for variant in DCGVariant)


def _formulas() -> str:
    lines = []
    for variant in DCGVariant:
        first, second = variant.terms
        lines.append(
            f"{variant.value} (authors' dcg_type {_CODE_TYPE[variant]}): eps(∅,∅) + alpha ({first}) + beta ({second})"
        )
    return "\n".join(lines)


def _option(enum_type: type, value: str, name: str) -> object:
    try:
        return enum_type(value)
    except ValueError:
        options = ", ".join(member.value for member in enum_type)
        raise ValueError(f"{name} '{value}' is not known: pick one of {options}.") from None


class DecoupledCFGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDDecoupledCFGGuider",
            display_name="BoLID Decoupled CFG Guider (FastFace)",
            category="BoLID/guidance",
            description=(
                "FastFace decoupled CFG: all branches of a step in one batched UNet call, then the std rescale "
                "with phi. alpha weighs the first term and beta the second, as in the paper:\n"
                + _formulas()
                + "\nDefaults are the published 4-step values (id_then_text, rescale at every step). "
                "Use with a model patched by BoLID Apply Adapter."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Combo.Input(
                    "variant", options=[variant.value for variant in DCGVariant], default=DCGVariant.ID_THEN_TEXT.value,
                    tooltip="Which decoupled CFG:\n" + _formulas(),
                ),
                io.String.Input(
                    "alpha", default="1, 1.5, 1.5, 1",
                    tooltip="Weight of the FIRST term. " + _term_list(0) + ". " + STEP_VALUES_TIP,
                ),
                io.String.Input(
                    "beta", default="1, 3, 3, 1",
                    tooltip="Weight of the SECOND term. " + _term_list(1) + ". " + STEP_VALUES_TIP,
                ),
                io.Float.Input(
                    "rescale_phi", default=0.75, min=0.0, max=1.0, step=0.01,
                    tooltip="Std rescale strength: 0 off, 1 full (the std of the result matches the mean std of "
                    "the variant's two conditional branches).",
                ),
                io.Combo.Input(
                    "end_steps", options=[end.value for end in EndSteps], default=EndSteps.PUBLISHED.value,
                    tooltip=(
                        "published: the schedule's alpha, beta and the rescale at every step, as the authors' code. "
                        "Costs the branches with a non-zero weight plus the two the rescale reads: with "
                        "alpha = beta = 1 at the ends, id_then_text runs 2 UNet branches there (eps(∅,id), "
                        "eps(text,id)), 3 in the middle steps.\n"
                        "plain_conditional: the first and last step give eps(text,id) alone, unrescaled: 1 UNet "
                        "branch there (the paper's text); the middle steps as published."
                    ),
                ),
            ],
            outputs=[io.Guider.Output()],
        )  # fmt: skip

    @classmethod
    def validate_inputs(cls, alpha: str | None = None, beta: str | None = None, rescale_phi: float | None = None):
        for text in (alpha, beta):  # None: the value comes over a link, checked in execute
            if text is None:
                continue
            try:
                parse_step_values(text)
            except ValueError as error:
                return str(error)
        return validate_finite_numbers(cls, locals())

    @classmethod
    def execute(
        cls, model, positive, negative, variant: str, alpha: str, beta: str, rescale_phi: float,
        end_steps: str = EndSteps.PUBLISHED.value,
    ) -> io.NodeOutput:  # fmt: skip
        require_finite_numbers(cls, {"rescale_phi": rescale_phi})
        settings = DCGSettings(
            _option(DCGVariant, variant, "variant"), parse_step_values(alpha), parse_step_values(beta), rescale_phi,
            _option(EndSteps, end_steps, "end_steps"),
        )  # fmt: skip
        guider = DCGGuiderImpl(model)
        guider.set_conds(positive, negative)
        guider.set_settings(settings)
        return io.NodeOutput(guider)
