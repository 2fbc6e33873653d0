"""Tier 2: the adapter attn2 patch on a tiny SDXL UNet in a real ModelPatcher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adapter_factories import plain_ip_adapter
from safetensors.torch import save_file

from bolid_core.adapter import AdapterFormatError, Source, load_adapter
from bolid_core.adapter.tokens import image_tokens


@pytest.fixture()
def adapter_file(tmp_path: Path):
    def make(seed: int = 0, context_dim: int = 2048, **kwargs) -> Path:
        path = tmp_path / f"adapter-{seed}-{context_dim}.safetensors"
        state = plain_ip_adapter(context_dim=context_dim, seed=seed, **kwargs)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return path

    return make


def applied_source(adapter, weight: float, seed: int = 5, **kwargs):
    from bolid_core.comfy.attn2 import AppliedSource

    g = torch.Generator().manual_seed(seed)
    on, off = image_tokens(adapter, torch.randn(1, 1280, generator=g) * 3, torch.zeros(1, 1280))
    return AppliedSource(Source.IMAGE, on, off, weight, **kwargs)


def layer_call_options(sigma: float) -> dict:
    """What ComfyUI passes an attn2 patch for a batch of [uncond, cond] on a 16x16 latent."""
    return {
        "n_heads": 2,
        "cond_or_uncond": [1, 0],
        "sigmas": torch.tensor([sigma, sigma]),
        "original_shape": [2, 4, 16, 16],
    }


def sample(model, latent_hw=(16, 16), steps=2, seed=0):
    import comfy.sample
    from bolid_test_models.tiny_models import tiny_conditioning

    latent = torch.zeros((1, 4, *latent_hw))
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(
        model, noise, steps, 4.0, "euler", "normal", tiny_conditioning(1), tiny_conditioning(2), latent
    )


def test_patch_changes_output_zero_weight_is_baseline_and_nothing_leaks(tiny_model, adapter_file) -> None:
    from bolid_core.comfy.attn2 import apply_adapter

    adapter = load_adapter(adapter_file())
    baseline = sample(tiny_model)
    patched = apply_adapter(tiny_model, adapter, [applied_source(adapter, 1.0)])
    assert (sample(patched) - baseline).abs().max() > 1e-3
    zero = apply_adapter(tiny_model, adapter, [applied_source(adapter, 0.0)])
    torch.testing.assert_close(sample(zero), baseline, rtol=0, atol=1e-5)
    assert torch.equal(sample(tiny_model), baseline), "the unpatched model changed"
    assert "patches_replace" not in tiny_model.model_options["transformer_options"]


def test_keys_come_from_the_model_and_weights_are_visible_to_model_management(tiny_model, adapter_file) -> None:
    from bolid_core.comfy.attn2 import AdapterAttentionPatch, apply_adapter, attn2_layer_keys

    keys = [key for key, _ in attn2_layer_keys(tiny_model)]
    assert keys[:4] == [("input", 4, 0), ("input", 5, 0), ("input", 7, 0), ("input", 8, 0)]
    assert keys[-1] == ("middle", 0, 0) and len(keys) == 11
    adapter = load_adapter(adapter_file())
    patched = apply_adapter(tiny_model, adapter, [applied_source(adapter, 1.0)])
    patches = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(patches) == set(keys) and all(isinstance(p, AdapterAttentionPatch) for p in patches.values())
    extra = patched.model_patches_models()
    assert any(getattr(m, "model", None) is adapter for m in extra), "adapter weights hidden from model management"
    assert patched.clone().model_options["transformer_options"]["patches_replace"]["attn2"][keys[0]] is patches[keys[0]]


def test_stacked_patches_add_their_contributions(tiny_model, adapter_file) -> None:
    from comfy.ldm.modules.attention import optimized_attention

    from bolid_core.comfy.attn2 import apply_adapter

    first, second = load_adapter(adapter_file(0)), load_adapter(adapter_file(1))
    one = apply_adapter(tiny_model, first, [applied_source(first, 0.7, seed=3)])
    both = apply_adapter(one, second, [applied_source(second, 1.2, seed=4)])
    only_second = apply_adapter(tiny_model, second, [applied_source(second, 1.2, seed=4)])
    key = ("output", 2, 0)
    patch = lambda m: m.model_options["transformer_options"]["patches_replace"]["attn2"][key]  # noqa: E731
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(2, 64, 128, generator=g) for _ in range(3))
    extra = layer_call_options(sigma=5.0)
    text = optimized_attention(q, k, v, 2)
    expected = patch(one)(q, k, v, extra) + patch(only_second)(q, k, v, extra) - text
    torch.testing.assert_close(patch(both)(q, k, v, extra), expected, rtol=1e-5, atol=1e-5)
    # Stacking left the first model's patch as it was.
    assert patch(one).inner is None


def test_mask_window_and_switch(tiny_model, adapter_file) -> None:
    from bolid_core.comfy.attn2 import SOURCE_SWITCH_KEY, AppliedSource, apply_adapter

    adapter = load_adapter(adapter_file())
    odd = (13, 9)  # the UNet's levels are 7x5 and 4x3: masks must land on those grids
    baseline = sample(tiny_model, latent_hw=odd)
    masked_out = apply_adapter(tiny_model, adapter, [applied_source(adapter, 1.0, mask=torch.zeros(1, 104, 72))])
    torch.testing.assert_close(sample(masked_out, latent_hw=odd), baseline, rtol=0, atol=1e-5)
    half = torch.zeros(1, 104, 72)
    half[:, :, :36] = 1.0
    masked_half = apply_adapter(tiny_model, adapter, [applied_source(adapter, 1.0, mask=half)])
    assert (sample(masked_half, latent_hw=odd) - baseline).abs().max() > 1e-3

    outside = apply_adapter(tiny_model, adapter, [applied_source(adapter, 1.0, sigma_start=1e-4, sigma_end=0.0)])
    torch.testing.assert_close(sample(outside), sample(tiny_model), rtol=0, atol=1e-5)

    # A published switch turns the ID off for every cond: same as giving the null tokens to both.
    source = applied_source(adapter, 1.0)
    switched = apply_adapter(tiny_model, adapter, [source])
    switched.model_options["transformer_options"][SOURCE_SWITCH_KEY] = {0: {"id": False}, 1: {"id": False}}
    null_everywhere = AppliedSource(Source.IMAGE, source.tokens_off, source.tokens_off, 1.0)
    reference = apply_adapter(tiny_model, adapter, [null_everywhere])
    torch.testing.assert_close(sample(switched), sample(reference), rtol=0, atol=1e-6)


def test_adapter_for_another_model_is_refused(tiny_model, adapter_file) -> None:
    from bolid_core.comfy.attn2 import apply_adapter

    sd15 = load_adapter(adapter_file(context_dim=768, widths=(320,) * 16, clip_dim=1024))
    with pytest.raises(AdapterFormatError, match=r"made for SD1\.5 \(text width 768\)"):
        apply_adapter(tiny_model, sd15, [])
    # SDXL's 70 layers, narrow: the count is refused before any width is read.
    seventy_layers = load_adapter(adapter_file(widths=(64,) * 70))
    with pytest.raises(AdapterFormatError, match="has 70 cross-attention layers; the model has 11"):
        apply_adapter(tiny_model, seventy_layers, [])


class ForeignPatch:
    """Another pack's attn2 patch: text attention plus a contribution of its own."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        self.calls += 1
        return optimized_attention(q, k, v, extra_options["n_heads"]) + 0.25 * q


def test_stacks_on_a_foreign_patch_without_touching_it(tiny_model, adapter_file) -> None:
    from bolid_core.comfy.attn2 import apply_adapter, attn2_layer_keys

    foreign = tiny_model.clone()
    for key, _ in attn2_layer_keys(foreign):
        foreign.set_model_attn2_replace(ForeignPatch(), *key)
    before = dict(foreign.model_options["transformer_options"]["patches_replace"]["attn2"])
    adapter = load_adapter(adapter_file())
    stacked = apply_adapter(foreign, adapter, [applied_source(adapter, 1.0)])
    assert foreign.model_options["transformer_options"]["patches_replace"]["attn2"] == before
    key = ("input", 7, 0)
    ours = stacked.model_options["transformer_options"]["patches_replace"]["attn2"][key]
    alone = apply_adapter(tiny_model, adapter, [applied_source(adapter, 1.0)])
    ours_alone = alone.model_options["transformer_options"]["patches_replace"]["attn2"][key]
    g = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, 16, 128, generator=g) for _ in range(3))
    extra = layer_call_options(sigma=3.0)
    # foreign + ours = (text + 0.25 q) + (ours alone - text)
    torch.testing.assert_close(ours(q, k, v, extra), ours_alone(q, k, v, extra) + 0.25 * q, rtol=1e-5, atol=1e-5)
    assert ours.inner.calls == 1 and isinstance(ours.inner, ForeignPatch)
    assert (sample(stacked) - sample(foreign)).abs().max() > 1e-3
