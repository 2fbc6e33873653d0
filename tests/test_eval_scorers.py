"""Tier 1: the optional FastFace scorers, AE (LAION aesthetic predictor) and IR (ImageReward), on tiny random
models whose outputs are computed here independently: plain matmuls, and BLIP written out op by op from the
published checkpoint's own tensor names."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from bolid_core.eval.aesthetic import AestheticPredictor
from bolid_core.eval.image_reward import (
    ImageRewardConfig,
    ImageRewardModel,
    ImageRewardScorer,
    config_from_checkpoint,
    rename_checkpoint,
)
from bolid_core.eval.weights import EvalModelError

HEAD_WIDTHS = (1024, 128, 64, 16, 1)
HEAD_INDICES = (0, 2, 4, 6, 7)  # Linear layers among the published Sequential's dropouts


def random_head(input_size: int, prefix: str = "", scale: float = 0.05) -> dict[str, torch.Tensor]:
    state, width = {}, input_size
    for index, out in zip(HEAD_INDICES, HEAD_WIDTHS, strict=True):
        state[f"{prefix}layers.{index}.weight"] = torch.randn(out, width) * scale
        state[f"{prefix}layers.{index}.bias"] = torch.randn(out) * scale
        width = out
    return state


def head_by_hand(state: dict[str, torch.Tensor], x: torch.Tensor, prefix: str = "") -> torch.Tensor:
    for index in HEAD_INDICES:  # no activations: the published head is linear layers and dropouts only
        x = x @ state[f"{prefix}layers.{index}.weight"].T + state[f"{prefix}layers.{index}.bias"]
    return x[:, 0]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_aesthetic_predictor_is_the_mlp_on_normalised_embeddings(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    state = random_head(8)
    path = tmp_path / f"aesthetic{suffix}"
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    embeddings = torch.randn(3, 8) * 5
    expected = head_by_hand(state, embeddings / embeddings.norm(dim=-1, keepdim=True))
    scores = AestheticPredictor(path)(embeddings)
    assert scores.shape == (3,) and torch.allclose(scores, expected, atol=1e-5)
    with pytest.raises(ValueError, match="ViT-L/14"):
        AestheticPredictor(path)(torch.randn(1, 16))


def test_aesthetic_errors_name_the_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"sac\+logos\+ava1-l14-linearMSE\.pth.*" + str(tmp_path)):
        AestheticPredictor(tmp_path / "missing.pth")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(EvalModelError, match="not an aesthetic predictor"):
        AestheticPredictor(tmp_path / "other.safetensors")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_code_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"layers.0.weight": torch.zeros(1024, 8), "payload": _RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(EvalModelError, match="could not be read as plain weights"):
        AestheticPredictor(tmp_path / "evil.pth")
    assert not marker.exists()


def test_image_reward_head_and_normalisation_on_given_features() -> None:
    torch.manual_seed(1)
    from bolid_core.eval.image_reward import reward_from_features

    model = ImageRewardModel(TINY)
    state = random_head(TINY.text_width)
    model.head.load_state_dict(state)
    features = torch.randn(4, TINY.text_width)
    expected = (head_by_hand(state, features) - 0.16717362830052426) / 1.0333394966054072
    assert torch.allclose(reward_from_features(model.head.eval(), features), expected, atol=1e-6)


# --- the whole model on a tiny random config ---------------------------------------------------------------

TINY = ImageRewardConfig(
    image_size=32, patch_size=16, vision_width=32, vision_layers=2, vision_heads=2, text_width=24, text_layers=2,
    text_heads=3, text_intermediate=40, vocab_size=16 + 2, max_positions=40,
)  # fmt: skip
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "oil", "painting", ",", "a", "woman", "in", "park",
         "reading", "man", "the", "sea"]  # fmt: skip


def published_checkpoint(config: ImageRewardConfig) -> dict[str, torch.Tensor]:
    """A random ImageReward checkpoint under the published names (BLIP's ViT and med.py BERT, `mlp.layers`)."""
    width, text, rand = config.vision_width, config.text_width, lambda *shape: torch.randn(*shape) * 0.2
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    state = {
        "blip.visual_encoder.cls_token": rand(1, 1, width),
        "blip.visual_encoder.pos_embed": rand(1, tokens, width),
        "blip.visual_encoder.patch_embed.proj.weight": rand(width, 3, config.patch_size, config.patch_size),
        "blip.visual_encoder.patch_embed.proj.bias": rand(width),
        "blip.visual_encoder.norm.weight": 1 + rand(width),
        "blip.visual_encoder.norm.bias": rand(width),
        "blip.text_encoder.embeddings.word_embeddings.weight": rand(config.vocab_size, text),
        "blip.text_encoder.embeddings.position_embeddings.weight": rand(config.max_positions, text),
        "blip.text_encoder.embeddings.LayerNorm.weight": 1 + rand(text),
        "blip.text_encoder.embeddings.LayerNorm.bias": rand(text),
        "blip.text_encoder.embeddings.position_ids": torch.arange(config.max_positions)[None],
        "blip.vision_proj.weight": rand(8, width),  # BLIP's retrieval projections: in the file, unused by IR
        "blip.text_proj.weight": rand(8, text),
    }
    for i in range(config.vision_layers):
        block = f"blip.visual_encoder.blocks.{i}."
        for name in ("norm1", "norm2"):
            state[f"{block}{name}.weight"], state[f"{block}{name}.bias"] = 1 + rand(width), rand(width)
        for name, out, inp in (("attn.qkv", 3 * width, width), ("attn.proj", width, width),
                               ("mlp.fc1", 4 * width, width), ("mlp.fc2", width, 4 * width)):  # fmt: skip
            state[f"{block}{name}.weight"], state[f"{block}{name}.bias"] = rand(out, inp), rand(out)
    for i in range(config.text_layers):
        layer = f"blip.text_encoder.encoder.layer.{i}."
        shapes = [("attention.self.query", text, text), ("attention.self.key", text, text),
                  ("attention.self.value", text, text), ("attention.output.dense", text, text),
                  ("crossattention.self.query", text, text), ("crossattention.self.key", text, width),
                  ("crossattention.self.value", text, width), ("crossattention.output.dense", text, text),
                  ("intermediate.dense", config.text_intermediate, text),
                  ("output.dense", text, config.text_intermediate)]  # fmt: skip
        for name, out, inp in shapes:
            state[f"{layer}{name}.weight"], state[f"{layer}{name}.bias"] = rand(out, inp), rand(out)
        for name in ("attention.output.LayerNorm", "crossattention.output.LayerNorm", "output.LayerNorm"):
            state[f"{layer}{name}.weight"], state[f"{layer}{name}.bias"] = 1 + rand(text), rand(text)
    state.update(random_head(text, prefix="mlp.", scale=0.2))
    return state


def _layer_norm(x: torch.Tensor, state: dict, name: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps)


def _linear(x: torch.Tensor, state: dict, name: str) -> torch.Tensor:
    return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias: torch.Tensor | float = 0.0):
    n, lq, d = q.shape
    split = lambda t: t.reshape(n, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads) + bias
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(n, lq, d)


def blip_reward_by_hand(state: dict, config: ImageRewardConfig, pixels: torch.Tensor, ids, mask) -> torch.Tensor:
    """BLIP's ViT, med.py's BERT encoder with cross-attention, and ImageReward's head, written out plainly."""
    v = "blip.visual_encoder."
    x = F.conv2d(pixels, state[f"{v}patch_embed.proj.weight"], state[f"{v}patch_embed.proj.bias"],
                 stride=config.patch_size).flatten(2).transpose(1, 2)  # fmt: skip
    x = torch.cat([state[f"{v}cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + state[f"{v}pos_embed"]
    for i in range(config.vision_layers):
        b = f"{v}blocks.{i}."
        q, k, val = _linear(_layer_norm(x, state, f"{b}norm1", 1e-6), state, f"{b}attn.qkv").chunk(3, dim=-1)
        x = x + _linear(_attention(q, k, val, config.vision_heads), state, f"{b}attn.proj")
        hidden = F.gelu(_linear(_layer_norm(x, state, f"{b}norm2", 1e-6), state, f"{b}mlp.fc1"))
        x = x + _linear(hidden, state, f"{b}mlp.fc2")
    image_tokens = _layer_norm(x, state, f"{v}norm", 1e-6)

    t = "blip.text_encoder."
    h = (
        state[f"{t}embeddings.word_embeddings.weight"][ids]
        + state[f"{t}embeddings.position_embeddings.weight"][: ids.shape[1]]
    )
    h = _layer_norm(h, state, f"{t}embeddings.LayerNorm", 1e-12)
    padding = (1.0 - mask[:, None, None, :].float()) * -10000.0  # med.py's extended attention mask
    for i in range(config.text_layers):
        layer = f"{t}encoder.layer.{i}."
        a = f"{layer}attention."
        q, k, val = (_linear(h, state, f"{a}self.{n}") for n in ("query", "key", "value"))
        ctx = _attention(q, k, val, config.text_heads, padding)
        h = _layer_norm(_linear(ctx, state, f"{a}output.dense") + h, state, f"{a}output.LayerNorm", 1e-12)
        c = f"{layer}crossattention."
        q = _linear(h, state, f"{c}self.query")
        k, val = _linear(image_tokens, state, f"{c}self.key"), _linear(image_tokens, state, f"{c}self.value")
        ctx = _attention(q, k, val, config.text_heads)
        h = _layer_norm(_linear(ctx, state, f"{c}output.dense") + h, state, f"{c}output.LayerNorm", 1e-12)
        inner = F.gelu(_linear(h, state, f"{layer}intermediate.dense"))
        h = _layer_norm(_linear(inner, state, f"{layer}output.dense") + h, state, f"{layer}output.LayerNorm", 1e-12)
    return (head_by_hand(state, h[:, 0], prefix="mlp.") - 0.16717362830052426) / 1.0333394966054072


def published_pixels(image: np.ndarray, size: int) -> torch.Tensor:
    """ImageReward's own transform: Resize(size, bicubic), CenterCrop(size), ToTensor, CLIP Normalize."""
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])  # fmt: skip
    return transform(Image.fromarray(image))[None]


def test_image_reward_loads_a_published_layout_checkpoint_and_scores_as_blip(tmp_path: Path) -> None:
    torch.manual_seed(2)
    state = published_checkpoint(TINY)
    torch.save(state, tmp_path / "ImageReward.pt")
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    scorer = ImageRewardScorer(tmp_path / "ImageReward.pt", config=TINY)

    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)  # short side 40 -> 32, then a centre crop
    tall = rng.integers(0, 256, (50, 32, 3), dtype=np.uint8)
    prompts = ["Oil painting ; a woman, in a park, reading", "the man ; the sea"]
    # bert-base-uncased tokens, by hand: lower-cased, ';' unknown, padded to 35 with [PAD] = 0.
    ids = [[2, 5, 6, 1, 8, 9, 7, 10, 8, 11, 7, 12, 3], [2, 14, 13, 1, 14, 15, 3]]
    ids = torch.tensor([row + [0] * (35 - len(row)) for row in ids])
    mask = (ids != 0).long()
    for image, prompt, row, row_mask in zip((wide, tall), prompts, ids, mask, strict=True):
        expected = blip_reward_by_hand(state, TINY, published_pixels(image, 32), row[None], row_mask[None])
        got = scorer(torch.from_numpy(image).float()[None] / 255.0, [prompt])
        assert got.shape == (1,) and torch.allclose(got, expected, atol=1e-4), (got, expected)
    both = scorer(torch.from_numpy(np.stack([wide[:, :40], wide[:, 8:]])).float() / 255.0, prompts)
    expected = blip_reward_by_hand(
        state, TINY, torch.cat([published_pixels(wide[:, :40], 32), published_pixels(wide[:, 8:], 32)]), ids, mask
    )
    assert torch.allclose(both, expected, atol=1e-4), "a batch pads each prompt to 35 and masks the padding"


def test_image_reward_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"ImageReward\.pt .*" + str(tmp_path)):
        ImageRewardScorer(tmp_path / "ImageReward.pt", config=TINY)
    state = published_checkpoint(TINY)
    torch.save(state, tmp_path / "ImageReward.pt")
    with pytest.raises(FileNotFoundError, match=r"vocab\.txt.*bert-base-uncased"):
        ImageRewardScorer(tmp_path / "ImageReward.pt", config=TINY)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    del state["blip.visual_encoder.blocks.1.mlp.fc2.bias"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(EvalModelError, match="not an ImageReward checkpoint: 1 tensors missing"):
        ImageRewardScorer(tmp_path / "partial.pt", config=TINY)
    with pytest.raises(EvalModelError, match="does not fit the ImageReward model"):
        ImageRewardScorer(tmp_path / "ImageReward.pt", config=replace(TINY, vision_width=64))


def test_published_config_takes_the_published_shapes() -> None:
    """The real ImageReward.pt shapes (BLIP ViT-L/16 at 224, BERT-base, 30524 tokens) fit the default config."""
    with torch.device("meta"):
        model = ImageRewardModel()
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    published = {
        "blip.visual_encoder.pos_embed": (1, 197, 1024),
        "blip.visual_encoder.cls_token": (1, 1, 1024),
        "blip.visual_encoder.patch_embed.proj.weight": (1024, 3, 16, 16),
        "blip.visual_encoder.blocks.23.attn.qkv.weight": (3072, 1024),
        "blip.visual_encoder.norm.weight": (1024,),
        "blip.text_encoder.embeddings.word_embeddings.weight": (30524, 768),
        "blip.text_encoder.encoder.layer.11.crossattention.self.key.weight": (768, 1024),
        "mlp.layers.0.weight": (1024, 768),
        "mlp.layers.7.weight": (1, 16),
    }
    renamed = rename_checkpoint({key: torch.empty(shape, device="meta") for key, shape in published.items()})
    assert len(renamed) == len(published)
    assert all(ours[key] == tuple(value.shape) for key, value in renamed.items())
    with torch.device("meta"):
        full = published_checkpoint(ImageRewardConfig())
    assert config_from_checkpoint(full, "ImageReward.pt") == ImageRewardConfig()
    renamed = rename_checkpoint(full)
    assert {key: tuple(value.shape) for key, value in renamed.items()} == ours, "every tensor, by name and shape"


def test_sizes_are_read_from_the_checkpoint(tmp_path: Path) -> None:
    inferred = replace(TINY, vision_heads=1, text_heads=1)  # widths under 64 take one head
    assert config_from_checkpoint(published_checkpoint(TINY), "x") == inferred
    sixty_four = replace(TINY, vision_width=128, vision_heads=2, text_width=64, text_heads=1)
    assert config_from_checkpoint(published_checkpoint(sixty_four), "x") == sixty_four
    with pytest.raises(EvalModelError, match=r"not an ImageReward checkpoint: it has no 'blip\.visual_encoder"):
        config_from_checkpoint(random_head(8, prefix="mlp."), "ImageReward.pt")
