"""Tier 2: on ComfyUI's full SDXL UNet (70 attn2 layers), every SDXL preset's default options equal IP-Adapter's
formulas written plainly (tests/plain_ip_adapter.py): the tokens, each layer's attention output, the UNet output.

Random weights (seeded), fp32, one 16x16 latent in two chunks (uncond first, routed by cond_or_uncond), a short
context. Adapters are random state dicts in the published layouts at full SDXL widths, saved and read by the pack's
loader; the CLIP and ArcFace encoders are stood in for by fixed features, so the pack and the formulas read the same
numbers. Measured: 2 min 36 s on a shared two-core machine (one torch thread), peak 16.4 GB resident.
"""

from __future__ import annotations

import gc
from pathlib import Path

import plain_ip_adapter as plain
import psutil
import pytest
import torch
from full_sdxl_factories import (
    FULL_SDXL_MEMORY_GB,
    PRESETS,
    SD15_ONLY_PRESETS,
    features,
    full_sdxl_model,
    pack_applied_sources,
    preset_state,
    reference_tokens,
    relative_difference,
    run_side_by_side,
    save_fp16,
    shared_kv,
    unet_inputs,
)

pytestmark = pytest.mark.skipif(
    psutil.virtual_memory().available < FULL_SDXL_MEMORY_GB * 2**30,
    reason=f"a full-size SDXL UNet in fp32 needs about {FULL_SDXL_MEMORY_GB} GB of free memory",
)

UNET_TOLERANCE = 1e-4  # the bound, relative to the output's largest value
LAYER_TOLERANCE = 1e-5  # one layer, same q/k/v: the tokens' rounding (below) and the attentions' summation order
# The pack's projections run torch's fused Linear/LayerNorm/SDPA kernels, the formulas plain matrix products and an
# explicit softmax: equal up to fp32 rounding, which the resamplers' 4 residual layers at width 1280-2048 build up.
TOKEN_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def sdxl(comfy_path: Path):
    """The full UNet, on one torch thread: its forward is memory-bound, and on a shared machine a second OpenMP
    thread spinning against other processes made it 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = full_sdxl_model(seed=0)
    yield model
    del model
    gc.collect()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def kv(sdxl) -> dict:
    from bolid_core.comfy.attn2 import attn2_layer_keys

    widths = tuple(width for _, width in attn2_layer_keys(sdxl))
    assert len(widths) == 70
    return shared_kv(widths)


class ComparedLayer:
    """The pack's patch, and beside it the plain formula on the same q, k, v: records their difference and the
    adapter part's share of the output; returns the pack's output."""

    def __init__(self, ours, reference: plain.PlainDecoupledAttention, record: list) -> None:
        self.ours, self.reference, self.record = ours, reference, record

    def __call__(self, q, k, v, extra_options):
        out = self.ours(q, k, v, extra_options)
        expected = self.reference(q, k, v, extra_options)
        adapter_part = self.reference.ip_attention(q, extra_options)
        scale = float(expected.abs().max())
        self.record.append((relative_difference(out, expected), float(adapter_part.abs().max()) / scale))
        return out


def _patches(model) -> dict:
    return model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})


def test_sd15_only_presets_are_named() -> None:
    """light and full face exist only for SD1.5: there is no SDXL file to compare (listed so the skip is explicit)."""
    assert set(SD15_ONLY_PRESETS) == {"light", "full face"}
    assert not {preset.name for preset in PRESETS} & set(SD15_ONLY_PRESETS)


@pytest.mark.parametrize("preset", PRESETS, ids=[preset.name for preset in PRESETS])
def test_preset_defaults_equal_the_formulas_on_all_70_layers(sdxl, kv, preset, tmp_path) -> None:
    from bolid_core.adapter import load_adapter
    from bolid_core.comfy.attn2 import apply_adapter

    keys = plain.sdxl_attn2_keys()
    seed = PRESETS.index(preset)
    state = preset_state(preset, kv, 100 + seed)
    path = tmp_path / preset.file_name
    save_fp16(state, path)
    fed = features(preset, 200 + seed)

    with torch.inference_mode():
        adapter = load_adapter(path)
        path.unlink()
        (source,) = pack_applied_sources(sdxl, adapter, preset, fed)
        expected_on, expected_off = reference_tokens(preset, state, fed)
        assert source.tokens_on.shape == expected_on.shape and source.tokens_off.shape == expected_off.shape
        assert relative_difference(source.tokens_on, expected_on) <= TOKEN_TOLERANCE
        assert relative_difference(source.tokens_off, expected_off) <= TOKEN_TOLERANCE

        patched = apply_adapter(sdxl, adapter, [source])
        assert set(_patches(patched)) == set(keys), "the patch must cover all 70 layers, ('middle', 0, i) included"

        # The formulas take the reference tokens: a difference in the projections would show here as well.
        records = {key: [] for key in keys}
        runs = {}
        for layer, key in enumerate(keys):
            reference = plain.PlainDecoupledAttention(state, layer, expected_on, expected_off, weight=1.0)
            runs[key] = [None, ComparedLayer(_patches(patched)[key], reference, records[key]), reference]
        unpatched, ours, expected = run_side_by_side(sdxl, unet_inputs(seed=7), runs)
        del patched, runs

    assert all(len(calls) == 1 for calls in records.values()), {k: len(v) for k, v in records.items() if len(v) != 1}
    worst = max(records, key=lambda key: records[key][0][0])
    assert records[worst][0][0] <= LAYER_TOLERANCE, f"{worst}: {records[worst][0][0]:.2e}"
    # Every layer's adapter part is far above the tolerance: a skipped or mis-weighted layer cannot pass.
    quietest = min(records, key=lambda key: records[key][0][1])
    assert records[quietest][0][1] > 100 * LAYER_TOLERANCE, f"{quietest}: adapter share {records[quietest][0][1]:.2e}"
    assert relative_difference(ours, expected) <= UNET_TOLERANCE
    assert relative_difference(ours, unpatched) > 100 * UNET_TOLERANCE  # the adapter does move the output

    del adapter, state
    gc.collect()
