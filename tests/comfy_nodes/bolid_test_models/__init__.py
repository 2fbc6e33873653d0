"""Test-only ComfyUI node pack: tiny SDXL-shaped MODEL, CLIP, VAE and conditioning.

A shipped workflow runs on these when its CheckpointLoaderSimple is swapped for
BoLIDTestTinyCheckpoint (same outputs in the same order: MODEL, CLIP, VAE, so links stay valid), and
its CLIPVisionLoader for BoLIDTestTinyClipVision. BoLIDTestConditioningProbe reports what a
CONDITIONING link carries; BoLIDTestAttentionProbe what one patched cross-attention layer of a MODEL returns.
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


class AttentionProbe(io.ComfyNode):
    """Calls one cross-attention layer's attn2 patch of a MODEL on seeded random Q, K, V of one positive chunk, as
    the UNet would for a latent of the given size, and reports the output per query token, so a server test can
    see which tokens an adapter's sources reached."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDTestAttentionProbe",
            display_name="Attention Probe (test only)",
            category="BoLID/testing",
            inputs=[
                io.Model.Input("model"),
                io.Int.Input("layer", default=0, min=0, max=255, tooltip="Index into the patched layers, sorted."),
                io.Int.Input("latent_width", default=16, min=1, max=512),
                io.Int.Input("latent_height", default=16, min=1, max=512),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, layer: int, latent_width: int, latent_height: int, seed: int) -> io.NodeOutput:
        import math

        import torch
        from comfy.ldm.modules.attention import BasicTransformerBlock

        patches = model.model_options["transformer_options"]["patches_replace"]["attn2"]
        key = sorted(patches)[layer]
        name, number, index = key
        unet = model.get_model_object("diffusion_model")
        block = {"input": unet.input_blocks, "output": unet.output_blocks}.get(name, [unet.middle_block])[number]
        attention = [m for m in block.modules() if isinstance(m, BasicTransformerBlock)][index].attn2
        width, heads = attention.to_q.out_features, attention.heads
        height, grid_width = latent_height, latent_width
        levels = {"input": number // 3, "output": 2 - number // 3}.get(name, 2)
        for _ in range(levels):
            height, grid_width = math.ceil(height / 2), math.ceil(grid_width / 2)
        generator = torch.Generator().manual_seed(seed)
        q = torch.randn(1, height * grid_width, width, generator=generator)
        k, v = (torch.randn(1, 77, width, generator=generator) for _ in range(2))
        options = {
            "n_heads": heads,
            "cond_or_uncond": [0],
            "sigmas": torch.tensor([1.0]),
            "original_shape": [1, 4, latent_height, latent_width],
            "block": (name, number),
            "transformer_index": index,
        }
        with torch.no_grad():
            out = patches[key](q, k, v, options)
        report = {"key": list(key), "grid": [height, grid_width], "output": out[0].tolist()}
        return io.NodeOutput(ui={"bolid_attention": [report]})


class TinyModelsExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TinyCheckpoint, TinyClipVision, TinyConditioning, ConditioningProbe, AttentionProbe]


async def comfy_entrypoint() -> TinyModelsExtension:
    return TinyModelsExtension()
