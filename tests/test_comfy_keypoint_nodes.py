"""Tier 2: the pack loaded by ComfyUI's own loader, its nodes run on a tiny SDXL in a real ModelPatcher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

OUR_NODES = ("BoLIDKeypointsFromJSON", "BoLIDKeypointWeighting")


def test_pack_registers_through_comfy_loader(comfy_nodes: dict) -> None:
    import folder_paths

    import nodes

    for node_id in OUR_NODES:
        assert node_id in comfy_nodes
    assert any((Path(path) / "js" / "keypoints_preview.js").is_file() for path in nodes.EXTENSION_WEB_DIRS.values())

    for folder in ("bolid", "ultralytics", "insightface", "ipadapter"):
        assert folder in folder_paths.folder_names_and_paths


def test_tiny_unet_exposes_sdxl_attn2_layout(tiny_model) -> None:
    """The attn2 keys ComfyUI 0.3.75 calls patches with, recorded from a real sampling run."""
    import comfy.sample
    from bolid_test_models.tiny_models import tiny_conditioning

    seen: dict[tuple, set] = {}

    def recorder(q, k, v, extra_options):
        seen.setdefault(extra_options["block"] + (extra_options["block_index"],), set()).update(
            extra_options["cond_or_uncond"]
        )
        from comfy.ldm.modules.attention import optimized_attention

        return optimized_attention(q, k, v, extra_options["n_heads"])

    patched = tiny_model.clone()
    keys = [("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0)] + [("output", i) for i in range(6)]
    for block, number in keys:
        patched.set_model_attn2_replace(recorder, block, number, 0)
    latent = torch.zeros((1, 4, 16, 16))
    noise = comfy.sample.prepare_noise(latent, 0)
    positive, negative = tiny_conditioning(1), tiny_conditioning(2)
    result = comfy.sample.sample(patched, noise, 2, 4.0, "euler", "normal", positive, negative, latent)
    baseline = comfy.sample.sample(tiny_model, noise, 2, 4.0, "euler", "normal", positive, negative, latent)
    assert set(seen) == {(block, number, 0) for block, number in keys}
    assert all(conds == {0, 1} for conds in seen.values())
    # The recorder computes exactly what the unpatched layer does.
    torch.testing.assert_close(result, baseline, rtol=1e-4, atol=1e-4)


def test_weighting_node_on_a_sampled_image(comfy_nodes: dict, tiny_model, tiny_vae) -> None:
    import comfy.sample
    from bolid_test_models.tiny_models import tiny_conditioning

    latent = torch.zeros((1, 4, 12, 8))
    noise = comfy.sample.prepare_noise(latent, 3)
    samples = comfy.sample.sample(
        tiny_model, noise, 3, 5.0, "euler", "normal", tiny_conditioning(4), tiny_conditioning(5), latent
    )
    image = tiny_vae.decode(samples)
    assert image.shape == (1, 96, 64, 3)

    points = [[0.0, 0.0, 0.0]] * 17
    points[0] = [0.5, 0.25, 1.0]  # nose at pixel (32, 24)
    (keypoints,) = comfy_nodes["BoLIDKeypointsFromJSON"].execute(json.dumps(points)).result
    weighted, weight_map = comfy_nodes["BoLIDKeypointWeighting"].execute(image, keypoints, sigma=0.1, alpha=0.2).result

    sigma_px = 0.1 * 64  # sigma is relative to the shorter side
    row, col = 70, 10
    distance_sq = (col + 0.5 - 32) ** 2 + (row + 0.5 - 24) ** 2
    expected_w = math.exp(-distance_sq / (2 * sigma_px**2)) / math.exp(-0.5 / (2 * sigma_px**2))
    assert weight_map.shape == (1, 96, 64, 3)
    assert weight_map[0, row, col, 0].item() == pytest.approx(expected_w, rel=1e-4)
    expected_pixel = image[0, row, col] * (0.2 + 0.8 * expected_w)
    torch.testing.assert_close(weighted[0, row, col], expected_pixel, rtol=1e-4, atol=1e-6)


def test_keypoints_validation_runs_before_execution(comfy_nodes: dict) -> None:
    node = comfy_nodes["BoLIDKeypointsFromJSON"]
    assert node.validate_inputs(keypoints_json="[0.1, 0.2]").startswith("Keypoints view 0 is not 17")
    assert node.validate_inputs(keypoints_json=json.dumps([[0.5, 0.5, 1.0]] * 17)) is True
