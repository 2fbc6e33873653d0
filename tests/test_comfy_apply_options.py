"""Tier 2: the apply nodes' IPAdapter_plus options through the registered nodes, on the tiny SDXL-shaped UNet.

Each patched layer is called as ComfyUI calls it, with a batch of chunks; what the patch adds to the text attention
is compared, chunk by chunk and sample by sample, with the adapter term written out from the checkpoint's tensors
(tokens = LayerNorm(reshape(W x + b)) of the CLIP image embeds, K/V = tokens · W_k/v^T, softmax per head).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from adapter_factories import (
    TINY_SDXL_ATTN2_KEYS,
    TINY_SDXL_BLOCK_OF_LAYER,
    TINY_SDXL_WIDTHS,
    faceid_ip_adapter,
    faceid_plus_v2,
    plain_ip_adapter,
    plus_ip_adapter,
)
from plain_ip_adapter import attention_per_head as plain_attention
from safetensors.torch import save_file

from bolid_core.adapter import Source, load_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEYS, BLOCK_OF_LAYER = TINY_SDXL_ATTN2_KEYS, TINY_SDXL_BLOCK_OF_LAYER
STYLE_LAYER, COMPOSITION_LAYER = BLOCK_OF_LAYER.index(6), BLOCK_OF_LAYER.index(3)  # SDXL blocks 6 and 3
QUERIES, TEXT_TOKENS = 16, 7


def plain_tokens(state: dict, embeds: torch.Tensor) -> torch.Tensor:
    x = F.linear(embeds.float(), state["image_proj.proj.weight"], state["image_proj.proj.bias"])
    x = x.reshape(embeds.shape[0], 4, -1)
    return F.layer_norm(x, x.shape[-1:], state["image_proj.norm.weight"], state["image_proj.norm.bias"], eps=1e-5)


def checkpoint_term(state: dict, layer: int, q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The adapter's attention at one layer for queries q (batch, N, width) and tokens (1 or batch, T, C)."""
    prefix = f"ip_adapter.{2 * layer + 1}"
    k, v = tokens @ state[f"{prefix}.to_k_ip.weight"].T, tokens @ state[f"{prefix}.to_v_ip.weight"].T
    return plain_attention(q, k.expand(q.shape[0], -1, -1), v.expand(q.shape[0], -1, -1), q.shape[-1] // 64)


def adapter_term(model, layer: int, chunks: list[int], per_chunk: int = 1, seed: int = 0):
    """(q, what the patched layer adds to the text attention) for a batch of `chunks` x `per_chunk` latents."""
    patch = model.model_options["transformer_options"]["patches_replace"]["attn2"][KEYS[layer]]
    width, batch = TINY_SDXL_WIDTHS[layer], len(chunks) * per_chunk
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, n, width, generator=g) for n in (QUERIES, TEXT_TOKENS, TEXT_TOKENS))
    options = {
        "n_heads": width // 64, "cond_or_uncond": chunks, "sigmas": torch.full((batch,), 1.0),
        "original_shape": [batch, 4, 4, 4], "block": KEYS[layer][:2], "transformer_index": BLOCK_OF_LAYER[layer],
    }  # fmt: skip
    with torch.no_grad():
        out = patch(q, k, v, options)
    return q, out - plain_attention(q, k, v, width // 64)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=2e-5)


@pytest.fixture()
def plain(tmp_path: Path):
    state = plain_ip_adapter(clip_dim=1024, seed=4)
    path = tmp_path / "ip-adapter_sdxl_vit-h.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return state, load_adapter(path)


@pytest.fixture()
def clip_vision(comfy_path):
    from bolid_test_models.tiny_models import tiny_clip_vision

    return tiny_clip_vision()


class CountingClipVision:
    """A CLIP vision model that records how many images each encode_image call is given."""

    def __init__(self, inner) -> None:
        self.inner, self.sizes = inner, []

    def encode_image(self, image, crop=True):
        self.sizes.append(image.shape[0])
        return self.inner.encode_image(image, crop)


def images(count: int, seed: int, size: int = 64) -> torch.Tensor:
    return torch.rand((count, size, size, 3), generator=torch.Generator().manual_seed(seed))


def apply(comfy_nodes, model, adapter, **inputs):
    numbers = {
        "image_weight": 1.0, "face_weight": 1.0, "body_weight": 1.0, "start_at": 0.0, "end_at": 1.0,
        "faceid_v2_shortcut": 1.0, "combine_references": "average",
    }  # fmt: skip
    (patched,) = comfy_nodes["BoLIDApplyAdapter"].execute(model, adapter, **{**numbers, **inputs}).result
    return patched


def image_embeds_of(clip_vision, pictures: torch.Tensor) -> torch.Tensor:
    return clip_vision.encode_image(pictures).image_embeds.float()


def test_the_negative_image_reaches_only_the_uncond_chunk(comfy_nodes, tiny_model, plain, clip_vision) -> None:
    state, adapter = plain
    reference, negative = images(1, seed=1), images(1, seed=2)
    patched = apply(
        comfy_nodes, tiny_model, adapter, image_weight=0.7, clip_vision=clip_vision, image=reference,
        image_negative=negative,
    )  # fmt: skip
    plain_model = apply(comfy_nodes, tiny_model, adapter, image_weight=0.7, clip_vision=clip_vision, image=reference)
    on = plain_tokens(state, image_embeds_of(clip_vision, reference))
    off = plain_tokens(state, image_embeds_of(clip_vision, negative))
    null = plain_tokens(state, torch.zeros(1, 1024))
    for layer in (0, 4, 10):
        q, added = adapter_term(patched, layer, [1, 0])  # uncond chunk first, as ComfyUI may batch them
        assert close(added[:1], 0.7 * checkpoint_term(state, layer, q[:1], off)), "uncond: the negative's tokens"
        assert close(added[1:], 0.7 * checkpoint_term(state, layer, q[1:], on)), "cond: the reference's tokens"
        q, added = adapter_term(plain_model, layer, [1, 0])
        assert close(added[:1], 0.7 * checkpoint_term(state, layer, q[:1], null)), "no negative: the null input"
        assert not close(null, off)


def test_faceid_plus_negative_replaces_the_black_image_of_its_off_branch(
    comfy_nodes, tiny_model, clip_vision, tmp_path
) -> None:
    from bolid_core.identity.embeds import FaceEmbeds

    state = faceid_plus_v2(context_dim=2048, widths=TINY_SDXL_WIDTHS, clip_dim=1280, depth=1)
    path = tmp_path / "ip-adapter-faceid-plusv2_sdxl.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    adapter = load_adapter(path)
    face = FaceEmbeds(F.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(3)), dim=-1),
                      crops=images(1, seed=4))  # fmt: skip
    negative = images(1, seed=5)
    patched = apply(
        comfy_nodes, tiny_model, adapter, clip_vision=clip_vision, face_embeds=face, image_negative=negative
    )
    (source,) = patched.model_options["transformer_options"]["patches_replace"]["attn2"][KEYS[0]].applied.sources
    project = adapter.projection(Source.FACE)
    hidden = lambda pictures: clip_vision.encode_image(pictures).penultimate_hidden_states.float()  # noqa: E731
    with torch.no_grad():
        expected_off = project(torch.zeros(1, 512), hidden(negative), 1.0)
        expected_on = project(face.arcface, hidden(face.crops), 1.0)
    assert close(source.tokens_off, expected_off) and close(source.tokens_on, expected_on)


def test_unfold_gives_latent_i_reference_i(comfy_nodes, tiny_model, plain, clip_vision) -> None:
    state, adapter = plain
    references = images(2, seed=6)
    patched = apply(
        comfy_nodes, tiny_model, adapter, image_weight=0.9, clip_vision=clip_vision, image=references,
        unfold_batch=True,
    )  # fmt: skip
    per_reference = plain_tokens(state, image_embeds_of(clip_vision, references))
    null = plain_tokens(state, torch.zeros(1, 1024))
    for layer in (2, 10):
        q, added = adapter_term(patched, layer, [0, 1], per_chunk=3)  # 3 latents, 2 references: the last repeats
        for sample, reference in enumerate((0, 1, 1)):
            expected = 0.9 * checkpoint_term(
                state, layer, q[sample : sample + 1], per_reference[reference : reference + 1]
            )
            assert close(added[sample : sample + 1], expected), f"cond latent {sample}"
            uncond = 3 + sample
            assert close(added[uncond : uncond + 1], 0.9 * checkpoint_term(state, layer, q[uncond : uncond + 1], null))
    # Without unfold the two references are one (averaged) reference for every latent.
    averaged = apply(comfy_nodes, tiny_model, adapter, image_weight=0.9, clip_vision=clip_vision, image=references)
    q, added = adapter_term(averaged, 2, [0], per_chunk=2)
    mean_tokens = plain_tokens(state, image_embeds_of(clip_vision, references).mean(0, keepdim=True))
    assert close(added, 0.9 * checkpoint_term(state, 2, q, mean_tokens))


def test_encode_batch_size_bounds_clip_calls_and_gives_the_same_embeds(
    comfy_nodes, tiny_model, plain, clip_vision
) -> None:
    state, adapter = plain
    references = images(5, seed=7)
    tokens = {}
    for batch_size, calls in ((0, [5]), (2, [2, 2, 1]), (4, [4, 1])):
        counting = CountingClipVision(clip_vision)
        patched = apply(
            comfy_nodes, tiny_model, adapter, clip_vision=counting, image=references, combine_references="concat",
            encode_batch_size=batch_size,
        )  # fmt: skip
        assert counting.sizes == calls, batch_size
        (source,) = patched.model_options["transformer_options"]["patches_replace"]["attn2"][KEYS[0]].applied.sources
        tokens[batch_size] = source.tokens_on
    expected = plain_tokens(state, image_embeds_of(clip_vision, references)).reshape(1, -1, 2048)
    assert all(close(t, expected) for t in tokens.values())


def test_image_embeds_input_equals_encoding_the_image(comfy_nodes, tiny_model, plain, clip_vision) -> None:
    from bolid_core.comfy.clip_encoding import encode_images

    state, adapter = plain
    references, negative = images(3, seed=8), images(1, seed=9)
    embeds = encode_images(clip_vision, references, negative=negative)
    from_embeds = apply(comfy_nodes, tiny_model, adapter, image_embeds=embeds, combine_references="norm average")
    from_images = apply(
        comfy_nodes, tiny_model, adapter, clip_vision=clip_vision, image=references, image_negative=negative,
        combine_references="norm average",
    )  # fmt: skip
    raw = image_embeds_of(clip_vision, references)
    norm_average = (raw / raw.norm(dim=0, keepdim=True)).mean(0, keepdim=True)
    for layer in (1, 7):
        q, added = adapter_term(from_embeds, layer, [0, 1])
        assert close(added[:1], checkpoint_term(state, layer, q[:1], plain_tokens(state, norm_average)))
        negative_tokens = plain_tokens(state, image_embeds_of(clip_vision, negative))
        assert close(added[1:], checkpoint_term(state, layer, q[1:], negative_tokens))
        assert close(added, adapter_term(from_images, layer, [0, 1])[1])


def test_style_and_composition_act_only_at_their_blocks(comfy_nodes, tiny_model, plain, clip_vision) -> None:
    state, adapter = plain
    style, composition, negative = images(1, seed=10), images(1, seed=11), images(1, seed=12)
    node = comfy_nodes["BoLIDApplyStyleComposition"]
    style_tokens = plain_tokens(state, image_embeds_of(clip_vision, style))
    composition_tokens = plain_tokens(state, image_embeds_of(clip_vision, composition))
    null = plain_tokens(state, image_embeds_of(clip_vision, negative))
    for expand_style in (False, True):
        (patched,) = node.execute(
            tiny_model, adapter, clip_vision, style, composition, weight_style=0.8, weight_composition=1.3,
            expand_style=expand_style, start_at=0.0, end_at=1.0, combine_references="average",
            embeds_scaling="V only", image_negative=negative,
        ).result  # fmt: skip
        for layer in range(len(KEYS)):
            q, added = adapter_term(patched, layer, [0, 1], seed=layer)
            if layer == COMPOSITION_LAYER:
                cond, uncond = 1.3 * checkpoint_term(state, layer, q[:1], composition_tokens), 1.3
            elif layer == STYLE_LAYER or expand_style:
                cond, uncond = 0.8 * checkpoint_term(state, layer, q[:1], style_tokens), 0.8
            else:
                assert torch.allclose(added, torch.zeros_like(added), atol=2e-5), f"layer {layer} must not change"
                continue
            assert close(added[:1], cond), f"layer {layer}, expand_style {expand_style}"
            assert close(added[1:], uncond * checkpoint_term(state, layer, q[1:], null)), f"layer {layer} uncond"


def test_bad_inputs_give_clear_errors(comfy_nodes, tiny_model, plain, clip_vision, tmp_path) -> None:
    from bolid_core.comfy.clip_encoding import encode_images

    _, adapter = plain
    reference = images(1, seed=13)
    embeds = encode_images(clip_vision, reference)
    with pytest.raises(ValueError, match="Both image and image_embeds are connected"):
        apply(comfy_nodes, tiny_model, adapter, clip_vision=clip_vision, image=reference, image_embeds=embeds)
    with pytest.raises(ValueError, match=r"layer_weights: block index 11 is out of range.*indices 0 to 10"):
        apply(comfy_nodes, tiny_model, adapter, clip_vision=clip_vision, image=reference, layer_weights="0:1, 11:2")
    with pytest.raises(ValueError, match=r"composition_weight is nan"):
        apply(comfy_nodes, tiny_model, adapter, clip_vision=clip_vision, image=reference, composition_weight=math.nan)
    with pytest.raises(ValueError, match=r"precise_boost is inf"):
        apply(comfy_nodes, tiny_model, adapter, clip_vision=clip_vision, image=reference, precise_boost=math.inf)
    node = comfy_nodes["BoLIDApplyAdapter"]
    problem = node.validate_inputs(1.0, 1.0, 1.0, 0.0, 1.0, 1.0, composition_weight=math.nan)
    assert isinstance(problem, str) and "composition_weight is nan" in problem
    with pytest.raises(ValueError, match=r"image_embeds.*negative.*image_negative|carry a negative image"):
        with_negative = encode_images(clip_vision, reference, negative=images(1, seed=14))
        apply(comfy_nodes, tiny_model, adapter, clip_vision=clip_vision, image_embeds=with_negative,
              image_negative=images(1, seed=15))  # fmt: skip

    # A Plus adapter's null input is a black image's hidden states: image embeds alone cannot give it.
    plus_path = tmp_path / "ip-adapter-plus_sdxl_vit-h.safetensors"
    save_file({k: v.contiguous() for k, v in plus_ip_adapter(seed=1).items()}, str(plus_path))
    with pytest.raises(ValueError, match="connect clip_vision, or give image embeds that carry a negative image"):
        apply(comfy_nodes, tiny_model, load_adapter(plus_path), image_embeds=embeds)

    # FaceID reads no CLIP input: a negative image would do nothing, so it is refused.
    from bolid_core.identity.embeds import FaceEmbeds

    faceid_path = tmp_path / "ip-adapter-faceid_sdxl.safetensors"
    save_file({k: v.contiguous() for k, v in faceid_ip_adapter().items()}, str(faceid_path))
    face = FaceEmbeds(F.normalize(torch.randn(1, 512), dim=-1))
    with pytest.raises(ValueError, match="disconnect image_negative"):
        apply(comfy_nodes, tiny_model, load_adapter(faceid_path), face_embeds=face, image_negative=reference)

    from bolid_core.adapter.tokens import ReferenceCombine
    from bolid_core.comfy.sources import SourceInputs, applied_sources

    weights = {Source.IMAGE: 1.0}
    bad_batch = SourceInputs(clip_vision, reference, None, None, weights, 0.0, 1.0, ReferenceCombine.AVERAGE, None,
                             encode_batch_size=-1)  # fmt: skip
    with pytest.raises(ValueError, match=r"encode_batch_size is -1: give 0 \(all at once\) or more"):
        applied_sources(tiny_model, adapter, bad_batch)


def test_precise_boost_left_out_is_the_widget_default(comfy_nodes, tiny_model, plain, clip_vision) -> None:
    """An API workflow without precise_boost means what the editor's widget sends (1.0), not the weight."""
    _, adapter = plain
    reference = images(1, seed=9)
    common = {
        "image_weight": 0.5,
        "clip_vision": clip_vision,
        "image": reference,
        "weight_type": "style transfer precise",
    }
    sources = {}
    for name, extra in (("left out", {}), ("1.0", {"precise_boost": 1.0}), ("0.25", {"precise_boost": 0.25})):
        patched = apply(comfy_nodes, tiny_model, adapter, **common, **extra)
        (sources[name],) = patched.model_options["transformer_options"]["patches_replace"]["attn2"][
            KEYS[0]
        ].applied.sources
    assert sources["left out"].layer_weights == sources["1.0"].layer_weights
    assert sources["left out"].swapped_layers == sources["1.0"].swapped_layers == frozenset({COMPOSITION_LAYER})
    weights = sources["left out"].layer_weights
    assert weights[STYLE_LAYER] == 0.5 and weights[COMPOSITION_LAYER] == 1.0, weights
    assert sources["0.25"].layer_weights[COMPOSITION_LAYER] == 0.25
