"""Adapters: load one (ours or IP-Adapter), apply it to a MODEL with its sources and weights."""

from __future__ import annotations

from comfy_api.latest import io

from ..bolid_core.adapter import Adapter, Source, load_adapter
from ..bolid_core.adapter.layer_weights import EmbedsScaling, WeightType
from ..bolid_core.adapter.tokens import ReferenceCombine
from ..bolid_core.comfy.attn2 import apply_adapter
from ..bolid_core.comfy.folders import model_choice_fingerprint, model_choices, resolve_model_choice
from ..bolid_core.comfy.sources import SourceInputs, applied_sources
from ..bolid_core.identity.regions import Background
from .checks import number_problem, require_finite_numbers
from .types import AdapterType, BodyIDType, FaceEmbedsType, ImageEmbedsType, RegionsType

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


# Left out of an API workflow, precise_boost means what the widget sends. (IPAdapter_plus's Advanced node boosts by
# the weight itself; the converter writes that value out.)
PRECISE_BOOST_DEFAULT = 1.0


def weight_input(name: str, tooltip: str) -> io.Float.Input:
    return io.Float.Input(name, default=1.0, min=-1.0, max=5.0, step=0.05, tooltip=tooltip)


def window_order_error(start_at: float | None, end_at: float | None) -> str | None:
    """The message for a start_at after end_at (values over links arrive as None here and are checked later)."""
    if start_at is not None and end_at is not None and start_at > end_at:
        return f"start_at ({start_at}) is after end_at ({end_at}): swap them."
    return None


def combine_input() -> io.Combo.Input:
    return io.Combo.Input(
        "combine_references",
        options=[mode.value for mode in ReferenceCombine],
        tooltip="Several references: combined as embeddings before the adapter's projection (average, add, "
        "subtract: the first minus the mean of the others, norm average), or each projected and its tokens "
        "concatenated (concat).",
    )


def embeds_scaling_input(optional: bool = True) -> io.Combo.Input:
    return io.Combo.Input(
        "embeds_scaling", options=[mode.value for mode in EmbedsScaling], default=EmbedsScaling.V_ONLY.value,
        optional=optional,
        tooltip="Where each layer's weight acts: on the attention output (V only), or on the reference's keys and "
        "values (K+V; the C penalties scale it by layer width / 1280).",
    )  # fmt: skip


def encode_batch_size_input() -> io.Int.Input:
    return io.Int.Input(
        "encode_batch_size", default=0, min=0, max=4096, optional=True,
        tooltip="Images per CLIP-vision call, to bound its memory with many references; 0: all at once.",
    )  # fmt: skip


class ApplyAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
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
                weight_input("image_weight", "Weight of the reference-image source."),
                weight_input("face_weight", "Weight of the face (identity) source."),
                weight_input("body_weight", "Weight of the body source."),
                io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.01),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01),
                combine_input(),
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
                io.Combo.Input(
                    "weight_type", options=[t.value for t in WeightType], default=WeightType.LINEAR.value,
                    optional=True,
                    tooltip="How each weight spreads over the UNet's transformer blocks (IPAdapter_plus's weight "
                    "types). The style and composition types pick SDXL or SD1.5 blocks.",
                ),
                embeds_scaling_input(),
                io.String.Input(
                    "layer_weights", default="", multiline=True, optional=True,
                    tooltip='Per transformer block, "index:weight, ..." (SDXL: 0-10), times each weight; blocks not '
                    "listed get nothing. Replaces the weight type's spread (the precise types still swap).",
                ),
                io.Float.Input(
                    "composition_weight", default=1.0, min=-1.0, max=5.0, step=0.05, optional=True,
                    tooltip="The composition block's weight of the 'style and composition' weight types.",
                ),
                io.Float.Input(
                    "precise_boost", default=PRECISE_BOOST_DEFAULT, min=-5.0, max=5.0, step=0.05, optional=True,
                    tooltip="Precise weight types only: style_boost of 'style transfer precise' (its composition "
                    "block), composition_boost of 'composition precise' (every other block; IPAdapter_plus's "
                    "default there is 0). IPAdapter_plus's Advanced node boosts by the weight itself: set it to the "
                    "weight for the same result.",
                ),
                io.Image.Input(
                    "image_negative", optional=True,
                    tooltip="What the unconditional branch sees instead of the null image (reference images and "
                    "FaceID-Plus face crops), e.g. from BoLID Negative Image Noise.",
                ),
                io.Boolean.Input(
                    "unfold_batch", default=False, optional=True,
                    tooltip="Latent i gets reference i (no combining); the last reference repeats for extra latents.",
                ),
                encode_batch_size_input(),
                ImageEmbedsType.Input(
                    "image_embeds", optional=True,
                    tooltip="Reference images already encoded (BoLID Encode Image, Load Image Embeds), instead of "
                    "clip_vision + image.",
                ),
            ],
            outputs=[io.Model.Output()],
        )  # fmt: skip

    @classmethod
    def validate_inputs(
        cls, image_weight: float, face_weight: float, body_weight: float, start_at: float, end_at: float,
        faceid_v2_shortcut: float, style_image_share: float | None = None, composition_weight: float | None = None,
        precise_boost: float | None = None,
    ) -> bool | str:  # fmt: skip
        return number_problem(cls, locals()) or window_order_error(start_at, end_at) or True

    @classmethod
    def execute(
        cls, model, adapter: Adapter, image_weight: float, face_weight: float, body_weight: float,
        start_at: float, end_at: float, combine_references: str, faceid_v2_shortcut: float,
        clip_vision=None, image=None, face_embeds=None, body_id=None, attn_mask=None, style_prompt=None,
        style_image_share: float = 0.5, regions=None, region_background: str = Background.NONE.value,
        weight_type: str = WeightType.LINEAR.value, embeds_scaling: str = EmbedsScaling.V_ONLY.value,
        layer_weights: str = "", composition_weight: float = 1.0, precise_boost: float = PRECISE_BOOST_DEFAULT,
        image_negative=None, unfold_batch: bool = False, encode_batch_size: int = 0, image_embeds=None,
    ) -> io.NodeOutput:  # fmt: skip
        numbers = {
            "image_weight": image_weight, "face_weight": face_weight, "body_weight": body_weight,
            "start_at": start_at, "end_at": end_at, "faceid_v2_shortcut": faceid_v2_shortcut,
            "style_image_share": style_image_share, "composition_weight": composition_weight,
            "precise_boost": precise_boost,
        }  # fmt: skip
        require_finite_numbers(cls, numbers)  # values over links; the window order is checked with the sources
        inputs = SourceInputs(
            clip_vision, image, face_embeds, body_id,
            {Source.IMAGE: image_weight, Source.FACE: face_weight, Source.BODY: body_weight},
            start_at, end_at, ReferenceCombine(combine_references), attn_mask, faceid_v2_shortcut,
            style_prompt, style_image_share, regions, Background(region_background),
            weight_type=WeightType(weight_type), embeds_scaling=EmbedsScaling(embeds_scaling),
            layer_weights=layer_weights or "", composition_weight=composition_weight, precise_boost=precise_boost,
            image_negative=image_negative, unfold_batch=bool(unfold_batch), encode_batch_size=encode_batch_size,
            image_embeds=image_embeds,
        )  # fmt: skip
        sources, region_layout = applied_sources(model, adapter, inputs)
        return io.NodeOutput(apply_adapter(model, adapter, sources, region_layout))
