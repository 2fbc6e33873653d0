"""Node layouts the converter reads (IPAdapter_plus) and writes (this pack, a few ComfyUI core nodes).

A UI-format workflow stores widget values by position, so both sides need each node's widgets in order.
Ours must follow our schemas exactly: tests/test_server_convert.py compares OUR_NODES with a live server's
/object_info (input_order, types, defaults, outputs), so the table cannot drift from the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})


@dataclass(frozen=True)
class Input:
    name: str
    type: str
    default: object = None
    optional: bool = False
    control_after_generate: bool = False  # the frontend stores one more widget value after this one

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES


@dataclass(frozen=True)
class NodeLayout:
    inputs: tuple[Input, ...]
    outputs: tuple[tuple[str, str], ...] = ()  # (name, type) per output slot

    def input(self, name: str) -> Input:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def widgets(self) -> tuple[Input, ...]:
        """Widgets in the order the frontend lays them out: required first, then optional, schema order."""
        return tuple(i for i in self.inputs if i.is_widget and not i.optional) + tuple(
            i for i in self.inputs if i.is_widget and i.optional
        )

    @property
    def sockets(self) -> tuple[Input, ...]:
        return tuple(i for i in self.inputs if not i.is_widget and not i.optional) + tuple(
            i for i in self.inputs if not i.is_widget and i.optional
        )


def _in(name: str, kind: str, default: object = None, **flags: bool) -> Input:
    return Input(name, kind, default, **flags)


def _opt(name: str, kind: str, default: object = None, **flags: bool) -> Input:
    return Input(name, kind, default, optional=True, **flags)


ADAPTER, CLIP_VISION, FACE_EMBEDS = "BOLID_ADAPTER", "CLIP_VISION", "BOLID_FACE_EMBEDS"
FACE_ANALYZER, IMAGE_EMBEDS = "BOLID_FACE_ANALYZER", "BOLID_IMAGE_EMBEDS"

# --- ours: what the converter writes ----------------------------------------------------------------------------
OUR_NODES: dict[str, NodeLayout] = {
    "BoLIDUnifiedLoader": NodeLayout(
        (_in("model", "MODEL"), _in("preset", "COMBO", "standard"), _in("lora_strength", "FLOAT", 0.6)),
        (("model", "MODEL"), ("adapter", ADAPTER), ("clip_vision", CLIP_VISION)),
    ),
    "BoLIDAdapterLoader": NodeLayout((_in("adapter_name", "COMBO"),), (("adapter", ADAPTER),)),
    "BoLIDInsightFaceLoader": NodeLayout(
        (_in("model_pack", "COMBO"), _in("provider", "COMBO", "CPU")), (("face_analyzer", FACE_ANALYZER),)
    ),
    "BoLIDFaceEmbed": NodeLayout(
        (
            _in("face_analyzer", FACE_ANALYZER),
            _in("images", "IMAGE"),
            _in("crop_size", "INT", 256),
            _opt("face", "COMBO", "largest"),
            _opt("face_index", "INT", 0),
        ),
        (("face_embeds", FACE_EMBEDS), ("preview", "IMAGE")),
    ),
    "BoLIDApplyAdapter": NodeLayout(
        (
            _in("model", "MODEL"),
            _in("adapter", ADAPTER),
            _in("image_weight", "FLOAT", 1.0),
            _in("face_weight", "FLOAT", 1.0),
            _in("body_weight", "FLOAT", 1.0),
            _in("start_at", "FLOAT", 0.0),
            _in("end_at", "FLOAT", 1.0),
            _in("combine_references", "COMBO", "average"),
            _in("faceid_v2_shortcut", "FLOAT", 1.0),
            _opt("clip_vision", CLIP_VISION),
            _opt("image", "IMAGE"),
            _opt("face_embeds", FACE_EMBEDS),
            _opt("body_id", "BOLID_BODY_ID"),
            _opt("attn_mask", "MASK"),
            _opt("style_prompt", "CONDITIONING"),
            _opt("style_image_share", "FLOAT", 0.5),
            _opt("regions", "BOLID_REGIONS"),
            _opt("region_background", "COMBO", "none"),
            _opt("weight_type", "COMBO", "linear"),
            _opt("embeds_scaling", "COMBO", "V only"),
            _opt("layer_weights", "STRING", ""),
            _opt("composition_weight", "FLOAT", 1.0),
            _opt("precise_boost", "FLOAT", 1.0),
            _opt("image_negative", "IMAGE"),
            _opt("unfold_batch", "BOOLEAN", False),
            _opt("encode_batch_size", "INT", 0),
            _opt("image_embeds", IMAGE_EMBEDS),
        ),
        (("MODEL", "MODEL"),),
    ),
    "BoLIDApplyStyleComposition": NodeLayout(
        (
            _in("model", "MODEL"),
            _in("adapter", ADAPTER),
            _in("clip_vision", CLIP_VISION),
            _in("image_style", "IMAGE"),
            _in("image_composition", "IMAGE"),
            _in("weight_style", "FLOAT", 1.0),
            _in("weight_composition", "FLOAT", 1.0),
            _in("expand_style", "BOOLEAN", False),
            _in("start_at", "FLOAT", 0.0),
            _in("end_at", "FLOAT", 1.0),
            _in("combine_references", "COMBO", "average"),
            _in("embeds_scaling", "COMBO", "V only"),
            _opt("image_negative", "IMAGE"),
            _opt("attn_mask", "MASK"),
            _opt("encode_batch_size", "INT", 0),
        ),
        (("MODEL", "MODEL"),),
    ),
    "BoLIDEncodeImage": NodeLayout(
        (
            _in("clip_vision", CLIP_VISION),
            _in("image", "IMAGE"),
            _in("tiles", "INT", 1),
            _in("encode_batch_size", "INT", 0),
            _opt("image_negative", "IMAGE"),
        ),
        (("image_embeds", IMAGE_EMBEDS),),
    ),
    "BoLIDSaveImageEmbeds": NodeLayout(
        (_in("image_embeds", IMAGE_EMBEDS), _in("filename_prefix", "STRING", "bolid_image_embeds")),
        (("saved_as", "STRING"),),
    ),
    "BoLIDLoadImageEmbeds": NodeLayout((_in("embeds", "COMBO"),), (("image_embeds", IMAGE_EMBEDS),)),
    "BoLIDNegativeImageNoise": NodeLayout(
        (
            _in("type", "COMBO", "fade"),
            _in("strength", "FLOAT", 1.0),
            _in("blur", "INT", 0),
            _in("seed", "INT", 0, control_after_generate=True),
            _opt("image", "IMAGE"),
        ),
        (("image", "IMAGE"),),
    ),
}

# ComfyUI core nodes the converter writes (their layouts in ComfyUI 0.3.75's nodes.py).
CORE_NODES: dict[str, NodeLayout] = {
    "ImageBatch": NodeLayout((_in("image1", "IMAGE"), _in("image2", "IMAGE")), (("IMAGE", "IMAGE"),)),
    "ImageScale": NodeLayout(
        (
            _in("image", "IMAGE"),
            _in("upscale_method", "COMBO", "nearest-exact"),
            _in("width", "INT", 512),
            _in("height", "INT", 512),
            _in("crop", "COMBO", "disabled"),
        ),
        (("IMAGE", "IMAGE"),),
    ),
}

WRITTEN_NODES: dict[str, NodeLayout] = {**OUR_NODES, **CORE_NODES}

# --- IPAdapter_plus: what the converter reads (widget names in its INPUT_TYPES order, with its defaults) ----------
_WEIGHT = _in("weight", "FLOAT", 1.0)
_START, _END = _in("start_at", "FLOAT", 0.0), _in("end_at", "FLOAT", 1.0)
_TYPE, _SCALING = _in("weight_type", "COMBO", "linear"), _in("embeds_scaling", "COMBO", "V only")
_COMBINE = _in("combine_embeds", "COMBO", "concat")
_MODEL, _PIPE, _IMAGE = _in("model", "MODEL"), _in("ipadapter", "IPADAPTER"), _in("image", "IMAGE")
_NEGATIVE, _MASK, _CLIP = _opt("image_negative", "IMAGE"), _opt("attn_mask", "MASK"), _opt("clip_vision", "CLIP_VISION")
_FACE = _opt("insightface", "INSIGHTFACE")
_BATCH_SIZE = _in("encode_batch_size", "INT", 0)
_APPLY_OUT = (("MODEL", "MODEL"),)
_FACE_OUT = (("MODEL", "MODEL"), ("face_image", "IMAGE"))

_ADVANCED = NodeLayout(
    (_MODEL, _PIPE, _IMAGE, _WEIGHT, _TYPE, _COMBINE, _START, _END, _SCALING, _NEGATIVE, _MASK, _CLIP), _APPLY_OUT
)
_BATCH = NodeLayout(
    (_MODEL, _PIPE, _IMAGE, _WEIGHT, _TYPE, _START, _END, _SCALING, _BATCH_SIZE, _NEGATIVE, _MASK, _CLIP)
)
_FACEID = NodeLayout(
    (
        _MODEL, _PIPE, _IMAGE, _WEIGHT, _in("weight_faceidv2", "FLOAT", 1.0), _TYPE, _COMBINE, _START, _END,
        _SCALING, _NEGATIVE, _MASK, _CLIP, _FACE,
    ),
    _FACE_OUT,
)  # fmt: skip
_STYLE_COMPOSITION_HEAD = (
    _MODEL, _PIPE, _in("image_style", "IMAGE"), _in("image_composition", "IMAGE"), _in("weight_style", "FLOAT", 1.0),
    _in("weight_composition", "FLOAT", 1.0), _in("expand_style", "BOOLEAN", False),
)  # fmt: skip
_TILED_OUT = (("MODEL", "MODEL"), ("tiles", "IMAGE"), ("masks", "MASK"))
_SHARPENING = _in("sharpening", "FLOAT", 0.0)
_ENHANCER_TAIL = (_in("enhance_tiles", "INT", 2), _in("enhance_ratio", "FLOAT", 1.0))
_EMBEDS = NodeLayout(
    (
        _MODEL, _PIPE, _in("pos_embed", "EMBEDS"), _WEIGHT, _TYPE, _START, _END, _SCALING,
        _opt("neg_embed", "EMBEDS"), _MASK, _CLIP,
    ),
    _APPLY_OUT,
)  # fmt: skip


def _precise(boost: str, default: float) -> NodeLayout:
    return NodeLayout(
        (_MODEL, _PIPE, _IMAGE, _WEIGHT, _in(boost, "FLOAT", default), _COMBINE, _START, _END, _SCALING,
         _NEGATIVE, _MASK, _CLIP),
        _APPLY_OUT,
    )  # fmt: skip


PEER_NODES: dict[str, NodeLayout] = {
    "IPAdapterUnifiedLoader": NodeLayout(
        (_MODEL, _in("preset", "COMBO", "STANDARD (medium strength)"), _opt("ipadapter", "IPADAPTER")),
        (("model", "MODEL"), ("ipadapter", "IPADAPTER")),
    ),
    "IPAdapterUnifiedLoaderFaceID": NodeLayout(
        (
            _MODEL,
            _in("preset", "COMBO", "FACEID"),
            _in("lora_strength", "FLOAT", 0.6),
            _in("provider", "COMBO", "CPU"),
            _opt("ipadapter", "IPADAPTER"),
        ),
        (("MODEL", "MODEL"), ("ipadapter", "IPADAPTER")),
    ),
    "IPAdapterUnifiedLoaderCommunity": NodeLayout(
        (_MODEL, _in("preset", "COMBO", "Composition"), _opt("ipadapter", "IPADAPTER")),
        (("model", "MODEL"), ("ipadapter", "IPADAPTER")),
    ),
    "IPAdapterModelLoader": NodeLayout((_in("ipadapter_file", "COMBO"),), (("IPADAPTER", "IPADAPTER"),)),
    "IPAdapterInsightFaceLoader": NodeLayout(
        (_in("provider", "COMBO", "CPU"), _in("model_name", "COMBO", "buffalo_l")), (("INSIGHTFACE", "INSIGHTFACE"),)
    ),
    "IPAdapter": NodeLayout(
        (_MODEL, _PIPE, _IMAGE, _WEIGHT, _START, _END, _in("weight_type", "COMBO", "standard"), _MASK), _APPLY_OUT
    ),
    "IPAdapterAdvanced": _ADVANCED,
    "IPAdapterBatch": NodeLayout(_BATCH.inputs, _APPLY_OUT),
    "IPAdapterFaceID": _FACEID,
    "IPAAdapterFaceIDBatch": _FACEID,
    "IPAdapterFaceIDKolors": NodeLayout(
        (
            _MODEL,
            _PIPE,
            _IMAGE,
            _WEIGHT,
            _in("weight_faceidv2", "FLOAT", 1.0),
            _in("weight_kolors", "FLOAT", 1.0),
            _TYPE,
            _COMBINE,
            _START,
            _END,
            _SCALING,
            _NEGATIVE,
            _MASK,
            _CLIP,
            _FACE,
        ),
        _FACE_OUT,
    ),
    "IPAdapterTiled": NodeLayout(
        (_MODEL, _PIPE, _IMAGE, _WEIGHT, _TYPE, _COMBINE, _START, _END, _SHARPENING, _SCALING, _NEGATIVE, _MASK, _CLIP),
        _TILED_OUT,
    ),
    "IPAdapterTiledBatch": NodeLayout(
        (
            _MODEL,
            _PIPE,
            _IMAGE,
            _WEIGHT,
            _TYPE,
            _START,
            _END,
            _SHARPENING,
            _SCALING,
            _BATCH_SIZE,
            _NEGATIVE,
            _MASK,
            _CLIP,
        ),
        _TILED_OUT,
    ),
    "IPAdapterEmbeds": _EMBEDS,
    "IPAdapterEmbedsBatch": _EMBEDS,
    "IPAdapterStyleComposition": NodeLayout(
        (
            *_STYLE_COMPOSITION_HEAD,
            _in("combine_embeds", "COMBO", "average"),
            _START,
            _END,
            _SCALING,
            _NEGATIVE,
            _MASK,
            _CLIP,
        ),
        _APPLY_OUT,
    ),
    "IPAdapterStyleCompositionBatch": NodeLayout(
        (*_STYLE_COMPOSITION_HEAD, _START, _END, _SCALING, _NEGATIVE, _MASK, _CLIP), _APPLY_OUT
    ),
    "IPAdapterMS": NodeLayout(
        (
            _MODEL,
            _PIPE,
            _IMAGE,
            _WEIGHT,
            _in("weight_faceidv2", "FLOAT", 1.0),
            _TYPE,
            _COMBINE,
            _START,
            _END,
            _SCALING,
            _in("layer_weights", "STRING", ""),
            _NEGATIVE,
            _MASK,
            _CLIP,
            _FACE,
        ),
        _APPLY_OUT,
    ),
    "IPAdapterClipVisionEnhancer": NodeLayout(
        (
            _MODEL,
            _PIPE,
            _IMAGE,
            _WEIGHT,
            _TYPE,
            _COMBINE,
            _START,
            _END,
            _SCALING,
            *_ENHANCER_TAIL,
            _NEGATIVE,
            _MASK,
            _CLIP,
        ),
        _APPLY_OUT,
    ),
    "IPAdapterClipVisionEnhancerBatch": NodeLayout(
        (
            _MODEL,
            _PIPE,
            _IMAGE,
            _WEIGHT,
            _TYPE,
            _START,
            _END,
            _SCALING,
            _in("enhance_tiles", "INT", 2),
            _in("enhance_ratio", "FLOAT", 0.5),
            _BATCH_SIZE,
            _NEGATIVE,
            _MASK,
            _CLIP,
        ),
        _APPLY_OUT,
    ),
    "IPAdapterFromParams": NodeLayout(
        (_MODEL, _PIPE, _in("ipadapter_params", "IPADAPTER_PARAMS"), _COMBINE, _SCALING, _NEGATIVE, _CLIP), _APPLY_OUT
    ),
    "IPAdapterPreciseStyleTransfer": _precise("style_boost", 1.0),
    "IPAdapterPreciseStyleTransferBatch": _precise("style_boost", 1.0),
    "IPAdapterPreciseComposition": _precise("composition_boost", 0.0),
    "IPAdapterPreciseCompositionBatch": _precise("composition_boost", 0.0),
    "IPAdapterEncoder": NodeLayout(
        (_PIPE, _IMAGE, _WEIGHT, _opt("mask", "MASK"), _CLIP), (("pos_embed", "EMBEDS"), ("neg_embed", "EMBEDS"))
    ),
    "IPAdapterCombineEmbeds": NodeLayout(
        (
            _in("embed1", "EMBEDS"),
            _in("method", "COMBO", "concat"),
            *tuple(_opt(f"embed{i}", "EMBEDS") for i in range(2, 6)),
        ),
        (("EMBEDS", "EMBEDS"),),
    ),
    "IPAdapterNoise": NodeLayout(
        (
            _in("type", "COMBO", "fade"),
            _in("strength", "FLOAT", 1.0),
            _in("blur", "INT", 0),
            _opt("image_optional", "IMAGE"),
        ),
        (("IMAGE", "IMAGE"),),
    ),
    "PrepImageForClipVision": NodeLayout(
        (
            _IMAGE,
            _in("interpolation", "COMBO", "LANCZOS"),
            _in("crop_position", "COMBO", "top"),
            _in("sharpening", "FLOAT", 0.0),
        ),
        (("IMAGE", "IMAGE"),),
    ),
    "IPAdapterSaveEmbeds": NodeLayout((_in("embeds", "EMBEDS"), _in("filename_prefix", "STRING", "IP_embeds")), ()),
    "IPAdapterLoadEmbeds": NodeLayout((_in("embeds", "COMBO"),), (("EMBEDS", "EMBEDS"),)),
    # Batch weights and params: no counterpart here (see UNMAPPED_NODES); only their outputs' types are needed.
    "IPAdapterWeights": NodeLayout(
        (),
        (
            ("weights", "FLOAT"),
            ("weights_invert", "FLOAT"),
            ("total_frames", "INT"),
            ("image_1", "IMAGE"),
            ("image_2", "IMAGE"),
            ("weights_strategy", "WEIGHTS_STRATEGY"),
        ),
    ),
    "IPAdapterWeightsFromStrategy": NodeLayout((), ()),
    "IPAdapterPromptScheduleFromWeightsStrategy": NodeLayout((), (("prompt_schedule", "STRING"),)),
    "IPAdapterCombineWeights": NodeLayout((), (("weights", "FLOAT"), ("count", "INT"))),
    "IPAdapterRegionalConditioning": NodeLayout(
        (), (("IPADAPTER_PARAMS", "IPADAPTER_PARAMS"), ("POSITIVE", "CONDITIONING"), ("NEGATIVE", "CONDITIONING"))
    ),
    "IPAdapterCombineParams": NodeLayout((), (("IPADAPTER_PARAMS", "IPADAPTER_PARAMS"),)),
}
