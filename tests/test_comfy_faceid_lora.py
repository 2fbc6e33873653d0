"""Tier 2: ComfyUI's own LoraLoaderModelOnly applies every key of a FaceID-Plus-v2 SDXL LoRA to the SDXL UNet.

The LoRA is tiny and random but carries the published file's key names (tests/lora_factories.py); the
expected weights are W + strength * up @ down * alpha / rank, computed here from the file's tensors.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
from lora_factories import FILE_NAME, faceid_plusv2_sdxl_lora, tiny_attention_blocks
from safetensors.torch import save_file

RANK, ALPHA = 4, 2.0
# The tiny UNet's attention projections, named as ComfyUI's state dict names them.
ATTENTION_WEIGHT = re.compile(
    r"diffusion_model\.(input_blocks|middle_block|output_blocks)\..*\.attn[12]\.to_(q|k|v|out\.0)\.weight"
)
LORA_MODULE = re.compile(
    r"lora_unet_(?:(down|up)_blocks_(\d+)|mid_block)_attentions_(\d+)_transformer_blocks_(\d+)_(attn[12])_(to_q|to_k|to_v|to_out_0)"
)


def comfy_weight_key(module: str) -> str:
    """The SD UNet layout written out: 3 input blocks per level after conv_in, 3 output blocks per level."""
    side, level, attention, transformer, attn, projection = LORA_MODULE.fullmatch(module).groups()
    if side == "down":
        block = f"input_blocks.{3 * int(level) + int(attention) + 1}.1"
    elif side == "up":
        block = f"output_blocks.{3 * int(level) + int(attention)}.1"
    else:
        block = "middle_block.1"
    projection = "to_out.0" if projection == "to_out_0" else projection
    return f"diffusion_model.{block}.transformer_blocks.{transformer}.{attn}.{projection}.weight"


@pytest.fixture()
def lora_folder(tmp_path, monkeypatch, comfy_path):
    import folder_paths

    lora = faceid_plusv2_sdxl_lora(tiny_attention_blocks(), model_channels=32, rank=RANK, alpha=ALPHA)
    save_file(lora, str(tmp_path / FILE_NAME))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)], {".safetensors"}))
    return lora


@pytest.mark.parametrize("strength", [1.0, -0.6])
def test_core_lora_loader_applies_every_key(tiny_model, comfy_nodes, lora_folder, caplog, strength) -> None:
    from bolid_test_models.tiny_models import TINY_UNET_CONFIG

    assert TINY_UNET_CONFIG["model_channels"] == 32 and TINY_UNET_CONFIG["channel_mult"] == [1, 2, 4]
    unpatched = {key: value.clone() for key, value in tiny_model.model.state_dict().items()}
    attention_weights = {key for key in unpatched if ATTENTION_WEIGHT.fullmatch(key)}
    modules = sorted({key.split(".", 1)[0] for key in lora_folder})

    with caplog.at_level(logging.WARNING):
        (patched,) = comfy_nodes["LoraLoaderModelOnly"]().load_lora_model_only(tiny_model, FILE_NAME, strength)
    not_loaded = [record.getMessage() for record in caplog.records if "not loaded" in record.getMessage().lower()]
    assert not not_loaded, f"ComfyUI skipped LoRA keys: {not_loaded[:4]}"
    # 11 transformer blocks x 2 attentions x 4 projections: every attention projection of the UNet, no other weight.
    assert len(modules) == 88 and {comfy_weight_key(module) for module in modules} == attention_weights
    assert set(patched.patches) == attention_weights

    patched.patch_model(device_to=torch.device("cpu"))
    try:
        weights = patched.model.state_dict()
        for module in modules:
            up = lora_folder[f"{module}.lora_up.weight"].float()
            down = lora_folder[f"{module}.lora_down.weight"].float()
            key = comfy_weight_key(module)
            expected = unpatched[key] + strength * (up @ down) * (ALPHA / RANK)
            assert torch.allclose(weights[key], expected, atol=1e-6, rtol=0), module
            assert (weights[key] - unpatched[key]).abs().max() > 1e-3, module
        untouched = [key for key in unpatched if key not in attention_weights]
        assert all(torch.equal(weights[key], unpatched[key]) for key in untouched)
    finally:
        patched.unpatch_model(device_to=torch.device("cpu"))
    assert all(torch.equal(tiny_model.model.state_dict()[key], unpatched[key]) for key in attention_weights)
