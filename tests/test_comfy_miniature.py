"""Tier comfy: the miniature base model gives the same numbers in ComfyUI (loaded from its one file with ComfyUI's
classes) as in the diffusers training host (the folder import_base writes, opened by load_sdxl): UNet, text encoders
and VAE, on the same inputs. The loader node lists and loads the file, and refuses other files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bolid_core.miniature.models import build_sdxl_folder, export_base, import_base
from bolid_core.train.diffusers_host import decode_latents, encode_latents, encode_prompts, load_sdxl

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CAPTION = "a person standing, arms raised, on grass under a blue sky"


@pytest.fixture(scope="module")
def miniature(comfy_path, tmp_path_factory):
    """The base file (in a models/bolid/miniature folder) and the diffusers host's models from the same file."""
    tokenizer_dir = Path(comfy_path) / "comfy" / "sd1_tokenizer"
    root = tmp_path_factory.mktemp("miniature")
    built = build_sdxl_folder(root / "built", tokenizer_dir, seed=3)
    file = export_base(built, root / "bolid" / "miniature" / "base.safetensors")
    host = load_sdxl(import_base(file, root / "host", tokenizer_dir))
    return file, host


@pytest.fixture(scope="module")
def comfy_models(miniature):
    from bolid_core.comfy.miniature import load_miniature_base

    return load_miniature_base(miniature[0])


def test_unet_matches_the_diffusers_host_with_the_training_time_ids(miniature, comfy_models):
    import comfy.model_base

    _, host = miniature
    model = comfy_models[0].model
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn((2, 4, 16, 16), generator=generator)
    context = torch.randn((2, 77, 32), generator=generator)
    pooled = torch.randn((2, 1280), generator=generator)
    timesteps = torch.tensor([999.0, 250.0])
    # Whatever size the conditioning claims, the miniature model embeds the training 64x64.
    y = model.encode_adm(pooled_output=pooled, width=1024, height=768, crop_w=8, crop_h=4, target_width=512)
    with torch.no_grad():
        comfy_eps = model.diffusion_model(x_t, timesteps, context=context, y=y)
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).expand(2, 6)
        added = {"text_embeds": pooled, "time_ids": time_ids}
        host_eps = host.unet(x_t, timesteps, encoder_hidden_states=context, added_cond_kwargs=added).sample
    torch.testing.assert_close(comfy_eps, host_eps, rtol=1e-4, atol=1e-4)

    # The plain SDXL ADM would have carried the claimed size, and changed the output.
    plain_y = comfy.model_base.SDXL.encode_adm(model, pooled_output=pooled, width=1024, height=768)
    assert not torch.allclose(plain_y, y)
    with torch.no_grad():
        plain_eps = model.diffusion_model(x_t, timesteps, context=context, y=plain_y)
    assert (plain_eps - host_eps).abs().max() > 1e-3


def test_time_ids_are_forced_to_the_training_size(comfy_models):
    model = comfy_models[0].model
    pooled = torch.randn((1, 1280), generator=torch.Generator().manual_seed(1))
    y = model.encode_adm(pooled_output=pooled, width=1024, height=1024, crop_w=16, crop_h=16)
    # SDXL's ADM written plainly: pooled, then 256 sinusoids for each of (h, w, crop_h, crop_w, target_h, target_w).
    ids = torch.tensor([64.0, 64.0, 0.0, 0.0, 64.0, 64.0])
    half = 128
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half, dtype=torch.float32) / half)
    angles = ids[:, None] * freqs[None]
    sinusoids = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).reshape(1, -1)
    torch.testing.assert_close(y, torch.cat([pooled, sinusoids], dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prompt", [CAPTION, ""])
def test_text_matches_the_diffusers_host(miniature, comfy_models, prompt):
    _, host = miniature
    clip = comfy_models[1]
    [[context, extra]] = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    expected = encode_prompts(host, [prompt])
    assert context.shape == (1, 77, 32) and extra["pooled_output"].shape == (1, 1280)
    torch.testing.assert_close(context, expected.context, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(extra["pooled_output"], expected.pooled, rtol=1e-4, atol=1e-4)


def test_captions_give_different_conditioning(comfy_models):
    clip = comfy_models[1]
    [[caption, caption_extra]] = clip.encode_from_tokens_scheduled(clip.tokenize(CAPTION))
    [[empty, empty_extra]] = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    assert (caption - empty).abs().max() > 0.1
    assert (caption_extra["pooled_output"] - empty_extra["pooled_output"]).abs().max() > 0.1


def test_vae_matches_the_diffusers_host(miniature, comfy_models):
    _, host = miniature
    vae = comfy_models[2]
    assert vae.spacial_compression_decode() == 4 and vae.spacial_compression_encode() == 4
    generator = torch.Generator().manual_seed(2)
    # ComfyUI's VAE takes the raw latent; the diffusers host's latents are scaled by SDXL's 0.13025.
    raw = torch.randn((2, 4, 16, 16), generator=generator)
    comfy_images = vae.decode(raw)
    with torch.no_grad():
        host_images = decode_latents(host.vae, raw * 0.13025)
    assert comfy_images.shape == (2, 64, 64, 3)
    torch.testing.assert_close(comfy_images, host_images, rtol=1e-4, atol=1e-4)

    pixels = torch.rand((2, 64, 64, 3), generator=generator)
    torch.testing.assert_close(vae.encode(pixels), encode_latents(host.vae, pixels) / 0.13025, rtol=1e-4, atol=1e-4)


def test_a_miniature_samples_end_to_end_in_comfyui(comfy_models):
    import comfy.sample

    model, clip, vae = comfy_models
    [[context, extra]] = clip.encode_from_tokens_scheduled(clip.tokenize(CAPTION))
    positive = [[context, extra]]
    negative = [[torch.zeros_like(context), {"pooled_output": torch.zeros_like(extra["pooled_output"])}]]
    latent = torch.zeros((1, 4, 16, 16))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(3))
    samples = comfy.sample.sample(model, noise, 2, 5.0, "euler", "normal", positive, negative, latent, seed=3)
    images = vae.decode(samples)
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(images).all()


# --- the loader node -----------------------------------------------------------------------------------------


@pytest.fixture()
def bolid_folder(comfy_nodes, miniature, monkeypatch):
    import folder_paths

    root = miniature[0].parent.parent
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "bolid", ([str(root)], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    yield root
    folder_paths.filename_list_cache.clear()


def test_node_lists_and_loads_the_file(comfy_nodes, bolid_folder, miniature):
    import comfy.model_patcher
    import comfy.sd

    node = comfy_nodes["BoLIDMiniatureModelLoader"]
    schema = node.define_schema()
    assert schema.category == "BoLID/miniature"
    assert "not a model for real images" in schema.description
    assert schema.inputs[0].options == ["base.safetensors"]
    assert [output.io_type for output in schema.outputs] == ["MODEL", "CLIP", "VAE"]

    model, clip, vae = node.execute("base.safetensors").result
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert isinstance(clip, comfy.sd.CLIP) and isinstance(vae, comfy.sd.VAE)
    before = node.fingerprint_inputs("base.safetensors")
    assert before == node.fingerprint_inputs("base.safetensors")
    os.utime(miniature[0], ns=(1, 1))  # the file replaced: ComfyUI must not serve the cached models
    assert node.fingerprint_inputs("base.safetensors") != before


def test_node_refuses_a_file_that_is_not_a_miniature(comfy_nodes, bolid_folder):
    other = bolid_folder / "miniature" / "adapter.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other), metadata={"format": "bolid-adapter"})
    try:
        folder_paths_cache_clear()
        node = comfy_nodes["BoLIDMiniatureModelLoader"]
        with pytest.raises(ValueError, match="not a miniature base model"):
            node.execute("adapter.safetensors")
        with pytest.raises(FileNotFoundError, match="models/bolid"):
            node.execute("missing.safetensors")
    finally:
        other.unlink()


def folder_paths_cache_clear() -> None:
    import folder_paths

    folder_paths.filename_list_cache.clear()
