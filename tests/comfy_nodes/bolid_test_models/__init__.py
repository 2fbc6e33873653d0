"""Test-only ComfyUI node pack: tiny SDXL-shaped MODEL, CLIP, VAE and conditioning.

A shipped workflow runs on these when its CheckpointLoaderSimple is swapped for
BoLIDTestTinyCheckpoint (same outputs in the same order: MODEL, CLIP, VAE, so links stay valid), and
its CLIPVisionLoader for BoLIDTestTinyClipVision. BoLIDTestConditioningProbe reports what a
CONDITIONING link carries.
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


class ConditioningProbe(io.ComfyNode):
    """Reports what a CONDITIONING link carries, so a server test can see what a sampler or guider receives."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDTestConditioningProbe",
            display_name="Conditioning Probe (test only)",
            category="BoLID/testing",
            inputs=[io.Conditioning.Input("conditioning")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, conditioning: list) -> io.NodeOutput:
        entries = []
        for context, options in conditioning:
            pooled = options.get("pooled_output")
            entries.append({
                "context_shape": list(context.shape),
                "context_abs_max": float(context.abs().max()),
                "pooled_shape": None if pooled is None else list(pooled.shape),
                "pooled_abs_max": None if pooled is None else float(pooled.abs().max()),
            })  # fmt: skip
        return io.NodeOutput(ui={"bolid_conditioning": entries})


class TinyModelsExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TinyCheckpoint, TinyClipVision, TinyConditioning, ConditioningProbe]


async def comfy_entrypoint() -> TinyModelsExtension:
    return TinyModelsExtension()
