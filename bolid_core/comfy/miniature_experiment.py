"""The miniature experiment's generation, in ComfyUI through the pack's nodes: the miniature base model from
BoLID Miniature Model Loader, the adapter from BoLID Adapter Loader, the body encoder from BoLID Body Encoder
Loader, sources applied by BoLID Apply Adapter, sampling by ComfyUI's KSampler and decoding by VAEDecode.

Every condition of one person shares its captions and its noise (one seed), so the conditions differ only in what
the adapter is given. Condition 4 goes through BoLID Save Body ID and BoLID Load Body ID (a file round trip).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..body.body_id import BodyID
from ..body.keypoints import PoseKeypoints
from ..body.pipeline import WeightingParams, body_id_from_views
from ..body.pose import ViewPoses
from ..miniature.experiment import Condition

SAMPLER, SCHEDULER = "euler", "normal"
# The miniature VAE is 4x: ComfyUI's EmptyLatentImage makes (height // 8) latents, so a 128 px "latent image"
# decodes to the 64 px renders the model was trained on.
LATENT_IMAGE_SIZE = 128
BODY_WEIGHTING = WeightingParams(sigma=0.08, alpha=0.25)  # the Body ID node's defaults, as training used


def _result(output):
    return output.result if hasattr(output, "result") else output


@dataclass
class MiniatureModels:
    model: object
    clip: object
    vae: object
    adapter: object
    body_encoder: object
    clip_vision: object | None


def load_clip_vision(folder: Path):
    """The tiny transformers CLIPVisionModelWithProjection as ComfyUI's CLIP_VISION (ComfyUI reads the same keys)."""
    import comfy.clip_vision
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config = {**config.get("vision_config", config), "model_type": "clip_vision_model"}
    with tempfile.TemporaryDirectory() as scratch:
        config_file = Path(scratch) / "clip_vision_config.json"
        config_file.write_text(json.dumps(config), encoding="utf-8")
        clip_vision = comfy.clip_vision.ClipVisionModel(str(config_file))
    missing, _ = clip_vision.load_sd(load_file(folder / "model.safetensors"))
    if missing:
        raise RuntimeError(f"The miniature CLIP vision in {folder} lacks {len(missing)} weights, e.g. {missing[:3]}.")
    return clip_vision


def load_models(node_classes: Mapping[str, type], base: str, adapter: str, body_encoder: str,
                clip_vision_folder: Path | None) -> MiniatureModels:  # fmt: skip
    """Everything through the pack's loader nodes (the names are their combo entries)."""
    model, clip, vae = _result(node_classes["BoLIDMiniatureModelLoader"].execute(base))
    (loaded_adapter,) = _result(node_classes["BoLIDAdapterLoader"].execute(adapter))
    (encoder,) = _result(node_classes["BoLIDBodyEncoderLoader"].execute(body_encoder))
    clip_vision = load_clip_vision(clip_vision_folder) if clip_vision_folder is not None else None
    return MiniatureModels(model, clip, vae, loaded_adapter, encoder, clip_vision)


def exact_body_id(encoder, views: np.ndarray, keypoints: np.ndarray) -> BodyID:
    """The body ID of views whose keypoints are known exactly (the renderer's): the Body ID node's weighting and
    aggregation, without a pose network."""
    images = torch.from_numpy(np.ascontiguousarray(views)).float() / 255.0
    points = torch.from_numpy(np.ascontiguousarray(keypoints)).float()
    confidence = points[..., 2].mean(dim=1)
    poses = ViewPoses(PoseKeypoints(points), confidence, [], [])
    return body_id_from_views(encoder.vae, encoder.identity, images, poses, BODY_WEIGHTING)


class Generator:
    """One held-out person's images under each condition, through ComfyUI's and the pack's nodes."""

    def __init__(self, node_classes: Mapping[str, type], models: MiniatureModels, steps: int, cfg: float) -> None:
        import nodes as comfy_nodes

        self.node_classes, self.models, self.steps, self.cfg = node_classes, models, steps, cfg
        self._encode = comfy_nodes.CLIPTextEncode()
        self._empty = comfy_nodes.EmptyLatentImage()
        self._sampler = comfy_nodes.KSampler()
        self._decode = comfy_nodes.VAEDecode()
        self._negative_cache: dict[int, list] = {}

    def conditioning(self, prompts: tuple[str, ...]) -> list:
        """One CONDITIONING holding a different caption per batch item (ComfyUI keeps a cond batch that matches the
        latent batch)."""
        encoded = [self._encode.encode(self.models.clip, prompt)[0][0] for prompt in prompts]
        context = torch.cat([context for context, _ in encoded])
        pooled = torch.cat([options["pooled_output"] for _, options in encoded])
        return [[context, {"pooled_output": pooled}]]

    def _negative(self, batch: int) -> list:
        if batch not in self._negative_cache:
            self._negative_cache[batch] = self.conditioning(("",) * batch)
        return self._negative_cache[batch]

    def apply(self, body_id: BodyID | None = None, reference: np.ndarray | None = None):
        """The model with the adapter's sources: a body, a reference image, or neither (text alone)."""
        if body_id is None and reference is None:
            return self.models.model
        image = None
        if reference is not None:
            image = torch.from_numpy(np.ascontiguousarray(reference[None])).float() / 255.0
        weights = {"image_weight": 1.0 if reference is not None else 0.0, "face_weight": 0.0,
                   "body_weight": 1.0 if body_id is not None else 0.0}  # fmt: skip
        (model,) = _result(
            self.node_classes["BoLIDApplyAdapter"].execute(
                self.models.model, self.models.adapter, **weights, start_at=0.0, end_at=1.0,
                combine_references="average", faceid_v2_shortcut=1.0,
                clip_vision=self.models.clip_vision if reference is not None else None, image=image, body_id=body_id,
            )
        )  # fmt: skip
        return model

    def sample(self, model, prompts: tuple[str, ...], seed: int) -> np.ndarray:
        """(len(prompts), 64, 64, 3) uint8."""
        batch = len(prompts)
        (latent,) = self._empty.generate(LATENT_IMAGE_SIZE, LATENT_IMAGE_SIZE, batch)
        (samples,) = self._sampler.sample(
            model, seed, self.steps, self.cfg, SAMPLER, SCHEDULER, self.conditioning(prompts),
            self._negative(batch), latent, denoise=1.0,
        )  # fmt: skip
        (images,) = self._decode.decode(self.models.vae, samples)
        return (images.clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)

    def save_and_load(self, body_id: BodyID, name: str) -> BodyID:
        """Condition 4's round trip: BoLID Save Body ID, then BoLID Load Body ID of the saved file."""
        (saved,) = _result(self.node_classes["BoLIDSaveBodyID"].execute(body_id, name))
        (loaded,) = _result(self.node_classes["BoLIDLoadBodyID"].execute(saved))
        return loaded


@torch.inference_mode()  # as ComfyUI's executor runs every node
def person_images(
    generator: Generator, person, person_index: int, seed: int, view_counts: tuple[int, ...], with_reference: bool
) -> dict[Condition, np.ndarray]:
    """Every condition's images of one held-out person, all from the same captions and noise."""
    encoder = generator.models.body_encoder
    prompts = person.prompts
    out = {Condition.TEXT: generator.sample(generator.apply(), prompts, seed)}
    few, many = min(view_counts), max(view_counts)
    body_few = exact_body_id(encoder, person.views[:few], person.keypoints[:few])
    body_many = exact_body_id(encoder, person.views[:many], person.keypoints[:many])
    out[Condition.BODY_1] = generator.sample(generator.apply(body_id=body_few), prompts, seed)
    out[Condition.BODY_MANY] = generator.sample(generator.apply(body_id=body_many), prompts, seed)
    loaded = generator.save_and_load(body_many, f"miniature_heldout_{person_index:03d}")
    out[Condition.BODY_LOADED] = generator.sample(generator.apply(body_id=loaded), prompts, seed)
    if with_reference:
        out[Condition.REFERENCE] = generator.sample(generator.apply(reference=person.views[0]), prompts, seed)
    return out
