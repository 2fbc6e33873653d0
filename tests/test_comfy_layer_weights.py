"""Tier 2: weight types, per-layer weights, embeds scalings, the precise swap and unfolded batches in the attn2 patch.

On the tiny SDXL-shaped UNet every attn2 call is recorded (a patch wrapping ours); each layer's output is compared
with the text attention of the same call (what the unpatched layer computes) plus the adapter term written out
from the checkpoint's own tensors, softmax per head, never from the patch's helpers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adapter_factories import TINY_SDXL_ATTN2_KEYS, TINY_SDXL_BLOCK_OF_LAYER, TINY_SDXL_WIDTHS, plain_ip_adapter
from plain_ip_adapter import attention_per_head as plain_attention
from safetensors.torch import save_file
from test_layer_weights import BOOSTED, SDXL_TABLE, SWAPPED_BLOCKS

from bolid_core.adapter import Source, load_adapter
from bolid_core.adapter.layer_weights import EmbedsScaling, WeightType, plan_layers, transformer_blocks

KEYS, BLOCK_OF_LAYER = TINY_SDXL_ATTN2_KEYS, TINY_SDXL_BLOCK_OF_LAYER
HEAD_DIM = 64
W, C = 0.8, 0.6  # the tables' weight and composition_weight
TOKENS = 4


@pytest.fixture()
def checkpoint(tmp_path: Path) -> tuple[dict, Path]:
    state = plain_ip_adapter(seed=5)
    for layer in range(len(TINY_SDXL_WIDTHS)):  # every layer distinct, also among layers of one width
        for kv in ("k", "v"):
            state[f"ip_adapter.{2 * layer + 1}.to_{kv}_ip.weight"] *= 1.0 + 0.2 * layer
    path = tmp_path / "layers.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return state, path


def checkpoint_kv(state: dict, layer: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = f"ip_adapter.{2 * layer + 1}"
    return tokens @ state[f"{prefix}.to_k_ip.weight"].T, tokens @ state[f"{prefix}.to_v_ip.weight"].T


def random_tokens(seed: int, references: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """ID tokens and null tokens (a negative image's, so non-zero: a swap shows)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(references, TOKENS, 2048, generator=g), torch.randn(references, TOKENS, 2048, generator=g) * 0.5


class Recorder:
    """Wraps a layer's patch (or the plain attention); keeps the first call's inputs, chunk order and output."""

    def __init__(self, inner, key, log: dict) -> None:
        self.inner, self.key, self.log = inner, key, log

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        if self.inner is None:
            out = optimized_attention(q, k, v, extra_options["n_heads"])
        else:
            out = self.inner(q, k, v, extra_options)
        if self.key not in self.log:
            self.log[self.key] = (q, k, v, list(extra_options["cond_or_uncond"]), extra_options["n_heads"], out)
        return out

    def __deepcopy__(self, memo):
        return self


def record_one_step(model) -> dict:
    import comfy.sample
    from bolid_test_models.tiny_models import tiny_conditioning

    recorded = model.clone()
    existing = recorded.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    log: dict = {}
    for key in KEYS:
        recorded.set_model_attn2_replace(Recorder(existing.get(key), key, log), *key)
    latent = torch.zeros((1, 4, 16, 16))
    noise = comfy.sample.prepare_noise(latent, 0)
    comfy.sample.sample(recorded, noise, 1, 4.0, "euler", "normal", tiny_conditioning(1), tiny_conditioning(2), latent)
    assert set(log) == set(KEYS)
    return log


def apply(model, path: Path, tokens, plan=None, weight=W, **fields):
    from bolid_core.comfy.attn2 import AppliedSource, apply_adapter

    adapter = load_adapter(path)
    if plan is not None:
        fields |= {"layer_weights": plan.weights, "swapped_layers": plan.swapped}
    source = AppliedSource(Source.IMAGE, tokens[0], tokens[1], weight, **fields)
    return apply_adapter(model, adapter, [source])


def expected_term(state, layer, q, chunks, tokens, weight, swapped=False, scaling=EmbedsScaling.V_ONLY, heads=1):
    """What the adapter adds at one layer, chunk by chunk (cond 0: ID tokens, cond 1: null tokens)."""
    per_chunk = q.shape[0] // len(chunks)
    out = torch.zeros_like(q)
    for chunk, cond in enumerate(chunks):
        rows = slice(chunk * per_chunk, (chunk + 1) * per_chunk)
        on = cond == 0
        if swapped and on:
            continue  # precise swap: the ID branch gets nothing here
        key, value = checkpoint_kv(state, layer, tokens[0] if on or swapped else tokens[1])
        w = weight
        if scaling in (EmbedsScaling.K_V_C_PENALTY, EmbedsScaling.K_MEAN_V_C_PENALTY):
            w = weight * key.shape[-1] / 1280
        if scaling == EmbedsScaling.V_ONLY:
            out[rows] = weight * plain_attention(q[rows], key, value, heads)
        elif scaling == EmbedsScaling.K_MEAN_V_C_PENALTY:
            mean = value.sum(dim=1, keepdim=True) / value.shape[1]
            out[rows] = plain_attention(q[rows], key * w, value - mean + mean * w, heads)
        else:
            out[rows] = plain_attention(q[rows], key * w, value * w, heads)
    return out


def check_layers(log, state, tokens, weights, swapped_blocks=frozenset(), scaling=EmbedsScaling.V_ONLY) -> None:
    from comfy.ldm.modules.attention import optimized_attention

    for layer, key in enumerate(KEYS):
        q, k, v, chunks, heads, out = log[key]
        text = optimized_attention(q, k, v, heads)
        weight = weights[BLOCK_OF_LAYER[layer]]
        if weight == 0:
            assert torch.equal(out, text), f"{key} (block {BLOCK_OF_LAYER[layer]}) changed at weight 0"
            continue
        swapped = BLOCK_OF_LAYER[layer] in swapped_blocks
        term = expected_term(state, layer, q, chunks, tokens, weight, swapped, scaling, heads)
        assert (out - text).abs().max() > 1e-4, f"{key} did not change"
        torch.testing.assert_close(out, text + term, rtol=1e-4, atol=1e-5, msg=f"{key} (block {BLOCK_OF_LAYER[layer]})")


def test_tiny_unet_blocks_are_sdxl_blocks(tiny_model) -> None:
    from bolid_core.comfy.attn2 import attn2_layer_keys

    keys = [key for key, _ in attn2_layer_keys(tiny_model)]
    assert keys == KEYS
    assert [block.index for block in transformer_blocks(keys)] == BLOCK_OF_LAYER


@pytest.mark.parametrize("weight_type", list(WeightType))
def test_each_weight_type_changes_exactly_its_layers(tiny_model, checkpoint, weight_type: WeightType) -> None:
    state, path = checkpoint
    tokens = random_tokens(1)
    plan = plan_layers(weight_type, W, transformer_blocks(KEYS), composition_weight=C)
    log = record_one_step(apply(tiny_model, path, tokens, plan))
    check_layers(log, state, tokens, SDXL_TABLE[weight_type.value], SWAPPED_BLOCKS.get((weight_type.value, 11), ()))


@pytest.mark.parametrize("weight_type", ["style transfer precise", "composition precise"])
def test_precise_types_with_a_boost(tiny_model, checkpoint, weight_type: str) -> None:
    state, path = checkpoint
    tokens = random_tokens(2)
    plan = plan_layers(WeightType(weight_type), W, transformer_blocks(KEYS), boost=1.7)
    log = record_one_step(apply(tiny_model, path, tokens, plan))
    check_layers(log, state, tokens, BOOSTED[(weight_type, 11)], SWAPPED_BLOCKS[(weight_type, 11)])


@pytest.mark.parametrize("scaling", list(EmbedsScaling))
def test_each_embeds_scaling_per_layer(tiny_model, checkpoint, scaling: EmbedsScaling) -> None:
    state, path = checkpoint
    tokens = random_tokens(3)
    plan = plan_layers(WeightType.EASE_IN_OUT, 1.3, transformer_blocks(KEYS))
    log = record_one_step(apply(tiny_model, path, tokens, plan, scaling=scaling))
    ease_in_out = [1.3 * (0.05 + 0.95 * (1 - abs(t - 5.5) / 5.5)) for t in range(11)]
    check_layers(log, state, tokens, ease_in_out, scaling=scaling)


def test_layer_weights_text_through_the_unet(tiny_model, checkpoint) -> None:
    state, path = checkpoint
    tokens = random_tokens(4)
    plan = plan_layers(WeightType.EASE_IN, 0.5, transformer_blocks(KEYS), layer_weights="0:1, 4:2.5, 10:-1")
    log = record_one_step(apply(tiny_model, path, tokens, plan, scaling=EmbedsScaling.K_V))
    check_layers(log, state, tokens, [0.5, 0, 0, 0, 1.25, 0, 0, 0, 0, 0, -0.5], scaling=EmbedsScaling.K_V)


def test_a_zero_weight_layer_does_no_work(tiny_model, checkpoint) -> None:
    from bolid_core.comfy.attn2 import AdapterAttentionPatch

    _, path = checkpoint
    plan = plan_layers(WeightType.STYLE_TRANSFER, W, transformer_blocks(KEYS))
    patched = apply(tiny_model, path, random_tokens(5), plan, scaling=EmbedsScaling.K_V_C_PENALTY)
    record_one_step(patched)
    patch = patched.model_options["transformer_options"]["patches_replace"]["attn2"][KEYS[0]]
    assert isinstance(patch, AdapterAttentionPatch)
    computed_layers = {key[0] for key in patch.applied._kv_cache if isinstance(key[0], int)}
    assert computed_layers == {KEYS.index(("output", 1, 0))}  # block 6 alone


def call_options(cond_or_uncond: list[int], per_chunk: int, heads: int, **extra) -> dict:
    batch = len(cond_or_uncond) * per_chunk
    return {
        "n_heads": heads,
        "cond_or_uncond": cond_or_uncond,
        "sigmas": torch.full((batch,), 3.0),
        "original_shape": [batch, 4, 16, 16],
        "block": ("input", 8),
        **extra,
    }


def layer_inputs(batch: int, width: int, seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, tokens, width, generator=g) for tokens in (64, 5, 5))


@pytest.mark.parametrize("cond_or_uncond", [[1, 0], [0, 1]])
@pytest.mark.parametrize("scaling", [EmbedsScaling.V_ONLY, EmbedsScaling.K_MEAN_V_C_PENALTY])
def test_precise_swap_per_chunk(tiny_model, checkpoint, cond_or_uncond, scaling) -> None:
    """At the swapped block the uncond chunk gets exactly w·attn(ID tokens), the cond chunk exactly nothing."""
    from comfy.ldm.modules.attention import optimized_attention

    state, path = checkpoint
    tokens = random_tokens(6)
    plan = plan_layers(WeightType.STYLE_TRANSFER_PRECISE, W, transformer_blocks(KEYS), boost=1.5)
    patched = apply(tiny_model, path, tokens, plan, scaling=scaling)
    patches = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    swapped_layer = KEYS.index(("input", 8, 0))  # block 3
    width, per_chunk = TINY_SDXL_WIDTHS[swapped_layer], 2
    heads = width // HEAD_DIM
    q, k, v = layer_inputs(2 * per_chunk, width)
    out = patches[("input", 8, 0)](q, k, v, call_options(cond_or_uncond, per_chunk, heads))
    text = optimized_attention(q, k, v, heads)
    key, value = checkpoint_kv(state, swapped_layer, tokens[0])
    for chunk, cond in enumerate(cond_or_uncond):
        rows = slice(chunk * per_chunk, (chunk + 1) * per_chunk)
        if cond == 0:
            assert torch.equal(out[rows], text[rows]), "the cond chunk got something at the swapped block"
        elif scaling == EmbedsScaling.V_ONLY:
            expected = text[rows] + 1.5 * plain_attention(q[rows], key, value, heads)
            torch.testing.assert_close(out[rows], expected, rtol=1e-4, atol=1e-5)
        else:
            w = 1.5 * width / 1280
            mean = value.mean(dim=1, keepdim=True)
            expected = text[rows] + plain_attention(q[rows], key * w, value - mean + mean * w, heads)
            torch.testing.assert_close(out[rows], expected, rtol=1e-4, atol=1e-5)


def test_precise_swap_follows_a_guiders_switch(tiny_model, checkpoint) -> None:
    """DCG-style three chunks: both ID-on chunks get nothing at the swapped block, the null chunk the ID tokens;
    with every chunk on, the source does nothing there."""
    from comfy.ldm.modules.attention import optimized_attention

    from bolid_core.comfy.attn2 import SOURCE_SWITCH_KEY

    state, path = checkpoint
    tokens = random_tokens(7)
    plan = plan_layers(WeightType.COMPOSITION_PRECISE, W, transformer_blocks(KEYS))
    patched = apply(tiny_model, path, tokens, plan)
    layer = KEYS.index(("output", 2, 0))  # block 7: swapped by composition precise, weight W·0.1
    width = TINY_SDXL_WIDTHS[layer]
    heads = width // HEAD_DIM
    patch = patched.model_options["transformer_options"]["patches_replace"]["attn2"][("output", 2, 0)]
    q, k, v = layer_inputs(3, width)
    switch = {SOURCE_SWITCH_KEY: {0: {"id": False}, 1: {"id": True}, 2: {"id": True}}}
    out = patch(q, k, v, call_options([2, 0, 1], 1, heads, **switch))
    text = optimized_attention(q, k, v, heads)
    key, value = checkpoint_kv(state, layer, tokens[0])
    assert torch.equal(out[0], text[0]) and torch.equal(out[2], text[2])
    torch.testing.assert_close(out[1:2], text[1:2] + W * 0.1 * plain_attention(q[1:2], key, value, heads))
    all_on = {SOURCE_SWITCH_KEY: {0: {"id": True}, 1: {"id": True}}}
    out = patch(q[:2], k[:2], v[:2], call_options([0, 1], 1, heads, **all_on))
    assert torch.equal(out, optimized_attention(q[:2], k[:2], v[:2], heads))


@pytest.mark.parametrize(("references", "per_chunk"), [(3, 2), (2, 3), (1, 2)])
@pytest.mark.parametrize("scaling", [EmbedsScaling.V_ONLY, EmbedsScaling.K_V])
def test_unfold_gives_latent_i_reference_i(tiny_model, checkpoint, references, per_chunk, scaling) -> None:
    """Sample i of every chunk gets reference min(i, n - 1): extra references unused, the last one repeated."""
    from comfy.ldm.modules.attention import optimized_attention

    state, path = checkpoint
    on, off = random_tokens(8, references)
    off = off[:1]  # one null reference for all latents
    patched = apply(tiny_model, path, (on, off), weight=0.7, unfold=True, scaling=scaling)
    key_name = ("output", 4, 0)
    layer = KEYS.index(key_name)
    width = TINY_SDXL_WIDTHS[layer]
    heads = width // HEAD_DIM
    patch = patched.model_options["transformer_options"]["patches_replace"]["attn2"][key_name]
    for cond_or_uncond in ([1, 0], [0]):
        q, k, v = layer_inputs(len(cond_or_uncond) * per_chunk, width, seed=per_chunk)
        out = patch(q, k, v, call_options(cond_or_uncond, per_chunk, heads))
        text = optimized_attention(q, k, v, heads)
        for chunk, cond in enumerate(cond_or_uncond):
            for sample in range(per_chunk):
                row = chunk * per_chunk + sample
                reference = on[min(sample, references - 1)] if cond == 0 else off[0]
                key, value = checkpoint_kv(state, layer, reference[None])
                w = 0.7
                if scaling == EmbedsScaling.V_ONLY:
                    term = w * plain_attention(q[row : row + 1], key, value, heads)
                else:
                    term = plain_attention(q[row : row + 1], key * w, value * w, heads)
                torch.testing.assert_close(
                    out[row : row + 1], text[row : row + 1] + term, rtol=1e-4, atol=1e-5, msg=f"{cond}, {sample}"
                )


def test_a_plan_for_another_model_is_refused(tiny_model, checkpoint) -> None:
    _, path = checkpoint
    plan = plan_layers(WeightType.LINEAR, W, transformer_blocks(KEYS[:5]))
    with pytest.raises(ValueError, match="has 5 per-layer weights but the model has 11 cross-attention layers"):
        apply(tiny_model, path, random_tokens(9), plan)
