"""ImageReward (IR): BLIP (ViT-L/16 image encoder, BERT text encoder with cross-attention) + a score head.

Reward of (prompt, image): the text encoder reads the prompt (BERT tokens, padded to 35) while cross-attending to
the image tokens; the [CLS] output goes through the head (the aesthetic predictor's layout, on 768-d features)
and is normalised by the published mean and std. Built on transformers' BLIP classes; the published
`ImageReward.pt` (keys `blip.visual_encoder.*`, `blip.text_encoder.*`, `mlp.layers.*`) is renamed onto them and
read as plain tensors. The tokenizer is bert-base-uncased's `vocab.txt`, which must sit next to the checkpoint.
Nothing is downloaded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .aesthetic import ScoreHead
from .weights import EvalModelError, read_weights, require_file

# The published reward normalisation (ImageReward's `mean` and `std`).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
CLIP_PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_REWARD_FILE = "ImageReward.pt (THUDM/ImageReward) with bert-base-uncased's vocab.txt beside it"
VOCAB_FILE = "vocab.txt"


def vocab_path(checkpoint: str | Path) -> Path:
    """Where the tokenizer's vocab.txt must be: beside the ImageReward checkpoint."""
    return Path(checkpoint).parent / VOCAB_FILE


@dataclass(frozen=True)
class ImageRewardConfig:
    """The published model: BLIP ViT-L/16 at 224 px and BERT-base with cross-attention (its med_config)."""

    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate: int = 3072
    vocab_size: int = 30524  # bert-base-uncased's 30522 plus BLIP's [DEC] and [ENC]
    max_positions: int = 512
    prompt_tokens: int = 35


HEAD_WIDTH = 64  # per attention head, in BLIP's ViT-L/16 (1024 / 16) and in BERT-base (768 / 12)


def config_from_checkpoint(state: dict[str, torch.Tensor], name: str) -> ImageRewardConfig:
    """The sizes of a checkpoint in the published layout, read from its tensors (heads of HEAD_WIDTH each)."""
    try:
        vision_width = state["blip.visual_encoder.cls_token"].shape[-1]
        patch_size = state["blip.visual_encoder.patch_embed.proj.weight"].shape[-1]
        grid = math.isqrt(state["blip.visual_encoder.pos_embed"].shape[1] - 1)
        words = state["blip.text_encoder.embeddings.word_embeddings.weight"]
        positions = state["blip.text_encoder.embeddings.position_embeddings.weight"].shape[0]
        intermediate = state["blip.text_encoder.encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as missing:
        raise EvalModelError(f"{name} is not an ImageReward checkpoint: it has no {missing}.") from None
    return ImageRewardConfig(
        image_size=grid * patch_size,
        patch_size=patch_size,
        vision_width=vision_width,
        vision_layers=_count_layers(state, "blip.visual_encoder.blocks."),
        vision_heads=max(1, vision_width // HEAD_WIDTH),
        text_width=words.shape[1],
        text_layers=_count_layers(state, "blip.text_encoder.encoder.layer."),
        text_heads=max(1, words.shape[1] // HEAD_WIDTH),
        text_intermediate=intermediate,
        vocab_size=words.shape[0],
        max_positions=positions,
    )


def _count_layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".", 1)[0] for key in state if key.startswith(prefix)})


def reward_from_features(head: nn.Module, text_cls_features: torch.Tensor) -> torch.Tensor:
    """(N, 768) [CLS] features -> (N,) rewards, normalised as published."""
    return (head(text_cls_features.float())[:, 0] - REWARD_MEAN) / REWARD_STD


class ImageRewardModel(nn.Module):
    def __init__(self, config: ImageRewardConfig = ImageRewardConfig()) -> None:
        from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        super().__init__()
        self.config = config
        self.vision = BlipVisionModel(
            BlipVisionConfig(
                hidden_size=config.vision_width,
                intermediate_size=4 * config.vision_width,
                num_hidden_layers=config.vision_layers,
                num_attention_heads=config.vision_heads,
                image_size=config.image_size,
                patch_size=config.patch_size,
                hidden_act="gelu",
                layer_norm_eps=1e-6,  # BLIP's ViT; transformers' default is 1e-5
            )
        )
        self.text = BlipTextModel(
            BlipTextConfig(
                vocab_size=config.vocab_size,
                hidden_size=config.text_width,
                encoder_hidden_size=config.vision_width,
                intermediate_size=config.text_intermediate,
                num_hidden_layers=config.text_layers,
                num_attention_heads=config.text_heads,
                max_position_embeddings=config.max_positions,
                hidden_act="gelu",
                layer_norm_eps=1e-12,
                is_decoder=True,  # builds the cross-attention layers; forward runs bidirectionally (is_decoder=False)
            ),
            add_pooling_layer=False,
        )
        self.head = ScoreHead(config.text_width)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, S, S) CLIP-normalised, tokens (N, L) -> (N,) rewards."""
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_tokens,
            is_decoder=False,
        ).last_hidden_state
        return reward_from_features(self.head, text[:, 0])


# Published BLIP names -> transformers' BLIP names.
_VISION_RENAMES = (
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
)


def rename_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published checkpoint's tensors under this model's names; other keys (BLIP's projections) are dropped."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            name = key[len("blip.visual_encoder.") :]
            for pattern, replacement in _VISION_RENAMES:
                name, count = re.subn(pattern, replacement, name)
                if count:
                    renamed[f"vision.{name}"] = value
                    break
        elif key.startswith("blip.text_encoder.") and not key.endswith(".position_ids"):
            renamed[f"text.{key[len('blip.text_encoder.') :]}"] = value
        elif key.startswith("mlp.layers."):
            renamed[f"head.{key[len('mlp.') :]}"] = value
    return renamed


def clip_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, 3) in [0, 1] -> (N, 3, size, size): bicubic resize of the short side, centre crop, CLIP mean/std
    (the published preprocessing, on 8-bit images as the published code reads them)."""
    batch = []
    for image in (images[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy():
        picture = Image.fromarray(image)
        width, height = picture.size
        short, long = min(width, height), max(width, height)
        scaled = (size, int(size * long / short))
        picture = picture.resize(scaled if width <= height else scaled[::-1], Image.BICUBIC)
        left = round((picture.size[0] - size) / 2.0)
        top = round((picture.size[1] - size) / 2.0)
        picture = picture.crop((left, top, left + size, top + size))
        batch.append(np.asarray(picture, dtype=np.float32) / 255.0)
    pixels = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
    mean, std = torch.tensor(CLIP_PIXEL_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_PIXEL_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


class ImageRewardScorer:
    """IR of (image, prompt) pairs from a local ImageReward checkpoint and bert-base-uncased's vocab.txt.
    The model's sizes are read from the checkpoint unless `config` is given."""

    def __init__(self, path: str | Path, device: str = "cpu", config: ImageRewardConfig | None = None) -> None:
        from transformers import BertTokenizer

        path = require_file(path, "ImageReward checkpoint", IMAGE_REWARD_FILE)
        vocab = require_file(vocab_path(path), "ImageReward's tokenizer", "bert-base-uncased's vocab.txt")
        self.tokenizer = BertTokenizer(str(vocab), do_lower_case=True)
        # BLIP's tokenizer adds these two; a prompt that contains them is tokenised as the published code does.
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        self.tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        published = read_weights(path, "ImageReward")
        self.config = config or config_from_checkpoint(published, path.name)
        self.model = ImageRewardModel(self.config)
        state = rename_checkpoint(published)
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise EvalModelError(f"{path.name} does not fit the ImageReward model: {error}") from None
        if missing or unexpected:
            raise EvalModelError(
                f"{path.name} is not an ImageReward checkpoint: {len(missing)} tensors missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})."
            )
        self.model.eval().to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(N, H, W, 3) images in [0, 1] and N prompts -> (N,) rewards."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts: give one prompt per image.")
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.config.prompt_tokens, return_tensors="pt"
        )
        pixels = clip_pixels(images, self.config.image_size).to(self.device)
        rewards = self.model(pixels, tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device))
        return rewards.float().cpu()
