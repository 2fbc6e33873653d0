"""Test-only ComfyUI node pack: tiny SDXL-shaped MODEL, CLIP, VAE and conditioning.

A shipped workflow runs on these when its CheckpointLoaderSimple is swapped for
BoLIDTestTinyCheckpoint (same outputs in the same order: MODEL, CLIP, VAE, so links stay valid), and
its CLIPVisionLoader for BoLIDTestTinyClipVision.
Never install this pack for real work: its models have random weights.
"""

from __future__ import annotations

import functools

from comfy_api.latest import ComfyExtension, io


@functools.lru_cache(maxsize=4)
def _cached(build, seed: int):
    return build(seed)


@functools.lru_cache(maxsize=2)
def _checkpoint(seed: int):
    from .tiny_models import tiny_sdxl_clip, tiny_sdxl_model, tiny_sdxl_vae

    return tiny_sdxl_model(seed), tiny_sdxl_clip(seed + 1), tiny_sdxl_vae(seed + 2)


class TinyCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDTestTinyCheckpoint",
            display_name="Tiny SDXL Checkpoint (test only)",
            category="BoLID/testing",
            description="Random-weight SDXL-shaped MODEL, CLIP and VAE, for install checks and tests.",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1)],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        model, clip, vae = _checkpoint(seed)
        return io.NodeOutput(model.clone(), clip.clone(), vae)


class TinyClipVision(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDTestTinyClipVision",
            display_name="Tiny CLIP Vision (test only)",
            category="BoLID/testing",
            description="Random-weight CLIP vision model with ViT-H's widths; stands in for CLIPVisionLoader.",
            inputs=[io.Int.Input("seed", default=3, min=0, max=2**31 - 1)],
            outputs=[io.ClipVision.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        from .tiny_models import tiny_clip_vision

        return io.NodeOutput(_cached(tiny_clip_vision, seed))


class TinyConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDTestTinyConditioning",
            display_name="Tiny SDXL Conditioning (test only)",
            category="BoLID/testing",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1)],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        from .tiny_models import tiny_conditioning

        return io.NodeOutput(tiny_conditioning(seed))


class TinyModelsExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TinyCheckpoint, TinyClipVision, TinyConditioning]


async def comfy_entrypoint() -> TinyModelsExtension:
    return TinyModelsExtension()
