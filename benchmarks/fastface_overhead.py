"""FastFace costs, measured in one run; writes JSON.

    .venv/bin/python -m benchmarks.fastface_overhead --unet full   # SDXL-size UNet, batch 1 latent at 64x64
    .venv/bin/python -m benchmarks.fastface_overhead --unet tiny   # quick run

- DCG step vs CFG step: interleaved whole-step medians (A B A B ...). DCG runs its three branches at every
  step here (alpha 1.5, beta 3 at every step), CFG its two, each batched in one UNet call. Target: <= 1.55x.
- AM1 and AM2 on vs off: inside every patched cross-attention call, the patch with AM and the same patch
  without it run on the same tensors; the difference, summed over a step, is reported as a fraction of
  the unpatched step. Target: each adds at most 2%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from .attention_overhead import RESULTS, PairedPatch, _sync, build_model, patch_model

STEPS = 4


def sample_seconds(guider, device: torch.device) -> float:
    import comfy.samplers

    latent = torch.zeros((1, 4, 64, 64))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    sigmas = guider.model_patcher.get_model_object("model_sampling").sigma_max * torch.linspace(1, 0, STEPS + 1) ** 2
    _sync(device)
    start = time.perf_counter()
    guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=0)
    _sync(device)
    return (time.perf_counter() - start) / STEPS


def cfg_guider(model):
    import comfy.samplers
    from bolid_test_models.tiny_models import tiny_conditioning

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(tiny_conditioning(1), tiny_conditioning(2))
    guider.set_cfg(5.0)
    return guider


def dcg_guider(model):
    from bolid_test_models.tiny_models import tiny_conditioning

    from bolid_core.comfy.dcg_guider import DCGGuider, DCGSettings
    from bolid_core.guidance import DCGVariant

    guider = DCGGuider(model)
    guider.set_conds(tiny_conditioning(1), tiny_conditioning(2))
    guider.set_settings(DCGSettings(DCGVariant.ID_THEN_TEXT, 1.5, 3.0, 0.75))
    return guider


def am_added_seconds(patched, manipulation, device: torch.device, repeats: int) -> list[float]:
    from bolid_core.adapter import Source
    from bolid_core.comfy.attn2 import with_manipulation

    manipulated = with_manipulation(patched, manipulation, {Source.IMAGE})
    plain = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    paired = manipulated.clone()
    options = paired.model_options["transformer_options"]["patches_replace"]["attn2"]
    ledger: list[float] = []
    for key, patch in list(options.items()):
        options[key] = PairedPatch(plain[key], patch, ledger, device)
    per_step = []
    for _ in range(repeats):
        ledger.clear()
        sample_seconds(dcg_guider(paired), device)
        per_step.append(sum(ledger) / STEPS)
    return per_step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only-am", action="store_true", help="skip the DCG vs CFG timings")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from bolid_dev.runtime import import_comfy_in_process

    import_comfy_in_process(cpu=True)
    from bolid_core.attention import am1_preset, am2_preset

    device = torch.device("cpu")
    model = build_model(args.unet, torch.float32)
    patched = patch_model(model, sources=1)
    sample_seconds(cfg_guider(patched), device)  # warm-up
    cfg_steps, dcg_steps, unpatched = [], [], []
    for _ in range(args.repeats):
        unpatched.append(sample_seconds(cfg_guider(model), device))
        if not args.only_am:
            cfg_steps.append(sample_seconds(cfg_guider(patched), device))
            dcg_steps.append(sample_seconds(dcg_guider(patched), device))
    unpatched_median = statistics.median(unpatched)
    am = {}
    for name, manipulation in (("am1", am1_preset()), ("am2", am2_preset())):
        added = am_added_seconds(patched, manipulation, device, args.repeats)
        am[name] = {
            "added_s_per_step": added,
            "added_fraction_of_unpatched_step": statistics.median(added) / unpatched_median,
            "target_fraction": 0.02,
        }
    ratio = statistics.median(dcg_steps) / statistics.median(cfg_steps) if dcg_steps else None
    results = {
        "benchmark": "fastface_overhead",
        "unet": args.unet,
        "latent": [64, 64],
        "steps": STEPS,
        "torch": torch.__version__,
        "unpatched_cfg_step_s": unpatched,
        "cfg_step_s": cfg_steps,
        "dcg_step_s": dcg_steps,
        "dcg_over_cfg_step": ratio,
        "dcg_target": 1.55,
        "am": am,
    }
    suffix = "_am" if args.only_am else ""
    out = args.out or RESULTS / f"fastface_overhead_{args.unet}_cpu{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if ratio is not None:
        print(f"DCG step / CFG step = {ratio:.3f} (target <= 1.55)")
    print(f"unpatched CFG step {unpatched_median:.3f} s")
    for name, entry in am.items():
        print(
            f"{name}: adds {100 * entry['added_fraction_of_unpatched_step']:.2f}% of the unpatched step (target <= 2%)"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
