"""Adapters: load one (ours or IP-Adapter), apply it to a MODEL with its sources and weights."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.adapter import Adapter, Source, load_adapter
from ..bolid_core.adapter.tokens import ReferenceCombine
from ..bolid_core.comfy.attn2 import apply_adapter
from ..bolid_core.comfy.folders import model_choice_fingerprint, model_choices, resolve_model_choice
from ..bolid_core.comfy.sources import SourceInputs, applied_sources
from ..bolid_core.identity.regions import Background
from .checks import require_finite_numbers, validate_finite_numbers
from .types import AdapterType, BodyIDType, FaceEmbedsType, RegionsType

ADAPTER_FOLDERS = ("bolid", "ipadapter")


class AdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDAdapterLoader",
            display_name="BoLID Adapter Loader",
            category="BoLID/adapter",
            description=(
                "Loads a BoLID adapter (models/bolid) or an IP-Adapter as published (models/ipadapter): plain, "
                "plus, FaceID and FaceID-Plus-v2 SDXL files, .safetensors or .bin."
            ),
            inputs=[io.Combo.Input("adapter_name", options=model_choices(*ADAPTER_FOLDERS))],
            outputs=[AdapterType.Output(display_name="adapter")],
        )

    @classmethod
    def fingerprint_inputs(cls, adapter_name: str) -> str:
        # A replaced or deleted file must never be served from ComfyUI's cache.
        return model_choice_fingerprint(adapter_name, ADAPTER_FOLDERS)

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_adapter(resolve_model_choice(adapter_name, ADAPTER_FOLDERS)))


class ApplyAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        weight = lambda name, tip: io.Float.Input(name, default=1.0, min=-1.0, max=5.0, step=0.05, tooltip=tip)  # noqa: E731
        return io.Schema(
            node_id="BoLIDApplyAdapter",
            display_name="BoLID Apply Adapter",
            category="BoLID/adapter",
            description=(
                "Adds the adapter's sources to every cross-attention layer: Z' = Attn(Q,K_t,V_t) + sum of "
                "weight x Attn(Q,K_s,V_s) over the reference image, face and body sources it is given. A FaceStudio "
                "adapter fuses the face with a style image and/or a style prompt. With regions, each person's face "
                "and body act only on their own region."
            ),
            inputs=[
                io.Model.Input("model"),
                AdapterType.Input("adapter"),
                weight("image_weight", "Weight of the reference-image source."),
                weight("face_weight", "Weight of the face (identity) source."),
                weight("body_weight", "Weight of the body source."),
                io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.01),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01),
                io.Combo.Input(
                    "combine_references", options=[mode.value for mode in ReferenceCombine],
                    tooltip="Several references: average their tokens, or concatenate them.",
                ),
                io.Float.Input(
                    "faceid_v2_shortcut", default=1.0, min=0.0, max=5.0, step=0.05,
                    tooltip="FaceID-Plus-v2 only: weight of the CLIP-refined identity added to the ArcFace tokens.",
                ),
                io.ClipVision.Input("clip_vision", optional=True),
                io.Image.Input("image", optional=True, tooltip="Reference image(s) for the image source."),
                FaceEmbedsType.Input("face_embeds", optional=True),
                BodyIDType.Input("body_id", optional=True),
                io.Mask.Input(
                    "attn_mask", optional=True,
                    tooltip="Where the adapter's global sources act; any resolution. Regions have their own masks.",
                ),
                # Optional, so API workflows saved before these inputs existed still validate.
                io.Conditioning.Input(
                    "style_prompt", optional=True,
                    tooltip="FaceStudio adapters: a prompt whose text embedding stands in for the style image "
                    "(through the adapter's text prior). Encode it with CLIPTextEncode.",
                ),
                io.Float.Input(
                    "style_image_share", default=0.5, min=0.0, max=1.0, step=0.05, optional=True,
                    tooltip="FaceStudio adapters with both a style image and a style prompt: alpha in "
                    "e = alpha x e_image + (1 - alpha) x e_text. With only one of them, that one is used.",
                ),
                RegionsType.Input(
                    "regions", optional=True,
                    tooltip="Several people: each region's tokens attend only to its own person's face and body "
                    "(from BoLID Add Region). face_weight and body_weight apply to every person.",
                ),
                io.Combo.Input(
                    "region_background", options=[rule.value for rule in Background],
                    default=Background.NONE.value, optional=True,
                    tooltip="With regions, what tokens outside every region attend to: no identity, every identity "
                    "at 1/N, or the identity of the nearest region.",
                ),
            ],
            outputs=[io.Model.Output()],
        )  # fmt: skip

    @classmethod
    def validate_inputs(
        cls, image_weight: float, face_weight: float, body_weight: float, start_at: float, end_at: float,
        faceid_v2_shortcut: float,
    ) -> bool | str:  # fmt: skip
        checked = validate_finite_numbers(cls, locals())
        if checked is True and start_at is not None and end_at is not None and start_at > end_at:
            return f"start_at ({start_at}) is after end_at ({end_at}): swap them."
        return checked

    @classmethod
    def execute(
        cls, model, adapter: Adapter, image_weight: float, face_weight: float, body_weight: float,
        start_at: float, end_at: float, combine_references: str, faceid_v2_shortcut: float,
        clip_vision=None, image=None, face_embeds=None, body_id=None, attn_mask=None, style_prompt=None,
        style_image_share: float = 0.5, regions=None, region_background: str = Background.NONE.value,
    ) -> io.NodeOutput:  # fmt: skip
        numbers = {
            "image_weight": image_weight, "face_weight": face_weight, "body_weight": body_weight,
            "start_at": start_at, "end_at": end_at, "faceid_v2_shortcut": faceid_v2_shortcut,
            "style_image_share": style_image_share,
        }  # fmt: skip
        require_finite_numbers(cls, numbers)  # values over links; the window order is checked with the sources
        inputs = SourceInputs(
            clip_vision, image, face_embeds, body_id,
            {Source.IMAGE: image_weight, Source.FACE: face_weight, Source.BODY: body_weight},
            start_at, end_at, ReferenceCombine(combine_references), attn_mask, faceid_v2_shortcut,
            style_prompt, style_image_share, regions, Background(region_background),
        )  # fmt: skip
        sources, region_layout = applied_sources(model, adapter, inputs)
        return io.NodeOutput(apply_adapter(model, adapter, sources, region_layout))
