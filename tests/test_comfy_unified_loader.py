"""Tier 2: BoLID Unified Loader, through the registered node, on model folders the test writes.

Adapters come from tests/adapter_factories.py, saved under h94's published names; the LoRA has the published key
names (tests/lora_factories.py). CLIP vision: ComfyUI's own loader (comfy.clip_vision.load) reads the file, but its
architecture detection only knows full-size encoders (it looks for layer 30 or 47), so the test teaches it the tiny
config; the widths come from the file itself, as they would for ViT-H or ViT-bigG.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from adapter_factories import TINY_SDXL_WIDTHS, faceid_ip_adapter, nested, plain_ip_adapter, plus_ip_adapter
from lora_factories import faceid_plusv2_sdxl_lora, tiny_attention_blocks
from safetensors.torch import save_file

VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
VIT_G = "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"
FACEID = "ip-adapter-faceid_sdxl.bin"
FACEID_LORA = "ip-adapter-faceid_sdxl_lora.safetensors"
PLUS = "ip-adapter-plus_sdxl_vit-h.safetensors"
STANDARD = "ip-adapter_sdxl_vit-h.safetensors"
VIT_G_ADAPTER = "ip-adapter_sdxl.safetensors"
# The tiny UNet's attention projections: 11 transformer blocks x (attn1, attn2) x (q, k, v, out).
ATTENTION_PROJECTIONS = 88


@pytest.fixture()
def folders(tmp_path, monkeypatch, comfy_path):
    import comfy.clip_vision
    import folder_paths
    from bolid_test_models.tiny_models import TINY_CLIP_VISION_CONFIG

    roots = {name: tmp_path / "models" / name for name in ("ipadapter", "clip_vision", "loras")}
    for name, root in roots.items():
        root.mkdir(parents=True)
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(root)], {".safetensors", ".bin"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})

    def tiny_from_state_dict(state, prefix="", convert_keys=False):
        hidden = state["vision_model.post_layernorm.weight"].shape[0]
        config = {**TINY_CLIP_VISION_CONFIG, "hidden_size": hidden,
                  "projection_dim": state["visual_projection.weight"].shape[0], "num_hidden_layers": 1}  # fmt: skip
        path = tmp_path / f"tiny_clip_{hidden}.json"
        path.write_text(json.dumps(config))
        clip_vision = comfy.clip_vision.ClipVisionModel(str(path))
        missing, _ = clip_vision.load_sd(state)
        assert not missing
        return clip_vision

    monkeypatch.setattr(comfy.clip_vision, "load_clipvision_from_sd", tiny_from_state_dict)
    return roots


def write_clip_vision(path, hidden: int, projection: int, seed: int) -> dict[str, torch.Tensor]:
    """A 2-layer CLIP vision with the given widths (ViT-H: 1280 hidden, 1024 embeds; ViT-bigG: 1664, 1280)."""
    generator = torch.Generator().manual_seed(seed)
    patch, layers, mlp = 14, 1, 64  # one layer: the tests load it, never encode with it
    state = {
        "vision_model.embeddings.class_embedding": torch.randn(hidden, generator=generator),
        "vision_model.embeddings.patch_embedding.weight": torch.randn(hidden, 3, patch, patch, generator=generator),
        "vision_model.embeddings.position_embedding.weight": torch.randn(17, hidden, generator=generator),
        "vision_model.pre_layrnorm.weight": torch.ones(hidden), "vision_model.pre_layrnorm.bias": torch.zeros(hidden),
        "vision_model.post_layernorm.weight": torch.ones(hidden),
        "vision_model.post_layernorm.bias": torch.zeros(hidden),
        "visual_projection.weight": torch.randn(projection, hidden, generator=generator) / math.sqrt(hidden),
    }  # fmt: skip
    for layer in range(layers):
        base = f"vision_model.encoder.layers.{layer}"
        for norm in ("layer_norm1", "layer_norm2"):
            state[f"{base}.{norm}.weight"], state[f"{base}.{norm}.bias"] = torch.ones(hidden), torch.zeros(hidden)
        for projection_name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[f"{base}.self_attn.{projection_name}.weight"] = (
                torch.randn(hidden, hidden, generator=generator) * 0.02
            )
            state[f"{base}.self_attn.{projection_name}.bias"] = torch.zeros(hidden)
        state[f"{base}.mlp.fc1.weight"] = torch.randn(mlp, hidden, generator=generator) * 0.02
        state[f"{base}.mlp.fc1.bias"] = torch.zeros(mlp)
        state[f"{base}.mlp.fc2.weight"] = torch.randn(hidden, mlp, generator=generator) * 0.02
        state[f"{base}.mlp.fc2.bias"] = torch.zeros(hidden)
    save_file(state, str(path))
    return state


def save_adapter_file(path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".bin":
        torch.save(nested({key: value.half() for key, value in state.items()}), path)
    else:
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))


def run(comfy_nodes, model, preset: str, lora_strength: float = 0.6):
    return comfy_nodes["BoLIDUnifiedLoader"].execute(model=model, preset=preset, lora_strength=lora_strength).result


def same_weights(clip_vision, state: dict[str, torch.Tensor]) -> bool:
    loaded = clip_vision.get_sd()
    return all(torch.equal(loaded[key], value.to(loaded[key].dtype)) for key, value in state.items())


def test_plus_preset_picks_its_adapter_and_vit_h(folders, tiny_model, comfy_nodes) -> None:
    save_adapter_file(folders["ipadapter"] / "sdxl" / PLUS, plus_ip_adapter(clip_dim=1280, seed=1))
    save_adapter_file(folders["ipadapter"] / STANDARD, plain_ip_adapter(clip_dim=1024, tokens=1))
    vit_h = write_clip_vision(folders["clip_vision"] / VIT_H, 1280, 1024, seed=3)
    write_clip_vision(folders["clip_vision"] / VIT_G, 1664, 1280, seed=4)

    model, adapter, clip_vision = run(comfy_nodes, tiny_model, "plus")
    assert model is tiny_model, "no LoRA: the model passes through"
    assert adapter.spec.kind.value == "ip-adapter-plus" and adapter.spec.clip_dim == 1280
    expected_latents = plus_ip_adapter(clip_dim=1280, seed=1)["image_proj.latents"]
    assert torch.equal(adapter.projection(adapter.spec.sources[0]).latents, expected_latents)
    assert same_weights(clip_vision, vit_h)


def test_vit_g_preset_picks_the_big_g_encoder(folders, tiny_model, comfy_nodes) -> None:
    save_adapter_file(folders["ipadapter"] / VIT_G_ADAPTER, plain_ip_adapter(clip_dim=1280, tokens=1))
    save_adapter_file(folders["ipadapter"] / STANDARD, plain_ip_adapter(clip_dim=1024, tokens=1))
    write_clip_vision(folders["clip_vision"] / VIT_H, 1280, 1024, seed=3)
    vit_g = write_clip_vision(folders["clip_vision"] / VIT_G, 1664, 1280, seed=4)

    _, adapter, clip_vision = run(comfy_nodes, tiny_model, "vit-g")
    assert adapter.spec.kind.value == "ip-adapter" and adapter.spec.clip_dim == 1280
    assert same_weights(clip_vision, vit_g)
    _, adapter, clip_vision = run(comfy_nodes, tiny_model, "standard")
    assert adapter.spec.clip_dim == 1024 and not same_weights(clip_vision, vit_g)


@pytest.mark.parametrize("strength", [0.35, 1.4])
def test_faceid_applies_its_lora_to_a_clone(folders, tiny_model, comfy_nodes, strength) -> None:
    save_adapter_file(folders["ipadapter"] / FACEID, faceid_ip_adapter())
    lora = faceid_plusv2_sdxl_lora(tiny_attention_blocks(), model_channels=32, rank=4, alpha=2.0)
    save_file(lora, str(folders["loras"] / FACEID_LORA))

    model, adapter, clip_vision = run(comfy_nodes, tiny_model, "faceid", strength)
    assert adapter.spec.kind.value == "ip-adapter-faceid" and clip_vision is None  # FaceID reads no CLIP
    assert model is not tiny_model and not tiny_model.patches, "the input model is untouched"
    assert len(model.patches) == ATTENTION_PROJECTIONS
    assert all(len(patches) == 1 and patches[0][0] == strength for patches in model.patches.values())
    # Each patch holds the file's own tensors (ComfyUI's LoRA adapter keeps them as loaded).
    key = "diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight"
    patch = model.patches[key][0][1]
    up, down = patch.weights[0], patch.weights[1]
    module = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"
    assert torch.equal(up, lora[f"{module}.lora_up.weight"]) and torch.equal(down, lora[f"{module}.lora_down.weight"])


def test_faceid_at_strength_zero_needs_no_lora(folders, tiny_model, comfy_nodes) -> None:
    save_adapter_file(folders["ipadapter"] / FACEID, faceid_ip_adapter())
    write_clip_vision(folders["clip_vision"] / VIT_H, 1280, 1024, seed=3)
    model, _, clip_vision = run(comfy_nodes, tiny_model, "faceid", 0.0)
    assert model is tiny_model and clip_vision is not None  # the encoder is loaded when it is there


def test_missing_files_give_the_exact_message(folders, tiny_model, comfy_nodes) -> None:
    save_adapter_file(folders["ipadapter"] / "ip-adapter-faceid_sd15.bin", faceid_ip_adapter(context_dim=768))
    # The pack is loaded by ComfyUI under its folder's name: its PresetFilesMissing is a FileNotFoundError.
    with pytest.raises(FileNotFoundError) as error:
        run(comfy_nodes, tiny_model, "faceid")
    assert type(error.value).__name__ == "PresetFilesMissing"
    assert str(error.value) == "\n".join([
        "The 'faceid' preset on an SDXL model needs 2 files not found:",
        f"- ip-adapter-faceid_sdxl.bin (the 'faceid' IP-Adapter for SDXL) goes in models/ipadapter "
        f"({folders['ipadapter']}); subfolders are fine, .safetensors or .bin. Get it from "
        "https://huggingface.co/h94/IP-Adapter-FaceID/resolve/main/ip-adapter-faceid_sdxl.bin. Seen there, not "
        "matching: ip-adapter-faceid_sd15.bin (the 'faceid' IP-Adapter for SD1.5).",
        f"- ip-adapter-faceid_sdxl_lora.safetensors (the LoRA paired with ip-adapter-faceid_sdxl.bin) goes in "
        f"models/loras ({folders['loras']}); subfolders are fine, .safetensors or .bin. Get it from "
        "https://huggingface.co/h94/IP-Adapter-FaceID/resolve/main/ip-adapter-faceid_sdxl_lora.safetensors.",
        "Name each file exactly so (case and - or _ do not matter), then queue the prompt again.",
    ])  # fmt: skip


def test_sd15_only_preset_on_sdxl(folders, tiny_model, comfy_nodes) -> None:
    with pytest.raises(ValueError, match=r"'light' preset exists only for SD1.5.*'standard' preset \(ip-adapter_sdxl"):
        run(comfy_nodes, tiny_model, "light")


def test_misnamed_files_are_refused(folders, tiny_model, comfy_nodes) -> None:
    save_adapter_file(folders["ipadapter"] / STANDARD, plus_ip_adapter(clip_dim=1280))
    write_clip_vision(folders["clip_vision"] / VIT_H, 1280, 1024, seed=3)
    with pytest.raises(ValueError, match=f"^{STANDARD} is an IP-Adapter Plus .* fits the preset\\(s\\) 'plus'"):
        run(comfy_nodes, tiny_model, "standard")

    save_adapter_file(folders["ipadapter"] / PLUS, plus_ip_adapter(clip_dim=1280))
    write_clip_vision(folders["clip_vision"] / VIT_H, 1664, 1280, seed=4)  # ViT-bigG under the ViT-H name
    with pytest.raises(ValueError, match=f"{VIT_H} gives 1664-wide CLIP penultimate_hidden_states"):
        run(comfy_nodes, tiny_model, "plus")


def test_a_lora_that_fits_no_layer_is_refused(folders, tiny_model, comfy_nodes) -> None:
    save_adapter_file(folders["ipadapter"] / FACEID, faceid_ip_adapter())
    save_file({"lora_te_text_model_x.lora_down.weight": torch.zeros(4, 8)}, str(folders["loras"] / FACEID_LORA))
    with pytest.raises(ValueError, match=f"None of the 1 tensors of {FACEID_LORA} fit this model's layers"):
        run(comfy_nodes, tiny_model, "faceid")


def test_a_pickled_lora_bin_is_refused(folders, tiny_model, comfy_nodes, tmp_path) -> None:
    from pickle_payloads import ExecPayload

    save_adapter_file(folders["ipadapter"] / FACEID, faceid_ip_adapter())
    marker = tmp_path / "ran"
    torch.save({"payload": ExecPayload(marker)}, folders["loras"] / "ip-adapter-faceid_sdxl_lora.bin")
    with pytest.raises(ValueError, match="could not be read as plain weights"):
        run(comfy_nodes, tiny_model, "faceid")
    assert not marker.exists()


def test_fingerprint_follows_the_picked_files(folders, comfy_nodes) -> None:
    node = comfy_nodes["BoLIDUnifiedLoader"]
    missing = node.fingerprint_inputs(preset="plus", lora_strength=0.6)
    save_adapter_file(folders["ipadapter"] / "IP_Adapter_Plus_SDXL_ViT_H.bin", plus_ip_adapter(clip_dim=1280))
    write_clip_vision(folders["clip_vision"] / VIT_H, 1280, 1024, seed=3)
    first = node.fingerprint_inputs(preset="plus", lora_strength=0.6)
    assert first != missing and node.fingerprint_inputs(preset="plus", lora_strength=0.6) == first

    path = folders["clip_vision"] / VIT_H
    before = os.stat(path)
    write_clip_vision(path, 1280, 1024, seed=5)  # replaced: same name and size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    replaced = node.fingerprint_inputs(preset="plus", lora_strength=0.6)
    assert replaced != first, "a replaced CLIP vision file must be reloaded"

    save_adapter_file(folders["ipadapter"] / PLUS, plus_ip_adapter(clip_dim=1280))  # the published name now wins
    assert node.fingerprint_inputs(preset="plus", lora_strength=0.6) != replaced


def test_lora_strength_must_be_finite(comfy_nodes, folders, tiny_model) -> None:
    node = comfy_nodes["BoLIDUnifiedLoader"]
    assert node.validate_inputs(lora_strength=0.6) is True
    assert "lora_strength is nan" in node.validate_inputs(lora_strength=float("nan"))
    with pytest.raises(ValueError, match="lora_strength is inf"):
        run(comfy_nodes, tiny_model, "faceid", float("inf"))


def test_loaded_adapter_file_is_the_one_on_disk(folders, tiny_model, comfy_nodes) -> None:
    """The .bin FaceID file as published (nested, fp16) loads with its own tensors."""
    state = faceid_ip_adapter(seed=7)
    save_adapter_file(folders["ipadapter"] / FACEID, state)
    _, adapter, _ = run(comfy_nodes, tiny_model, "faceid", 0.0)
    first_kv = adapter.kv(0, adapter.spec.sources[0]).to_k.weight
    assert torch.equal(first_kv, state["ip_adapter.1.to_k_ip.weight"].half().float())
    assert adapter.spec.layer_widths == TINY_SDXL_WIDTHS
