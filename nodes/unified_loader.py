"""Unified loader: one preset picks the IP-Adapter, its CLIP vision and, for FaceID, its LoRA, by file name."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.adapter.presets import Preset
from ..bolid_core.comfy.unified_loader import load_preset, preset_fingerprint
from .checks import require_finite_numbers, validate_finite_numbers
from .types import AdapterType


class UnifiedLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDUnifiedLoader",
            display_name="BoLID Unified Loader",
            category="BoLID/adapter",
            description=(
                "Finds a preset's IP-Adapter (models/ipadapter), the CLIP vision it reads (models/clip_vision) and, "
                "for FaceID, its LoRA (models/loras) under h94's published names, for the model's family (SD1.5 or "
                "SDXL), and applies the LoRA. A missing file is named exactly, with its folder and where to get it."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("preset", options=[preset.value for preset in Preset], default=Preset.STANDARD.value),
                io.Float.Input(
                    "lora_strength", default=0.6, min=0.0, max=2.0, step=0.01,
                    tooltip="FaceID presets: strength of the adapter's LoRA on the model (0: not applied, and the "
                    "LoRA file is not needed). Other presets have no LoRA.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model"),
                AdapterType.Output(display_name="adapter"),
                io.ClipVision.Output(display_name="clip_vision"),
            ],
        )  # fmt: skip

    @classmethod
    def validate_inputs(cls, lora_strength: float) -> bool | str:
        return validate_finite_numbers(cls, locals())

    @classmethod
    def fingerprint_inputs(cls, preset: str, lora_strength: float | None = None, **_) -> str:
        return preset_fingerprint(preset, lora_strength)

    @classmethod
    def execute(cls, model, preset: str, lora_strength: float) -> io.NodeOutput:
        require_finite_numbers(cls, {"lora_strength": lora_strength})
        return io.NodeOutput(*load_preset(model, Preset(preset), lora_strength))
