"""Tier 2: what each chunk and layer of the adapter patch attends to, checked against attention written out.

Every expected value is computed here from the checkpoint's own tensors (ip_adapter.N.to_k_ip / to_v_ip)
and softmax(Q K^T / sqrt(d)) V per head, never from the patch's helpers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from adapter_factories import TINY_SDXL_WIDTHS, plain_ip_adapter
from plain_ip_adapter import attention_per_head as plain_attention
from safetensors.torch import save_file

from bolid_core.adapter import Source, load_adapter
from bolid_core.adapter.tokens import image_tokens

# The tiny UNet's attn2 layers in IP-Adapter's order: input blocks, output blocks, then the middle block.
IP_ADAPTER_ORDER = [
    ("input", 4, 0), ("input", 5, 0), ("input", 7, 0), ("input", 8, 0),
    ("output", 0, 0), ("output", 1, 0), ("output", 2, 0), ("output", 3, 0), ("output", 4, 0), ("output", 5, 0),
    ("middle", 0, 0),
]  # fmt: skip
HEAD_DIM = 64  # the tiny UNet's num_head_channels
WEIGHT = 0.8


@pytest.fixture()
def checkpoint(tmp_path: Path) -> tuple[dict, Path]:
    """A plain IP-Adapter whose layers all differ, also among layers of the same width."""
    state = plain_ip_adapter(seed=3)
    for layer in range(len(TINY_SDXL_WIDTHS)):
        for kv in ("k", "v"):
            state[f"ip_adapter.{2 * layer + 1}.to_{kv}_ip.weight"] *= 1.0 + 0.25 * layer
    path = tmp_path / "distinct-layers.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return state, path


def checkpoint_kv(state: dict, layer: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of `tokens` at IP-Adapter layer `layer`, straight from the file's tensors."""
    prefix = f"ip_adapter.{2 * layer + 1}"
    return tokens @ state[f"{prefix}.to_k_ip.weight"].T, tokens @ state[f"{prefix}.to_v_ip.weight"].T


def image_source(adapter, weight: float = WEIGHT, mask: torch.Tensor | None = None):
    from bolid_core.comfy.attn2 import AppliedSource

    g = torch.Generator().manual_seed(7)
    on, off = image_tokens(adapter, torch.randn(1, 1280, generator=g) * 3, torch.zeros(1, 1280))
    assert (on - off).abs().max() > 0.1, "on and off tokens must differ for the routing to be visible"
    return AppliedSource(Source.IMAGE, on, off, weight, mask=mask)


def patch_at(model, key):
    return model.model_options["transformer_options"]["patches_replace"]["attn2"][key]


def call_options(cond_or_uncond: list[int], per_chunk: int, heads: int, latent_hw=(16, 16), **extra) -> dict:
    batch = len(cond_or_uncond) * per_chunk
    return {
        "n_heads": heads,
        "cond_or_uncond": cond_or_uncond,
        "sigmas": torch.full((batch,), 3.0),
        "original_shape": [batch, 4, *latent_hw],
        "block": ("output", 2),
        **extra,
    }


def layer_inputs(batch: int, queries: int, width: int, seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, tokens, width, generator=g) for tokens in (queries, 5, 5))


# --- routing of on/off tokens to chunks -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cond_or_uncond", "published", "expected_on"),
    [
        ([0, 1], None, [True, False]),  # CFGGuider: cond 0 positive (identity), cond 1 negative (null)
        ([1, 0], None, [False, True]),  # calc_cond_batch may put the negative first
        ([0, 1], {0: {"id": False}, 1: {"id": True}}, [False, True]),  # a guider's map overrides the default
        ([2, 0, 1], {0: {"id": False}, 1: {"id": False}, 2: {"id": True}}, [True, False, False]),
        ([2, 0, 1], None, [False, True, False]),  # unpublished extra conds get the null tokens
    ],
)
def test_each_chunk_gets_the_tokens_of_its_cond(tiny_model, checkpoint, cond_or_uncond, published, expected_on):
    from bolid_core.comfy.attn2 import SOURCE_SWITCH_KEY, apply_adapter

    state, path = checkpoint
    adapter = load_adapter(path)
    source = image_source(adapter)
    patched = apply_adapter(tiny_model, adapter, [source])
    key, layer = ("output", 2, 0), IP_ADAPTER_ORDER.index(("output", 2, 0))
    width, per_chunk, queries = TINY_SDXL_WIDTHS[layer], 2, 64
    heads = width // HEAD_DIM
    q, k, v = layer_inputs(len(cond_or_uncond) * per_chunk, queries, width)
    extra = {SOURCE_SWITCH_KEY: published} if published is not None else {}
    out = patch_at(patched, key)(q, k, v, call_options(cond_or_uncond, per_chunk, heads, **extra))

    for chunk, on in enumerate(expected_on):
        rows = slice(chunk * per_chunk, (chunk + 1) * per_chunk)
        key_s, value_s = checkpoint_kv(state, layer, source.tokens_on if on else source.tokens_off)
        expected = plain_attention(q[rows], k[rows], v[rows], heads) + WEIGHT * plain_attention(
            q[rows], key_s, value_s, heads
        )
        torch.testing.assert_close(out[rows], expected, rtol=1e-4, atol=1e-5, msg=f"chunk {chunk} (on={on})")


# --- layer mapping ----------------------------------------------------------------------------------------


def test_unet_layer_i_gets_checkpoint_layer_i(tiny_model, checkpoint) -> None:
    from bolid_core.comfy.attn2 import apply_adapter

    state, path = checkpoint
    adapter = load_adapter(path)
    source = image_source(adapter)
    patched = apply_adapter(tiny_model, adapter, [source])
    assert set(patched.model_options["transformer_options"]["patches_replace"]["attn2"]) == set(IP_ADAPTER_ORDER)
    for layer, key in enumerate(IP_ADAPTER_ORDER):
        width = TINY_SDXL_WIDTHS[layer]
        heads = width // HEAD_DIM
        q, k, v = layer_inputs(1, 16, width, seed=layer)
        out = patch_at(patched, key)(q, k, v, call_options([0], 1, heads))
        key_s, value_s = checkpoint_kv(state, layer, source.tokens_on)
        expected = plain_attention(q, k, v, heads) + WEIGHT * plain_attention(q, key_s, value_s, heads)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5, msg=f"{key} is not checkpoint layer {layer}")


# --- mask batches -----------------------------------------------------------------------------------------


def test_mask_batch_goes_per_sample_to_every_chunk(tiny_model, checkpoint) -> None:
    from bolid_core.comfy.attn2 import apply_adapter

    state, path = checkpoint
    adapter = load_adapter(path)
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(2, 16, 16, generator=g)  # at the latent's own size: the resize is the identity
    source = image_source(adapter, mask=masks)
    patched = apply_adapter(tiny_model, adapter, [source])
    key, layer = ("output", 2, 0), IP_ADAPTER_ORDER.index(("output", 2, 0))
    width, per_chunk, queries = TINY_SDXL_WIDTHS[layer], 2, 256
    heads = width // HEAD_DIM
    q, k, v = layer_inputs(2 * per_chunk, queries, width)
    out = patch_at(patched, key)(q, k, v, call_options([1, 0], per_chunk, heads))
    for chunk, on in enumerate([False, True]):
        key_s, value_s = checkpoint_kv(state, layer, source.tokens_on if on else source.tokens_off)
        for sample in range(per_chunk):
            row = slice(chunk * per_chunk + sample, chunk * per_chunk + sample + 1)
            adapter_term = plain_attention(q[row], key_s, value_s, heads) * masks[sample].reshape(1, queries, 1)
            expected = plain_attention(q[row], k[row], v[row], heads) + WEIGHT * adapter_term
            torch.testing.assert_close(out[row], expected, rtol=1e-4, atol=1e-5, msg=f"chunk {chunk}, {sample}")


def sample_batch(model, batch: int = 2, steps: int = 2):
    import comfy.sample
    from bolid_test_models.tiny_models import tiny_conditioning

    latent = torch.zeros((batch, 4, 16, 16))
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(
        model, noise, steps, 4.0, "euler", "normal", tiny_conditioning(1), tiny_conditioning(2), latent
    )


def test_sampling_with_one_mask_per_image(tiny_model, checkpoint) -> None:
    from bolid_core.comfy.attn2 import apply_adapter

    adapter = load_adapter(checkpoint[1])
    left = torch.zeros(1, 128, 128)
    left[..., :64] = 1.0
    off = torch.zeros(1, 128, 128)
    both = apply_adapter(tiny_model, adapter, [image_source(adapter, mask=torch.cat([left, off]))])
    only_left = apply_adapter(tiny_model, adapter, [image_source(adapter, mask=left)])
    mixed, all_left, baseline = (sample_batch(m, steps=1) for m in (both, only_left, tiny_model))
    torch.testing.assert_close(mixed[0], all_left[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[1], baseline[1], rtol=0, atol=1e-5)
    assert (mixed[0] - baseline[0]).abs().max() > 1e-3


def test_a_mask_batch_that_fits_no_latent_batch_is_a_clear_error(tiny_model, checkpoint) -> None:
    from bolid_core.comfy.attn2 import apply_adapter

    adapter = load_adapter(checkpoint[1])
    three = apply_adapter(tiny_model, adapter, [image_source(adapter, mask=torch.ones(3, 32, 32))])
    with pytest.raises(ValueError, match=r"batch of 3 masks but the latent batch is 2: give one mask"):
        sample_batch(three)


# --- model management -------------------------------------------------------------------------------------


def test_repeated_applies_reuse_one_model_patcher(tiny_model, checkpoint, caplog) -> None:
    import comfy.model_management

    from bolid_core.comfy.attn2 import apply_adapter

    adapter = load_adapter(checkpoint[1])
    patched = apply_adapter(tiny_model, adapter, [image_source(adapter, weight=0.5)])
    sample_batch(patched, batch=1, steps=1)
    entries = len(comfy.model_management.current_loaded_models)
    patchers = set()
    with caplog.at_level(logging.INFO):
        for weight in (0.7, 1.1, 1.3):
            patched = apply_adapter(tiny_model, adapter, [image_source(adapter, weight=weight)])
            patchers |= {id(m) for m in patched.model_patches_models() if getattr(m, "model", None) is adapter}
            sample_batch(patched, batch=1, steps=1)
    assert len(patchers) == 1, "each apply wrapped the adapter in a new ModelPatcher"
    assert len(comfy.model_management.current_loaded_models) == entries
    assert not any(loaded.is_dead() for loaded in comfy.model_management.current_loaded_models)
    assert "memory leak" not in caplog.text
