"""The miniature BoLID's base model: MODEL, CLIP and VAE from one small file in models/bolid/miniature."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..bolid_core.comfy.folders import MINIATURE_SUBFOLDER, model_file_fingerprint, resolve_model_file
from ..bolid_core.comfy.miniature import load_miniature_base


def miniature_choices() -> list[str]:
    """Files of models/bolid/miniature, named relative to it."""
    prefix = f"{MINIATURE_SUBFOLDER}/"
    return [name[len(prefix) :] for name in folder_paths.get_filename_list("bolid") if name.startswith(prefix)]


class MiniatureModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDMiniatureModelLoader",
            display_name="BoLID Miniature Model Loader",
            category="BoLID/miniature",
            description=(
                "Loads a miniature base model (models/bolid/miniature): a tiny SDXL-shaped MODEL, CLIP and VAE "
                "trained from scratch on a synthetic world of 64x64 stick-figure people. It demonstrates and tests "
                "BoLID on a CPU; it is not a model for real images or real people. Its latents are 4x smaller than "
                "the image, so ComfyUI's Empty Latent Image at 128x128 gives the 16x16 latents that decode to 64x64 "
                "pixels. Its time ids are always the training 64x64."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name", options=miniature_choices(),
                    tooltip="A miniature base model file in models/bolid/miniature.",
                ),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )  # fmt: skip

    @classmethod
    def fingerprint_inputs(cls, model_name: str) -> str:
        return model_file_fingerprint("bolid", f"{MINIATURE_SUBFOLDER}/{model_name}")

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        path = resolve_model_file("bolid", f"{MINIATURE_SUBFOLDER}/{model_name}")
        return io.NodeOutput(*load_miniature_base(path))
