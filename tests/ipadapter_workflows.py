"""IPAdapter_plus workflows in the layout its published examples use (examples/*.json: UI format with nodes, links
and positional widgets_values; and the same graphs in API format), with our own content, for the converter tests.

The widget order of each node is written out here from IPAdapter_plus's INPUT_TYPES (and ComfyUI's core nodes),
independently of the converter's tables. File names are the ones tests/conftest.py installs for the server.
"""

from __future__ import annotations

import copy

PLUS_ADAPTER = "ip-adapter-plus_sdxl_vit-h.safetensors"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
LAYER_WEIGHTS = "0:0, 1:0, 2:0, 3:2.5, 4:0, 5:0, 6:1, 7:0, 8:0, 9:0, 10:0"

# node type -> (widget names in order, [(socket input name, type)], [(output name, type)])
LAYOUTS: dict[str, tuple[list[str], list[tuple[str, str]], list[tuple[str, str]]]] = {
    "CheckpointLoaderSimple": (["ckpt_name"], [], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": (["text"], [("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": (["width", "height", "batch_size"], [], [("LATENT", "LATENT")]),
    "KSampler": (
        ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
        [("LATENT", "LATENT")],
    ),
    "VAEDecode": ([], [("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveImage": (["filename_prefix"], [("images", "IMAGE")], []),
    "LoadImage": (["image", "upload"], [], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "CLIPVisionLoader": (["clip_name"], [], [("CLIP_VISION", "CLIP_VISION")]),
    "ImageBatch": ([], [("image1", "IMAGE"), ("image2", "IMAGE")], [("IMAGE", "IMAGE")]),
    "IPAdapterUnifiedLoader": (
        ["preset"], [("model", "MODEL"), ("ipadapter", "IPADAPTER")], [("model", "MODEL"), ("ipadapter", "IPADAPTER")]
    ),
    "IPAdapterUnifiedLoaderFaceID": (
        ["preset", "lora_strength", "provider"],
        [("model", "MODEL"), ("ipadapter", "IPADAPTER")],
        [("MODEL", "MODEL"), ("ipadapter", "IPADAPTER")],
    ),
    "IPAdapterModelLoader": (["ipadapter_file"], [], [("IPADAPTER", "IPADAPTER")]),
    "IPAdapter": (
        ["weight", "start_at", "end_at", "weight_type"],
        [("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("image", "IMAGE"), ("attn_mask", "MASK")],
        [("MODEL", "MODEL")],
    ),
    "IPAdapterAdvanced": (
        ["weight", "weight_type", "combine_embeds", "start_at", "end_at", "embeds_scaling"],
        [("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("image", "IMAGE"), ("image_negative", "IMAGE"),
         ("attn_mask", "MASK"), ("clip_vision", "CLIP_VISION")],
        [("MODEL", "MODEL")],
    ),
    "IPAdapterFaceID": (
        ["weight", "weight_faceidv2", "weight_type", "combine_embeds", "start_at", "end_at", "embeds_scaling"],
        [("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("image", "IMAGE"), ("image_negative", "IMAGE"),
         ("attn_mask", "MASK"), ("clip_vision", "CLIP_VISION"), ("insightface", "INSIGHTFACE")],
        [("MODEL", "MODEL"), ("face_image", "IMAGE")],
    ),
    "IPAdapterStyleComposition": (
        ["weight_style", "weight_composition", "expand_style", "combine_embeds", "start_at", "end_at",
         "embeds_scaling"],
        [("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("image_style", "IMAGE"), ("image_composition", "IMAGE"),
         ("image_negative", "IMAGE"), ("attn_mask", "MASK"), ("clip_vision", "CLIP_VISION")],
        [("MODEL", "MODEL")],
    ),
    "IPAdapterPreciseStyleTransfer": (
        ["weight", "style_boost", "combine_embeds", "start_at", "end_at", "embeds_scaling"],
        [("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("image", "IMAGE"), ("image_negative", "IMAGE"),
         ("attn_mask", "MASK"), ("clip_vision", "CLIP_VISION")],
        [("MODEL", "MODEL")],
    ),
    "IPAdapterMS": (
        ["weight", "weight_faceidv2", "weight_type", "combine_embeds", "start_at", "end_at", "embeds_scaling",
         "layer_weights"],
        [("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("image", "IMAGE"), ("image_negative", "IMAGE"),
         ("attn_mask", "MASK"), ("clip_vision", "CLIP_VISION"), ("insightface", "INSIGHTFACE")],
        [("MODEL", "MODEL")],
    ),
    "IPAdapterTiled": (
        ["weight", "weight_type", "combine_embeds", "start_at", "end_at", "sharpening", "embeds_scaling"],
        [("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("image", "IMAGE"), ("image_negative", "IMAGE"),
         ("attn_mask", "MASK"), ("clip_vision", "CLIP_VISION")],
        [("MODEL", "MODEL"), ("tiles", "IMAGE"), ("masks", "MASK")],
    ),
    "IPAdapterEmbeds": (
        ["weight", "weight_type", "start_at", "end_at", "embeds_scaling"],
        [("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("pos_embed", "EMBEDS"), ("neg_embed", "EMBEDS"),
         ("attn_mask", "MASK"), ("clip_vision", "CLIP_VISION")],
        [("MODEL", "MODEL")],
    ),
    "IPAdapterEncoder": (
        ["weight"],
        [("ipadapter", "IPADAPTER"), ("image", "IMAGE"), ("mask", "MASK"), ("clip_vision", "CLIP_VISION")],
        [("pos_embed", "EMBEDS"), ("neg_embed", "EMBEDS")],
    ),
    "IPAdapterCombineEmbeds": (
        ["method"], [("embed1", "EMBEDS")] + [(f"embed{i}", "EMBEDS") for i in range(2, 6)], [("EMBEDS", "EMBEDS")]
    ),
    "IPAdapterSaveEmbeds": (["filename_prefix"], [("embeds", "EMBEDS")], []),
    "IPAdapterLoadEmbeds": (["embeds"], [], [("EMBEDS", "EMBEDS")]),
    "IPAdapterNoise": (["type", "strength", "blur"], [("image_optional", "IMAGE")], [("IMAGE", "IMAGE")]),
}  # fmt: skip


def _base(model_from: list, image: str = "bolid_reference.png") -> dict:
    """Checkpoint, prompts, latent, sampler, decode, save: the frame every example shares. `model_from` feeds the
    sampler; node 8 loads the reference image."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a knight in a forest, detailed", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, lowres", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "seed": 7, "steps": 2, "cfg": 6.5, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0,
            "model": model_from, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"filename_prefix": "converted", "images": ["6", 0]}},
        "8": {"class_type": "LoadImage", "inputs": {"image": image}},
    }  # fmt: skip


def _node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def _unified(preset: str = "PLUS (high strength)") -> dict:
    return _node("IPAdapterUnifiedLoader", preset=preset, model=["1", 0])


def simple() -> dict:
    return {**_base(["11", 0]), "10": _unified(), "11": _node(
        "IPAdapter", weight=0.8, start_at=0.0, end_at=1.0, weight_type="prompt is more important",
        model=["10", 0], ipadapter=["10", 1], image=["8", 0])}  # fmt: skip


def advanced() -> dict:
    return {
        **_base(["12", 0]),
        "10": _node("IPAdapterModelLoader", ipadapter_file=PLUS_ADAPTER),
        "11": _node("CLIPVisionLoader", clip_name=VIT_H),
        "12": _node("IPAdapterAdvanced", weight=0.7, weight_type="ease in-out", combine_embeds="concat",
                    start_at=0.1, end_at=0.9, embeds_scaling="K+V w/ C penalty", model=["1", 0], ipadapter=["10", 0],
                    image=["8", 0], clip_vision=["11", 0]),
    }  # fmt: skip


def faceid() -> dict:
    return {
        **_base(["11", 0], image="bolid_face.png"),
        "10": _node("IPAdapterUnifiedLoaderFaceID", preset="FACEID PLUS V2", lora_strength=0.6, provider="CPU",
                    model=["1", 0]),
        "11": _node("IPAdapterFaceID", weight=0.9, weight_faceidv2=1.5, weight_type="linear",
                    combine_embeds="average", start_at=0.0, end_at=1.0, embeds_scaling="V only", model=["10", 0],
                    ipadapter=["10", 1], image=["8", 0]),
    }  # fmt: skip


def style_composition() -> dict:
    return {
        **_base(["11", 0]),
        "9": _node("LoadImage", image="bolid_body_front.png"),
        "10": _unified(),
        "11": _node("IPAdapterStyleComposition", weight_style=1.2, weight_composition=0.8, expand_style=False,
                    combine_embeds="average", start_at=0.0, end_at=1.0, embeds_scaling="K+V", model=["10", 0],
                    ipadapter=["10", 1], image_style=["8", 0], image_composition=["9", 0]),
    }  # fmt: skip


def precise_style() -> dict:
    return {**_base(["11", 0]), "10": _unified(), "11": _node(
        "IPAdapterPreciseStyleTransfer", weight=1.0, style_boost=2.0, combine_embeds="concat", start_at=0.0,
        end_at=1.0, embeds_scaling="V only", model=["10", 0], ipadapter=["10", 1], image=["8", 0])}  # fmt: skip


def layer_weights() -> dict:
    return {
        **_base(["12", 0]),
        "10": _node("IPAdapterModelLoader", ipadapter_file=PLUS_ADAPTER),
        "11": _node("CLIPVisionLoader", clip_name=VIT_H),
        "12": _node("IPAdapterMS", weight=1.0, weight_faceidv2=1.0, weight_type="linear", combine_embeds="concat",
                    start_at=0.0, end_at=1.0, embeds_scaling="V only", layer_weights=LAYER_WEIGHTS,
                    model=["1", 0], ipadapter=["10", 0], image=["8", 0], clip_vision=["11", 0]),
    }  # fmt: skip


def embeds() -> dict:
    """Encode once, save the embeddings, apply them."""
    return {
        **_base(["13", 0]),
        "10": _unified(),
        "11": _node("IPAdapterEncoder", weight=1.0, ipadapter=["10", 1], image=["8", 0]),
        "12": _node("IPAdapterSaveEmbeds", filename_prefix="converted_embeds", embeds=["11", 0]),
        "13": _node("IPAdapterEmbeds", weight=0.9, weight_type="linear", start_at=0.0, end_at=1.0,
                    embeds_scaling="V only", model=["10", 0], ipadapter=["10", 1], pos_embed=["11", 0],
                    neg_embed=["11", 1]),
    }  # fmt: skip


def load_embeds(file_name: str = "converted_embeds_00001.ipadpt") -> dict:
    graph = _base(["13", 0])
    del graph["8"]
    return {
        **graph,
        "10": _unified(),
        "12": _node("IPAdapterLoadEmbeds", embeds=file_name),
        "13": _node("IPAdapterEmbeds", weight=0.9, weight_type="linear", start_at=0.0, end_at=1.0,
                    embeds_scaling="V only", model=["10", 0], ipadapter=["10", 1], pos_embed=["12", 0]),
    }  # fmt: skip


def negative_noise() -> dict:
    return {
        **_base(["13", 0]),
        "10": _node("IPAdapterModelLoader", ipadapter_file=PLUS_ADAPTER),
        "11": _node("CLIPVisionLoader", clip_name=VIT_H),
        "12": _node("IPAdapterNoise", type="dissolve", strength=0.5, blur=3, image_optional=["8", 0]),
        "13": _node("IPAdapterAdvanced", weight=0.7, weight_type="linear", combine_embeds="concat", start_at=0.0,
                    end_at=1.0, embeds_scaling="V only", model=["1", 0], ipadapter=["10", 0], image=["8", 0],
                    image_negative=["12", 0], clip_vision=["11", 0]),
    }  # fmt: skip


def tiled() -> dict:
    return {**_base(["11", 0], image="bolid_body_front.png"), "10": _unified(), "11": _node(
        "IPAdapterTiled", weight=0.7, weight_type="ease in", combine_embeds="concat", start_at=0.0, end_at=1.0,
        sharpening=0.0, embeds_scaling="V only", model=["10", 0], ipadapter=["10", 1], image=["8", 0])}  # fmt: skip


def combine_references() -> dict:
    """Two references batched into one apply node, combined with norm average (the peer's combine example)."""
    return {
        **_base(["12", 0]),
        "9": _node("LoadImage", image="bolid_body_side.png"),
        "10": _unified(),
        "11": _node("ImageBatch", image1=["8", 0], image2=["9", 0]),
        "12": _node("IPAdapterAdvanced", weight=0.8, weight_type="linear", combine_embeds="norm average",
                    start_at=0.0, end_at=1.0, embeds_scaling="V only", model=["10", 0], ipadapter=["10", 1],
                    image=["11", 0]),
    }  # fmt: skip


def combine_embeds() -> dict:
    """Two encoders, IPAdapterCombineEmbeds (average), IPAdapterEmbeds."""
    return {
        **_base(["14", 0]),
        "9": _node("LoadImage", image="bolid_body_side.png"),
        "10": _unified(),
        "11": _node("IPAdapterEncoder", weight=1.0, ipadapter=["10", 1], image=["8", 0]),
        "12": _node("IPAdapterEncoder", weight=1.0, ipadapter=["10", 1], image=["9", 0]),
        "13": _node("IPAdapterCombineEmbeds", method="average", embed1=["11", 0], embed2=["12", 0]),
        "14": _node("IPAdapterEmbeds", weight=1.0, weight_type="style transfer", start_at=0.0, end_at=1.0,
                    embeds_scaling="K+V", model=["10", 0], ipadapter=["10", 1], pos_embed=["13", 0],
                    neg_embed=["11", 1]),
    }  # fmt: skip


API_WORKFLOWS = {
    "simple": simple, "advanced": advanced, "faceid": faceid, "style_composition": style_composition,
    "precise_style": precise_style, "layer_weights": layer_weights, "embeds": embeds, "load_embeds": load_embeds,
    "negative_noise": negative_noise, "tiled": tiled, "combine_references": combine_references,
    "combine_embeds": combine_embeds,
}  # fmt: skip


def api_workflow(name: str) -> dict:
    return copy.deepcopy(API_WORKFLOWS[name]())


def ui_workflow(name: str) -> dict:
    """The same graph as the editor saves it, laid out as IPAdapter_plus's examples: every socket listed (link or
    null), widgets by position, a KSampler's control_after_generate stored after its seed."""
    api = api_workflow(name)
    links, nodes, outgoing = [], [], {}
    for column, (node_id, node) in enumerate(sorted(api.items(), key=lambda item: int(item[0]))):
        widgets, sockets, outputs = LAYOUTS[node["class_type"]]
        values = []
        for widget in widgets:
            if widget == "control_after_generate":
                values.append("fixed")
            elif widget == "upload":
                values.append("image")
            else:
                values.append(node["inputs"][widget])
        inputs = []
        for slot, (name, kind) in enumerate(sockets):
            source = node["inputs"].get(name)
            link_id = None
            if source is not None:
                link_id = len(links) + 1
                links.append([link_id, int(source[0]), source[1], int(node_id), slot, kind])
                outgoing.setdefault((source[0], source[1]), []).append(link_id)
            inputs.append({"name": name, "type": kind, "link": link_id})
        nodes.append({
            "id": int(node_id), "type": node["class_type"], "pos": [100 + 350 * column, 100],
            "size": {"0": 315, "1": 98}, "flags": {}, "order": column, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": values,
        })  # fmt: skip
    for ui_node in nodes:
        ui_node["outputs"] = [
            {"name": name, "type": kind, "links": outgoing.get((str(ui_node["id"]), slot)), "shape": 3,
             "slot_index": slot}
            for slot, (name, kind) in enumerate(ui_node["outputs"])
        ]  # fmt: skip
    return {
        "last_node_id": max(int(node_id) for node_id in api), "last_link_id": len(links), "nodes": nodes,
        "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4,
    }  # fmt: skip
