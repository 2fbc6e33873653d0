"""IPAdapter_plus workflows → this pack: every node it knows rewritten into ours, every other node kept.

The peer's IPADAPTER pipe (adapter + CLIP vision + insightface) becomes separate links; its EMBEDS become our
BOLID_IMAGE_EMBEDS; FaceID apply nodes get a BoLIDFaceEmbed in front. What has no counterpart is reported per
node and option, with the reason; a node that cannot be converted stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from .graph import Format, Node, NodeIds, Ref, Workflow, WorkflowError, read_workflow, write_workflow
from .schemas import PEER_NODES

# Our option values (tests/test_convert.py checks them against the enums of bolid_core.adapter).
WEIGHT_TYPES = (
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output", "weak middle",
    "strong middle", "style transfer", "composition", "strong style transfer", "style and composition",
    "strong style and composition", "style transfer precise", "composition precise",
)  # fmt: skip
PRECISE_TYPES = ("style transfer precise", "composition precise")
EMBEDS_SCALINGS = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
REFERENCE_COMBINES = ("average", "concat", "add", "subtract", "norm average")
PRESETS = {
    "LIGHT - SD1.5 only (low strength)": "light",
    "STANDARD (medium strength)": "standard",
    "VIT-G (medium strength)": "vit-g",
    "PLUS (high strength)": "plus",
    "PLUS FACE (portraits)": "plus face",
    "FULL FACE - SD1.5 only (portraits stronger)": "full face",
    "FACEID": "faceid",
    "FACEID PLUS V2": "faceid plus v2",
    "FACEID PORTRAIT (style transfer)": "portrait",
}
SIMPLE_WEIGHT_TYPES = {"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"}
PROVIDERS = ("CPU", "CUDA", "ROCM", "DirectML", "OpenVINO", "CoreML")
FACEID_MODEL_PACK = "buffalo_l"  # the pack IPAdapter_plus's FaceID unified loader uses
ENCODE_TILES = 2  # IPAdapter_plus's tiled node: 2×2 tiles for a square image, up to 4 along a long side
CLIP_VISION_SIZE = 224
RESIZE_METHODS = {"LANCZOS": "lanczos", "BICUBIC": "bicubic", "BILINEAR": "bilinear", "NEAREST": "nearest-exact"}

# Peer nodes with no counterpart, and why.
UNMAPPED_NODES = {
    "IPAdapterFaceIDKolors": "Kolors models are not supported by this pack (SDXL and SD1.5 only).",
    "IPAdapterUnifiedLoaderCommunity": "its presets (Composition, Kolors) are community adapters with no preset "
    "here: load the file with BoLIDAdapterLoader and CLIP vision with CLIPVisionLoader.",
    "IPAdapterClipVisionEnhancer": "no CLIP-vision enhancer here: BoLIDEncodeImage with tiles ≥ 2 encodes the "
    "whole image and its tiles as references (enhance_ratio has no counterpart).",
    "IPAdapterClipVisionEnhancerBatch": "no CLIP-vision enhancer here: BoLIDEncodeImage with tiles ≥ 2 encodes the "
    "whole image and its tiles as references (enhance_ratio has no counterpart).",
    "IPAdapterFromParams": "per-frame IPADAPTER_PARAMS (animation batches) have no counterpart here.",
    "IPAdapterRegionalConditioning": "regional IPADAPTER_PARAMS have no counterpart; for people in regions use "
    "BoLIDAddRegion with BoLIDApplyAdapter's regions input.",
    "IPAdapterCombineParams": "IPADAPTER_PARAMS have no counterpart here.",
    "IPAdapterWeights": "per-frame weight schedules (animation batches) have no counterpart here.",
    "IPAdapterWeightsFromStrategy": "per-frame weight schedules (animation batches) have no counterpart here.",
    "IPAdapterPromptScheduleFromWeightsStrategy": "per-frame weight schedules have no counterpart here.",
    "IPAdapterCombineWeights": "per-frame weight schedules have no counterpart here.",
}


@dataclass(frozen=True)
class Finding:
    node_id: str
    class_type: str
    option: str  # empty: the whole node
    reason: str

    def __str__(self) -> str:
        where = f"node {self.node_id} ({self.class_type})" + (f", {self.option}" if self.option else "")
        return f"{where}: {self.reason}"


@dataclass
class ConversionResult:
    workflow: dict
    format: Format
    converted: dict[str, list[str]] = field(default_factory=dict)  # peer node id -> the nodes written for it
    unmapped: list[Finding] = field(default_factory=list)  # nodes and options with no counterpart
    notes: list[Finding] = field(default_factory=list)  # mapped, but behaving differently


# --- what a peer output stands for once converted --------------------------------------------------------------------


@dataclass(frozen=True)
class Pipe:
    """The peer's IPADAPTER: an adapter, and the CLIP vision / insightface its loader bundled."""

    adapter: Ref
    clip_vision: Ref | None = None
    face_analyzer: Ref | None = None


@dataclass(frozen=True)
class Embeds:
    """The peer's EMBEDS (pos_embed): our image embeddings, and how they were made when that is known."""

    embeds: Ref
    images: tuple[Ref, ...] = ()  # the encoded images (IPAdapterEncoder), for combining several
    clip_vision: Ref | None = None
    combine: str | None = None  # set by IPAdapterCombineEmbeds: applied by our apply node's combine_references
    encoders: frozenset[str] = frozenset()  # peer encoder nodes whose neg_embed these already carry


@dataclass(frozen=True)
class NegativeEmbeds:
    encoder: str


@dataclass(frozen=True)
class Lost:
    reason: str


class _Unconvertible(Exception):
    pass


class _Conversion:
    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow
        self.ids = NodeIds(workflow)
        self.values: dict[Ref, object] = {}
        self.converted: set[str] = set()
        self.result = ConversionResult({}, workflow.format)
        self.node: Node
        self.pending: list[Node] = []  # written for the node being converted, kept if it converts
        self.written_nodes: list[Node] = []

    # reading the peer node being converted
    def value(self, name: str) -> object:
        value = self.node.inputs.get(name)
        if isinstance(value, Ref) and value.node in self.converted:
            return self.values.get(value, Lost(f"output {value.slot} of node {value.node} has no counterpart here"))
        return value

    def link(self, name: str) -> Ref | None:
        value = self.value(name)
        if isinstance(value, Lost):
            self.unmapped(name, value.reason)
            return None
        if value is not None and not isinstance(value, Ref):
            raise _Unconvertible(f"{name} gets a {type(value).__name__} where an output link was expected")
        return value

    def pipe(self) -> Pipe:
        value = self.value("ipadapter")
        if isinstance(value, Pipe):
            return value
        if isinstance(value, Lost):
            raise _Unconvertible(f"its ipadapter input: {value.reason}")
        raise _Unconvertible("its ipadapter input must come from an IPAdapter_plus loader that was converted")

    def choice(self, name: str, allowed: tuple[str, ...], fallback: str) -> object:
        value = self.value(name)
        if isinstance(value, Ref) or value in allowed:
            return value
        self.unmapped(name, f"{value!r} has no counterpart ({', '.join(allowed)}); {fallback!r} used")
        return fallback

    # writing
    def add(self, class_type: str, inputs: dict, *, main: bool = False) -> str:
        node_id = self.node.id if main else self.ids.new(self.node.id)
        cleaned = {name: value for name, value in inputs.items() if value is not None}
        self.pending.append(Node(node_id, class_type, cleaned, anchor=self.node.id))
        return node_id

    def output(self, slot: int, value: object) -> None:
        self.values[Ref(self.node.id, slot)] = value

    def unmapped(self, option: str, reason: str) -> None:
        self.result.unmapped.append(Finding(self.node.id, self.node.class_type, option, reason))

    def note(self, option: str, reason: str) -> None:
        self.result.notes.append(Finding(self.node.id, self.node.class_type, option, reason))


# --- the rules, one per peer node type ------------------------------------------------------------------------------

FACE_CLASSES = ("IPAdapterFaceID", "IPAAdapterFaceIDBatch")
UNFOLD_CLASSES = (
    "IPAdapterBatch", "IPAAdapterFaceIDBatch", "IPAdapterTiledBatch", "IPAdapterEmbedsBatch",
    "IPAdapterPreciseStyleTransferBatch", "IPAdapterPreciseCompositionBatch",
)  # fmt: skip


def _unified_loader(c: _Conversion) -> None:
    preset = c.value("preset")
    if preset not in PRESETS:
        raise _Unconvertible(f"preset {preset!r} has no counterpart (ours: {', '.join(sorted(set(PRESETS.values())))})")
    inputs = {"model": c.link("model"), "preset": PRESETS[preset]}
    if "lora_strength" in c.node.inputs:
        inputs["lora_strength"] = c.value("lora_strength")
    loader = c.add("BoLIDUnifiedLoader", inputs, main=True)
    face_analyzer = None
    if "provider" in c.node.inputs:  # the FaceID loader also loads insightface
        provider = c.choice("provider", PROVIDERS, "CPU")
        face_analyzer = Ref(c.add("BoLIDInsightFaceLoader", {"model_pack": FACEID_MODEL_PACK, "provider": provider}), 0)
        c.note("provider", f"insightface pack {FACEID_MODEL_PACK!r} from BoLIDInsightFaceLoader")
    if c.node.inputs.get("ipadapter") is not None:
        c.note("ipadapter", "a chained pipe only shared loaded models; not needed here")
    c.output(0, Ref(loader, 0))
    c.output(1, Pipe(Ref(loader, 1), Ref(loader, 2), face_analyzer))


def _model_loader(c: _Conversion) -> None:
    name = c.value("ipadapter_file")
    loader = c.add("BoLIDAdapterLoader", {"adapter_name": f"ipadapter/{name}"}, main=True)
    c.output(0, Pipe(Ref(loader, 0)))


def _insightface_loader(c: _Conversion) -> None:
    provider = c.choice("provider", PROVIDERS, "CPU")
    loader = c.add("BoLIDInsightFaceLoader", {"model_pack": c.value("model_name"), "provider": provider}, main=True)
    c.output(0, Ref(loader, 0))


def _apply(c: _Conversion) -> None:
    """Every apply node that takes an image (simple, advanced, batch, FaceID, MS, precise, tiled)."""
    kind = c.node.class_type
    pipe = c.pipe()
    clip_vision = c.link("clip_vision") or pipe.clip_vision
    face_analyzer = c.link("insightface") or pipe.face_analyzer
    weight = c.value("weight")
    inputs = {
        "model": c.link("model"), "adapter": pipe.adapter, "start_at": c.value("start_at"),
        "end_at": c.value("end_at"), "attn_mask": c.link("attn_mask"), "image_negative": c.link("image_negative"),
    }  # fmt: skip
    inputs["combine_references"] = (
        c.choice("combine_embeds", REFERENCE_COMBINES, "concat") if "combine_embeds" in c.node.inputs else "concat"
    )
    if "embeds_scaling" in c.node.inputs:
        inputs["embeds_scaling"] = c.choice("embeds_scaling", EMBEDS_SCALINGS, "V only")
    inputs.update(_weight_type(c, weight))
    if kind in UNFOLD_CLASSES:
        inputs["unfold_batch"] = True
    if c.value("encode_batch_size") not in (None, 0):
        inputs["encode_batch_size"] = c.value("encode_batch_size")
    if layer_weights := c.value("layer_weights"):
        inputs["layer_weights"] = layer_weights

    image = c.link("image")
    face_embed = None
    if kind in FACE_CLASSES or face_analyzer is not None:
        if face_analyzer is None:
            raise _Unconvertible("FaceID needs insightface: connect an insightface loader or use the FaceID loader")
        face_embed = c.add("BoLIDFaceEmbed", {"face_analyzer": face_analyzer, "images": image})
        inputs.update(face_embeds=Ref(face_embed, 0), face_weight=weight, clip_vision=clip_vision)
        if "weight_faceidv2" in c.node.inputs:
            inputs["faceid_v2_shortcut"] = _faceid_v2_shortcut(c)
        elif isinstance(weight, int | float):  # the peer's nodes without the input use twice the weight
            inputs["faceid_v2_shortcut"] = min(max(2.0 * weight, 0.0), 5.0)
    elif kind.startswith("IPAdapterTiled"):
        if clip_vision is None:
            raise _Unconvertible("no CLIP vision: connect clip_vision or use the unified loader")
        encode = {"clip_vision": clip_vision, "image": image, "tiles": ENCODE_TILES,
                  "image_negative": inputs.pop("image_negative")}  # fmt: skip
        if "encode_batch_size" in inputs:
            encode["encode_batch_size"] = inputs.pop("encode_batch_size")
        # clip_vision too: without a negative image, the null input is a black image's encoding.
        inputs.update(image_embeds=Ref(c.add("BoLIDEncodeImage", encode), 0), image_weight=weight,
                      clip_vision=clip_vision)  # fmt: skip
        if c.value("sharpening") not in (0, 0.0, None):
            c.unmapped("sharpening", "no sharpening before CLIP vision here; the image is encoded as it is")
        c.note(
            "image",
            f"encoded as the whole image plus {ENCODE_TILES} square tiles along its long side, combined as "
            "references over the whole latent (IPAdapter_plus applies each tile to its own region of it)",
        )
        c.output(1, Lost("BoLIDEncodeImage does not output the tiles"))
        c.output(2, Lost("BoLIDEncodeImage does not output tile masks"))
    else:
        inputs.update(image=image, image_weight=weight, clip_vision=clip_vision)
    main = c.add("BoLIDApplyAdapter", inputs, main=True)
    c.output(0, Ref(main, 0))
    if kind in FACE_CLASSES:
        c.output(1, Ref(face_embed, 1))
        c.note("face_image", "BoLIDFaceEmbed's preview: the whole image with the faces boxed, not the crop")


def _weight_type(c: _Conversion, weight: object) -> dict:
    kind = c.node.class_type
    if kind.startswith("IPAdapterPreciseStyleTransfer"):
        return {"weight_type": "style transfer precise", "precise_boost": c.value("style_boost")}
    if kind.startswith("IPAdapterPreciseComposition"):
        return {"weight_type": "composition precise", "precise_boost": c.value("composition_boost")}
    if kind == "IPAdapter":
        value = c.value("weight_type")
        if isinstance(value, str) and value.startswith("style"):
            value = "style transfer"  # as the peer reads it
        if value not in SIMPLE_WEIGHT_TYPES:
            c.unmapped("weight_type", f"{value!r} is not one of the simple node's types; 'linear' used")
        return {"weight_type": SIMPLE_WEIGHT_TYPES.get(value, "linear")}
    weight_type = c.choice("weight_type", WEIGHT_TYPES, "linear")
    if c.value("layer_weights") and weight_type not in PRECISE_TYPES:
        return {"weight_type": "linear"}  # the peer ignores the weight type once layer weights are given
    if weight_type in PRECISE_TYPES:
        # Chosen as a weight type, the peer's boost is the weight itself.
        return {"weight_type": weight_type, "precise_boost": weight}
    return {"weight_type": weight_type}


def _faceid_v2_shortcut(c: _Conversion) -> object:
    value = c.value("weight_faceidv2")
    if isinstance(value, int | float) and value < 0:
        c.unmapped("weight_faceidv2", f"{value} is below our faceid_v2_shortcut's minimum 0; 0 used")
        return 0.0
    return value


def _style_composition(c: _Conversion) -> None:
    pipe = c.pipe()
    clip_vision = c.link("clip_vision") or pipe.clip_vision
    if clip_vision is None:
        raise _Unconvertible("no CLIP vision: connect clip_vision or use the unified loader")
    batch = c.node.class_type.endswith("Batch")
    inputs = {
        "model": c.link("model"), "adapter": pipe.adapter, "clip_vision": clip_vision,
        "image_style": c.link("image_style"), "image_composition": c.link("image_composition"),
        "weight_style": c.value("weight_style"), "weight_composition": c.value("weight_composition"),
        "expand_style": c.value("expand_style"), "start_at": c.value("start_at"), "end_at": c.value("end_at"),
        "combine_references": "concat" if batch else c.choice("combine_embeds", REFERENCE_COMBINES, "average"),
        "embeds_scaling": c.choice("embeds_scaling", EMBEDS_SCALINGS, "V only"),
        "image_negative": c.link("image_negative"), "attn_mask": c.link("attn_mask"),
    }  # fmt: skip
    if batch:
        c.unmapped("unfold_batch", "BoLIDApplyStyleComposition has no unfold: every latent gets every reference")
    c.output(0, Ref(c.add("BoLIDApplyStyleComposition", inputs, main=True), 0))


def _encoder(c: _Conversion) -> None:
    clip_vision = c.link("clip_vision") or c.pipe().clip_vision
    if clip_vision is None:
        raise _Unconvertible("no CLIP vision: connect clip_vision or use the unified loader")
    image = c.link("image")
    encode = c.add("BoLIDEncodeImage", {"clip_vision": clip_vision, "image": image}, main=True)
    if c.value("weight") not in (1, 1.0):
        c.unmapped("weight", f"embeddings are not scaled here ({c.value('weight')}); set the apply node's weight")
    if c.link("mask") is not None:
        c.unmapped("mask", "no masked CLIP-vision encoding here: crop the image instead")
    images = (image,) if image is not None else ()
    c.output(0, Embeds(Ref(encode, 0), images, clip_vision, None, frozenset({c.node.id})))
    c.output(1, NegativeEmbeds(c.node.id))


def _combine_embeds(c: _Conversion) -> None:
    method = c.value("method")
    parts = [c.value(f"embed{i}") for i in range(1, 6)]
    parts = [part for part in parts if part is not None]
    if method not in REFERENCE_COMBINES:
        raise _Unconvertible(f"method {method!r} has no counterpart ({', '.join(REFERENCE_COMBINES)})")
    if not parts or not all(isinstance(part, Embeds) for part in parts):
        raise _Unconvertible("its embeds must come from converted IPAdapterEncoder nodes")
    if len(parts) == 1 and parts[0].combine is None:
        c.output(0, Embeds(parts[0].embeds, parts[0].images, parts[0].clip_vision, None, parts[0].encoders))
        return
    if not all(part.images and part.combine is None for part in parts):
        raise _Unconvertible("only embeddings encoded from images in this workflow can be combined here")
    if len({part.clip_vision for part in parts}) != 1:
        raise _Unconvertible("the combined embeddings come from different CLIP vision models")
    images = [image for part in parts for image in part.images]
    batch = images[0]
    for image in images[1:]:
        batch = Ref(c.add("ImageBatch", {"image1": batch, "image2": image}), 0)
    encode = c.add("BoLIDEncodeImage", {"clip_vision": parts[0].clip_vision, "image": batch}, main=True)
    c.note("method", "the images are encoded as one batch (ImageBatch scales each to the first one's size) and "
           "combined by the apply node's combine_references")  # fmt: skip
    encoders = frozenset().union(*(part.encoders for part in parts))
    c.output(0, Embeds(Ref(encode, 0), tuple(images), parts[0].clip_vision, method, encoders))


def _apply_embeds(c: _Conversion) -> None:
    pipe = c.pipe()
    embeds = c.value("pos_embed")
    if not isinstance(embeds, Embeds):
        raise _Unconvertible("its pos_embed must come from a converted encoder, combine or load-embeds node")
    negative = c.value("neg_embed")
    if negative is not None and not (isinstance(negative, NegativeEmbeds) and negative.encoder in embeds.encoders):
        c.unmapped("neg_embed", "our embeddings carry their own negative (BoLIDEncodeImage's image_negative); "
                   "this separate one is dropped")  # fmt: skip
    weight = c.value("weight")
    inputs = {
        "model": c.link("model"), "adapter": pipe.adapter, "image_embeds": embeds.embeds, "image_weight": weight,
        "clip_vision": c.link("clip_vision") or pipe.clip_vision,  # the null input, unless the embeds carry one
        "start_at": c.value("start_at"), "end_at": c.value("end_at"), "attn_mask": c.link("attn_mask"),
        "combine_references": embeds.combine or "concat",
        "embeds_scaling": c.choice("embeds_scaling", EMBEDS_SCALINGS, "V only"),
    }  # fmt: skip
    inputs.update(_weight_type(c, weight))
    if c.node.class_type in UNFOLD_CLASSES:
        inputs["unfold_batch"] = True
    c.output(0, Ref(c.add("BoLIDApplyAdapter", inputs, main=True), 0))


def _save_embeds(c: _Conversion) -> None:
    embeds = c.value("embeds")
    if not isinstance(embeds, Embeds):
        raise _Unconvertible("its embeds must come from a converted encoder, combine or load-embeds node")
    if embeds.combine not in (None, "concat"):
        c.unmapped("embeds", f"saved uncombined: {embeds.combine!r} is applied by the apply node, not stored")
    inputs = {"image_embeds": embeds.embeds, "filename_prefix": c.value("filename_prefix")}
    c.add("BoLIDSaveImageEmbeds", inputs, main=True)
    c.note("filename_prefix", "saved as safetensors in models/bolid/embeds/, not as .ipadpt in the output folder")


def _load_embeds(c: _Conversion) -> None:
    name = c.value("embeds")
    renamed = str(PurePosixPath(str(name)).with_suffix(".safetensors").name) if isinstance(name, str) else name
    loader = c.add("BoLIDLoadImageEmbeds", {"embeds": renamed}, main=True)
    c.unmapped(
        "embeds",
        f"{name!r} is a pickle (.ipadpt), which this pack never loads: re-encode the images and save them with "
        f"BoLIDSaveImageEmbeds as {renamed!r} (models/bolid/embeds/)",
    )
    c.output(0, Embeds(Ref(loader, 0)))


def _noise(c: _Conversion) -> None:
    inputs = {"type": c.value("type"), "strength": c.value("strength"), "blur": c.value("blur"), "seed": 0,
              "image": c.link("image_optional")}  # fmt: skip
    c.output(0, Ref(c.add("BoLIDNegativeImageNoise", inputs, main=True), 0))
    c.note("type", "same noise types and strength, a different random pattern: ours is seeded by its seed input")


def _prep_image(c: _Conversion) -> None:
    interpolation = c.value("interpolation")
    method = RESIZE_METHODS.get(interpolation, "lanczos") if isinstance(interpolation, str) else interpolation
    if isinstance(interpolation, str) and interpolation not in RESIZE_METHODS:
        c.unmapped("interpolation", f"{interpolation!r} is not a method of ImageScale; 'lanczos' used")
    if c.value("crop_position") != "center":
        c.unmapped("crop_position", f"{c.value('crop_position')!r}: ImageScale crops at the centre")
    if c.value("sharpening") not in (0, 0.0, None):
        c.unmapped("sharpening", "ImageScale does not sharpen")
    inputs = {"image": c.link("image"), "upscale_method": method, "width": CLIP_VISION_SIZE,
              "height": CLIP_VISION_SIZE, "crop": "center"}  # fmt: skip
    c.output(0, Ref(c.add("ImageScale", inputs, main=True), 0))


RULES: dict[str, Callable[[_Conversion], None]] = {
    "IPAdapterUnifiedLoader": _unified_loader,
    "IPAdapterUnifiedLoaderFaceID": _unified_loader,
    "IPAdapterModelLoader": _model_loader,
    "IPAdapterInsightFaceLoader": _insightface_loader,
    **dict.fromkeys(
        (
            "IPAdapter",
            "IPAdapterAdvanced",
            "IPAdapterBatch",
            "IPAdapterFaceID",
            "IPAAdapterFaceIDBatch",
            "IPAdapterMS",
            "IPAdapterTiled",
            "IPAdapterTiledBatch",
            "IPAdapterPreciseStyleTransfer",
            "IPAdapterPreciseStyleTransferBatch",
            "IPAdapterPreciseComposition",
            "IPAdapterPreciseCompositionBatch",
        ),
        _apply,
    ),
    "IPAdapterStyleComposition": _style_composition,
    "IPAdapterStyleCompositionBatch": _style_composition,
    "IPAdapterEncoder": _encoder,
    "IPAdapterCombineEmbeds": _combine_embeds,
    "IPAdapterEmbeds": _apply_embeds,
    "IPAdapterEmbedsBatch": _apply_embeds,
    "IPAdapterSaveEmbeds": _save_embeds,
    "IPAdapterLoadEmbeds": _load_embeds,
    "IPAdapterNoise": _noise,
    "PrepImageForClipVision": _prep_image,
}


# --- the conversion ------------------------------------------------------------------------------------------------


def convert_workflow(document: object) -> ConversionResult:
    """`document`: a workflow as json.load gives it, UI or API format. Raises WorkflowError for anything else."""
    workflow = read_workflow(document, {kind: PEER_NODES[kind] for kind in RULES})
    conversion = _Conversion(workflow)
    result = conversion.result
    for node in _peer_order(workflow):
        conversion.node, conversion.pending = node, []
        reported = len(result.unmapped), len(result.notes)
        try:
            RULES[node.class_type](conversion)
        except _Unconvertible as reason:
            del result.unmapped[reported[0] :], result.notes[reported[1] :]
            conversion.unmapped("", f"not converted, kept as it is: {reason}")
            continue  # kept: it reads its inputs as saved, and its outputs stay its own
        for note in node.notes:
            conversion.note("widgets_values", note)
        conversion.converted.add(node.id)
        result.converted[node.id] = [written.id for written in conversion.pending]
        conversion.written_nodes.extend(conversion.pending)
    for node in workflow.nodes.values():
        if node.class_type in UNMAPPED_NODES:
            result.unmapped.append(Finding(node.id, node.class_type, "", UNMAPPED_NODES[node.class_type]))
    result.workflow = write_workflow(workflow, _output_nodes(conversion))
    return result


def _peer_order(workflow: Workflow) -> list[Node]:
    """Peer nodes to convert, each after the peer nodes it reads from."""
    order, state = [], {}

    def visit(node_id: str) -> None:
        if state.get(node_id) == "done":
            return
        if state.get(node_id) == "visiting":
            raise WorkflowError(f"The workflow has a cycle through node {node_id}.")
        state[node_id] = "visiting"
        node = workflow.nodes[node_id]
        for value in node.inputs.values():
            if isinstance(value, Ref) and value.node in workflow.nodes:
                visit(value.node)
        state[node_id] = "done"
        if node.class_type in RULES:
            order.append(node)

    for node_id in workflow.nodes:
        visit(node_id)
    return order


def _output_nodes(conversion: _Conversion) -> list[Node]:
    """Kept nodes (their links re-pointed at what the converted nodes became) and the written ones, in the
    original order, each written node where its peer node was."""
    written_by_anchor: dict[str, list[Node]] = {}
    for node in conversion.written_nodes:
        written_by_anchor.setdefault(node.anchor, []).append(node)
    out = []
    for node in conversion.workflow.nodes.values():
        if node.id in conversion.converted:
            out.extend(written_by_anchor.get(node.id, []))
            continue
        if conversion.workflow.format is Format.UI and node.class_type not in RULES:
            node.slot_links = _translated(conversion, node, node.slot_links)
        else:
            node.inputs = _translated(conversion, node, node.inputs)
            if node.class_type in RULES and conversion.workflow.format is Format.UI:
                node.slot_links = _ui_slot_links(node)
        out.append(node)
    return out


def _translated(conversion: _Conversion, node: Node, links: dict) -> dict:
    kept = {}
    for key, value in links.items():
        if isinstance(value, Ref) and value.node in conversion.converted:
            target = conversion.values.get(value)
            if not isinstance(target, Ref):
                reason = target.reason if isinstance(target, Lost) else "it carries an IPAdapter_plus-only type"
                conversion.result.unmapped.append(
                    Finding(node.id, node.class_type, f"input {key}",
                            f"link from node {value.node} dropped: {reason}")
                )  # fmt: skip
                continue
            value = target
        kept[key] = value
    return kept


def _ui_slot_links(node: Node) -> dict[int, Ref]:
    """A peer node kept in a UI workflow: its input slots' sources, by the names read from them."""
    links = {}
    for slot, entry in enumerate(node.raw.get("inputs") or []):
        name = (entry.get("widget") or {}).get("name") or entry.get("name")
        if isinstance(node.inputs.get(name), Ref):
            links[slot] = node.inputs[name]
    return links
