"""What the adapter attention patch adds to an SDXL UNet step, measured in one run; writes JSON.

    .venv/bin/python -m benchmarks.attention_overhead --unet full   # SDXL-size UNet, ~20 s a step on CPU
    .venv/bin/python -m benchmarks.attention_overhead --unet tiny   # quick run

Four patched runs: two global sources (reference image and body), the same two with a weight type and K+V
scaling (IPAdapter_plus's "ease in-out" and "K+V w/ C penalty": per-layer weights baked into the cached K/V),
one source, and two identities in two regions (FaceStudio's multi-identity attention: each half of the latent
attends to its own face).

Whole-step timings on a shared CPU swing by more than the effect, so the added time is measured
directly: inside every patched cross-attention call, the plain text attention it replaces and the
patched call are timed on the same tensors; their difference, summed over the step, is reported as
a fraction of the unpatched step. Interleaved whole-step medians (A B A B ...) are reported too, and
the cost K/V recomputation at every step would have against K/V precomputed once per prompt.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_FRACTION = 0.015  # two sources, or two identities in two regions, may add at most 1.5 % of the step
TWO_REGIONS = "two_regions"
TWO_WEIGHTED = "two_weighted"  # two sources, weight type "ease in-out", embeds scaling "K+V w/ C penalty"
WITH_TARGET = (2, TWO_WEIGHTED, TWO_REGIONS)
WHAT = {
    TWO_REGIONS: "two identities in two regions",
    TWO_WEIGHTED: "2 global sources, weight type ease in-out, K+V w/ C penalty",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def text_attention(q, k, v, extra_options):
    """What an unpatched layer computes between to_q/k/v and to_out."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))


class PairedPatch:
    """Runs `baseline` and `measured` on the same tensors; records the time `measured` adds; returns its output."""

    def __init__(self, baseline, measured, ledger: list[float], device: torch.device) -> None:
        self.baseline, self.measured, self.ledger, self.device = baseline, measured, ledger, device

    def __call__(self, q, k, v, extra_options):
        _sync(self.device)
        start = time.perf_counter()
        self.baseline(q, k, v, extra_options)
        _sync(self.device)
        middle = time.perf_counter()
        out = self.measured(q, k, v, extra_options)
        _sync(self.device)
        self.ledger.append((time.perf_counter() - middle) - (middle - start))
        return out

    def __deepcopy__(self, memo):
        return self


def build_model(unet: str, dtype: torch.dtype):
    from bolid_test_models.tiny_models import FULL_UNET_CONFIG, TINY_UNET_CONFIG, sdxl_model

    return sdxl_model(FULL_UNET_CONFIG if unet == "full" else TINY_UNET_CONFIG, seed=0, dtype=dtype)


def patch_model(model, run: int | str):
    """The model with a BoLID adapter: `run` global sources (reference image, then body), the two with a weight type
    and K+V scaling (TWO_WEIGHTED), or two identities (face sources) in the left and right halves of the latent;
    4 tokens per source."""
    from bolid_test_models.tiny_models import randomize_

    from bolid_core.adapter import AdapterKind, AdapterSpec, ClipInput, Source, new_bolid_adapter
    from bolid_core.adapter.layer_weights import EmbedsScaling, WeightType, plan_layers, transformer_blocks
    from bolid_core.comfy.attn2 import AppliedSource, RegionLayout, apply_adapter, attn2_layer_keys

    layers = attn2_layer_keys(model)
    widths = tuple(width for _, width in layers)
    regional = run == TWO_REGIONS
    if regional:
        tokens = {Source.FACE: 4}
    else:
        tokens = {Source.IMAGE: 4, Source.BODY: 4} if run in (2, TWO_WEIGHTED) else {Source.IMAGE: 4}
    spec = AdapterSpec(
        AdapterKind.BOLID, 2048, widths, tokens, clip_dim=1280, clip_input=ClipInput.EMBEDS, face_dim=512,
        body_dim=756, fusion_dim=1280 if regional else None,
    )  # fmt: skip
    adapter = randomize_(new_bolid_adapter(spec), seed=1)
    g = torch.Generator().manual_seed(2)
    if not regional:
        weighted = {}
        if run == TWO_WEIGHTED:
            plan = plan_layers(WeightType.EASE_IN_OUT, 1.0, transformer_blocks([key for key, _ in layers]))
            weighted = {"layer_weights": plan.weights, "scaling": EmbedsScaling.K_V_C_PENALTY}
        applied = [
            AppliedSource(source, torch.randn(1, n, 2048, generator=g), torch.zeros(1, n, 2048), 1.0, **weighted)
            for source, n in tokens.items()
        ]
        return apply_adapter(model, adapter, applied)
    applied = [
        AppliedSource(Source.FACE, torch.randn(1, 4, 2048, generator=g), torch.zeros(1, 4, 2048), 1.0, region=i)
        for i in range(2)
    ]
    left = torch.zeros(1, 64, 64)
    left[..., :32] = 1.0
    return apply_adapter(model, adapter, applied, RegionLayout((left, 1.0 - left)))


def one_step(model, latent_hw: tuple[int, int], device: torch.device, dtype: torch.dtype) -> float:
    """One sampler step: CFG with cond and uncond batched, batch 2 through the UNet."""
    import comfy.samplers
    from bolid_test_models.tiny_models import tiny_conditioning

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(tiny_conditioning(1), tiny_conditioning(2))
    guider.set_cfg(5.0)
    latent = torch.zeros((1, 4, *latent_hw))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(3))
    sigmas = torch.tensor([5.0, 0.0])
    sampler = comfy.samplers.sampler_object("euler")
    _sync(device)
    start = time.perf_counter()
    guider.sample(noise, latent, sampler, sigmas, disable_pbar=True, seed=0)
    _sync(device)
    return time.perf_counter() - start


def kv_recompute_seconds(patched, device: torch.device, dtype: torch.dtype) -> float:
    """Per step, what computing every layer's adapter K/V again (for cond and uncond) would cost."""
    patches = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    applied = next(iter(patches.values())).applied
    like = torch.empty(0, device=device, dtype=dtype)
    _sync(device)
    start = time.perf_counter()
    for layer in range(len(patches)):
        for index in range(len(applied.sources)):
            for on in (True, False):
                applied._kv_cache.pop((layer, index, on, like.device, like.dtype, 1), None)
                applied.kv(layer, index, on, like)
    _sync(device)
    return time.perf_counter() - start


def measure(model, unet: str, sources: int | str, repeats: int, device_name: str, dtype_name: str) -> dict:
    device = torch.device(device_name)
    dtype = getattr(torch, dtype_name)
    latent_hw = (128, 128) if device.type == "cuda" and unet == "full" else (64, 64)
    patched = patch_model(model, sources)
    ledger: list[float] = []
    timed = patched.clone()
    options = timed.model_options["transformer_options"]["patches_replace"]["attn2"]
    for key, patch in list(options.items()):
        options[key] = PairedPatch(text_attention, patch, ledger, device)

    one_step(model, latent_hw, device, dtype)  # warm-up: first calls pay for loading and allocation
    one_step(timed, latent_hw, device, dtype)
    unpatched, patched_steps, added = [], [], []
    for _ in range(repeats):
        unpatched.append(one_step(model, latent_hw, device, dtype))
        ledger.clear()
        patched_steps.append(one_step(timed, latent_hw, device, dtype))
        added.append(sum(ledger))
    unpatched_median = statistics.median(unpatched)
    added_median = statistics.median(added)
    kv_seconds = statistics.median(kv_recompute_seconds(patched, device, dtype) for _ in range(3))
    return {
        "unet": unet,
        "sources": sources,
        "what": WHAT.get(sources, f"{sources} global source(s)"),
        "tokens_per_source": 4,
        "latent": list(latent_hw),
        "batch": 2,
        "device": device_name,
        "dtype": dtype_name,
        "attn2_layers": len(options),
        "repeats": repeats,
        "unpatched_step_s": unpatched,
        "patched_step_s": patched_steps,
        "unpatched_step_median_s": unpatched_median,
        "patched_step_median_s": statistics.median(patched_steps),
        "whole_step_ratio": statistics.median(patched_steps) / unpatched_median,
        "added_attention_s_per_step": added,
        "added_attention_median_s": added_median,
        "added_fraction_of_unpatched_step": added_median / unpatched_median,
        "kv_recompute_s_per_step": kv_seconds,
        "kv_recompute_fraction_of_unpatched_step": kv_seconds / unpatched_median,
        "target_fraction": TARGET_FRACTION if sources in WITH_TARGET else None,
        "meets_target": added_median / unpatched_median <= TARGET_FRACTION if sources in WITH_TARGET else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default=None, help="float32 on CPU, float16 on CUDA by default")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    from bolid_dev.runtime import import_comfy_in_process

    import_comfy_in_process(cpu=args.device == "cpu")
    model = build_model(args.unet, getattr(torch, dtype))
    results = {
        "benchmark": "attention_overhead",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "runs": [
            measure(model, args.unet, sources, args.repeats, args.device, dtype)
            for sources in (2, TWO_WEIGHTED, 1, TWO_REGIONS)
        ],
    }
    out = args.out or RESULTS / f"attention_overhead_{args.unet}_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for run in results["runs"]:
        print(
            f"{run['unet']} UNet, {run['what']}: adapter attention adds "
            f"{100 * run['added_fraction_of_unpatched_step']:.2f}% of a {run['unpatched_step_median_s']:.3f} s step; "
            f"whole-step ratio {run['whole_step_ratio']:.3f}; per-step K/V recomputation would add "
            f"{100 * run['kv_recompute_fraction_of_unpatched_step']:.2f}%"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
