"""Dev check, not CI (it needs IPAdapter_plus's code, which CI cannot download): the pack against the real peer.

    mkdir -p /tmp/peer/ComfyUI_IPAdapter_plus
    git -C <mirror of cubiq/ComfyUI_IPAdapter_plus> archive HEAD | tar -x -C /tmp/peer/ComfyUI_IPAdapter_plus
    .venv/bin/python -m bolid_dev.peer_equivalence --peer /tmp/peer/ComfyUI_IPAdapter_plus [--peer-revision SHA]

On ComfyUI's full SDXL UNet (random weights, fp32, ~11 GB of memory), for each SDXL preset's default options, the
same random adapter file (published layout, full widths) is applied by the peer's ipadapter_execute and by the pack,
with the same CLIP features and ArcFace embedding fed to both (the encoders are stood in for). Compared: the ID and
null tokens; each of the 70 layers' patch outputs on the same q, k, v; the UNet outputs (and both against the plain
formulas of tests/plain_ip_adapter.py). The peer registers SDXL's middle layers as ("middle", 1, i), which ComfyUI
never looks up, so on ComfyUI it silently skips them; here its middle patches are moved to ("middle", 0, i) so that
its maths is compared on all 70 layers, its bug set aside. Writes docs/peer_equivalence.json.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import psutil
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "docs" / "peer_equivalence.json"
# ArcFace's five-point template (112 px), doubled: where the stand-in face detector puts the landmarks.
FACE_LANDMARKS = 2 * np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]])


def _import_peer(peer: Path):
    """The peer's package, imported inside this ComfyUI as ComfyUI imports a custom node."""
    sys.path.insert(0, str(peer.parent))
    importlib.import_module(peer.name)
    module = importlib.import_module(f"{peer.name}.IPAdapterPlus")
    # Its CLIP-vision encoding, given our stand-in encoder: the same features reach the peer and the pack.
    module.encode_image_masked = lambda clip_vision, image, *args, **kwargs: clip_vision.outputs(image)
    return module


class FedFaceAnalysis:
    """Stands in for insightface's FaceAnalysis in the peer: one face with the given ArcFace embedding."""

    def __init__(self, arcface: torch.Tensor) -> None:
        self.det_model = types.SimpleNamespace(input_size=(640, 640))
        self.arcface = arcface[0].numpy().astype(np.float32)

    def get(self, image):
        return [types.SimpleNamespace(normed_embedding=self.arcface, embedding=self.arcface, kps=FACE_LANDMARKS)]


def _layer_kind(key) -> str:
    return key[0]


class ComparedLayer:
    """The pack's patch, and beside it the peer's and the plain formula's on the same q, k, v; returns the pack's."""

    def __init__(self, ours, peer, plain, record: dict) -> None:
        self.ours, self.peer, self.plain, self.record = ours, peer, plain, record

    def __call__(self, q, k, v, extra_options):
        from full_sdxl_factories import relative_difference

        out = self.ours(q, k, v, extra_options)
        self.record["ours_vs_peer"] = relative_difference(out, self.peer(q, k, v, extra_options))
        self.record["ours_vs_formulas"] = relative_difference(out, self.plain(q, k, v, extra_options))
        return out


# A few non-default options, compared with the peer only (the plain formulas cover the defaults).
OPTION_SETS = (
    ("standard", "ease in", "K+V"),
    ("standard", "strong style transfer", "K+V w/ C penalty"),
    ("plus", "style transfer precise", "K+mean(V) w/ C penalty"),
    ("faceid plus v2", "weak middle", "K+V"),
)


def compare_preset(
    model, kv, preset, seed: int, peer_module, folder: Path, weight_type: str = "linear", scaling: str = "V only"
) -> dict:
    import plain_ip_adapter as plain
    from full_sdxl_factories import (
        FedClipVision,
        Reads,
        features,
        pack_applied_sources,
        preset_state,
        reference_tokens,
        relative_difference,
        run_side_by_side,
        save_fp16,
        unet_inputs,
    )

    from bolid_core.adapter import load_adapter
    from bolid_core.adapter.layer_weights import EmbedsScaling, WeightType
    from bolid_core.comfy.attn2 import apply_adapter

    defaults = weight_type == "linear" and scaling == "V only"
    options = {} if defaults else {"weight_type": WeightType(weight_type), "embeds_scaling": EmbedsScaling(scaling)}
    started = time.perf_counter()
    keys = plain.sdxl_attn2_keys()
    state = preset_state(preset, kv, 100 + seed)
    path = folder / preset.file_name
    save_fp16(state, path)
    fed = features(preset, 200 + seed)
    face = preset.reads in (Reads.FACE, Reads.FACE_AND_CROP)

    with torch.inference_mode():
        adapter = load_adapter(path)
        (source,) = pack_applied_sources(model, adapter, preset, fed, **options)
        ours_model = apply_adapter(model, adapter, [source])

        peer_file = peer_module.ipadapter_model_loader(str(path))  # reads its flags (plusv2, ...) from the name
        peer_model, _ = peer_module.ipadapter_execute(
            model.clone(), peer_file, FedClipVision(fed),
            insightface=FedFaceAnalysis(fed.arcface) if face else None,
            image=fed.face_crop if face else fed.image,
            weight=1.0, weight_type=weight_type, combine_embeds="concat", start_at=0.0, end_at=1.0,
            embeds_scaling=scaling, weight_faceidv2=1.0 if preset.name == "faceid plus v2" else None,
        )  # fmt: skip
        path.unlink()
        peer_patches = peer_model.model_options["transformer_options"]["patches_replace"]["attn2"]
        registered = sorted(peer_patches)
        # The peer's bug set aside: its ("middle", 1, i) patches go where ComfyUI looks, ("middle", 0, i).
        remapped = {(("middle", 0, key[2]) if key[:2] == ("middle", 1) else key): p for key, p in peer_patches.items()}
        if set(remapped) != set(keys):
            raise RuntimeError(f"The peer patched other layers than SDXL's 70: {sorted(set(keys) ^ set(remapped))}")
        peer_kwargs = next(iter(peer_patches.values())).kwargs[0]
        peer_on, peer_off = peer_kwargs["cond"].float(), peer_kwargs["uncond"].float()
        plain_on, plain_off = reference_tokens(preset, state, fed)

        ours_patches = ours_model.model_options["transformer_options"]["patches_replace"]["attn2"]
        layer_records = {key: {} for key in keys}
        runs = {}
        for layer, key in enumerate(keys):
            formula = plain.PlainDecoupledAttention(state, layer, plain_on, plain_off, weight=1.0)
            if not defaults:  # the formulas cover the default options only
                formula = remapped[key]
            compared = ComparedLayer(ours_patches[key], remapped[key], formula, layer_records[key])
            runs[key] = [None, compared, remapped[key], formula]
        unpatched, ours, peer, formulas = run_side_by_side(model, unet_inputs(seed=7), runs)

    middle_blocks = sorted({key[:2] for key in registered if key[0] == "middle"})
    per_kind: dict[str, dict[str, float]] = {}
    for key, record in layer_records.items():
        kind = per_kind.setdefault(_layer_kind(key), {"layers": 0, "ours_vs_peer": 0.0, "ours_vs_formulas": 0.0})
        kind["layers"] += 1
        for name in ("ours_vs_peer", "ours_vs_formulas"):
            kind[name] = max(kind[name], record[name])
    result = {
        "file": preset.file_name,
        "weight_type": weight_type,
        "embeds_scaling": scaling,
        "peer_dtype": str(peer_on.dtype),
        "peer_middle_blocks_registered": [list(block) for block in middle_blocks],
        "peer_registered_layers": len(registered),
        "tokens_shape": list(source.tokens_on.shape),
        "tokens_on_ours_vs_peer": relative_difference(source.tokens_on, peer_on),
        "tokens_off_ours_vs_peer": relative_difference(source.tokens_off, peer_off),
        "tokens_on_peer_vs_formulas": relative_difference(peer_on, plain_on),
        "tokens_off_peer_vs_formulas": relative_difference(peer_off, plain_off),
        "layers_max_relative_difference": per_kind,
        "unet_ours_vs_peer": relative_difference(ours, peer),
        "unet_ours_vs_formulas": relative_difference(ours, formulas),
        "unet_peer_vs_formulas": relative_difference(peer, formulas),
        "unet_adapter_effect": relative_difference(ours, unpatched),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if not defaults:
        for kind in per_kind.values():
            del kind["ours_vs_formulas"]
        for name in [name for name in result if "formulas" in name]:
            del result[name]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", type=Path, required=True, help="a checkout of ComfyUI_IPAdapter_plus")
    parser.add_argument("--peer-revision", default="", help="the peer's commit, recorded in the output")
    parser.add_argument("--presets", nargs="*", help="preset names (default: every SDXL preset)")
    parser.add_argument("--no-options", action="store_true", help="only the default options")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    peer = args.peer.resolve()
    if not (peer / "IPAdapterPlus.py").is_file():
        parser.error(f"{peer} holds no IPAdapterPlus.py: give the root of a ComfyUI_IPAdapter_plus checkout.")

    sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]
    from bolid_dev.runtime import import_comfy_in_process

    import_comfy_in_process()
    torch.set_num_threads(1)  # memory-bound at this latent size; a second thread only spins on a shared machine
    peer_module = _import_peer(peer)
    from full_sdxl_factories import PRESETS, full_sdxl_model, shared_kv

    from bolid_core.comfy.attn2 import attn2_layer_keys

    started = time.perf_counter()
    model = full_sdxl_model(seed=0)
    kv = shared_kv(tuple(width for _, width in attn2_layer_keys(model)))
    chosen = [p for p in PRESETS if not args.presets or p.name in args.presets]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for preset in chosen:
            results[preset.name] = compare_preset(model, kv, preset, PRESETS.index(preset), peer_module, Path(folder))
            gc.collect()
            print(f"resident {psutil.Process().memory_info().rss / 2**30:.1f} GB", flush=True)
            print(preset.name, json.dumps(results[preset.name]), flush=True)
        options = {}
        for name, weight_type, scaling in () if args.no_options else OPTION_SETS:
            preset = next(p for p in PRESETS if p.name == name)
            label = f"{name} | {weight_type} | {scaling}"
            options[label] = compare_preset(
                model, kv, preset, PRESETS.index(preset), peer_module, Path(folder), weight_type, scaling
            )
            print(label, json.dumps(options[label]), flush=True)
            gc.collect()
    report = {
        "what": "Max relative difference (max |a - b| / max |b|) between the pack and IPAdapter_plus (and the plain "
        "formulas of tests/plain_ip_adapter.py), the default options of each SDXL preset (presets; also against the "
        "formulas) and four other weight type / embeds scaling pairs (options; against the peer only), one "
        "reference, on ComfyUI's full SDXL UNet with random weights (fp32, 16x16 latent, cond and uncond chunks, "
        "8 context tokens). Layers: each patch on the same q, k, v; UNet: the whole forward.",
        "peer_middle_block": "IPAdapter_plus registers SDXL's 10 middle layers as ('middle', 1, i); ComfyUI looks up "
        "('middle', 0, i), so on ComfyUI the peer skips them. Here its middle patches were moved to ('middle', 0, i): "
        "its maths is compared on all 70 layers, its registration bug set aside.",
        "faceid_plus_v2_shortcut": "1.0: the IPAdapter FaceID node's default weight_faceidv2. Nodes without that "
        "input (IPAdapter, IPAdapter Advanced) pass None, which ipadapter_execute turns into 2 x weight.",
        "peer_revision": args.peer_revision,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), CPU",
        "seconds": round(time.perf_counter() - started, 1),
        "presets": results,
        "options": options,
        "skipped": {"light": "SD1.5 only", "full face": "SD1.5 only"},
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
