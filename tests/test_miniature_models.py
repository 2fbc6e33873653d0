"""The miniature base model's diffusers side: the folder the CLI host opens, its one-file form, the image
autoencoder's latent scale."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bolid_core.miniature import autoencoder
from bolid_core.miniature.models import (
    BASE_FORMAT,
    MiniatureFileError,
    build_sdxl_folder,
    export_base,
    import_base,
    read_base,
)
from bolid_core.train.diffusers_host import encode_latents, encode_prompts, latent_scaling, load_sdxl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer_dir():
    from bolid_dev.runtime import comfyui_dir

    return comfyui_dir() / "comfy" / "sd1_tokenizer"


@pytest.fixture(scope="module")
def folder(tokenizer_dir, tmp_path_factory):
    return build_sdxl_folder(tmp_path_factory.mktemp("mini") / "sdxl", tokenizer_dir, seed=0)


def test_the_cli_host_opens_the_folder_with_sdxl_shapes(folder):
    models = load_sdxl(folder)
    unet = models.unet.config
    assert unet.addition_embed_type == "text_time" and unet.projection_class_embeddings_input_dim == 2816
    assert unet.addition_time_embed_dim == 256 and unet.cross_attention_dim == 32
    assert latent_scaling(models.vae) == (0.13025, 0.0)
    text = encode_prompts(models, ["a person walking", ""])
    assert text.context.shape == (2, 77, 32) and text.pooled.shape == (2, 1280)
    # SDXL's second tokenizer pads with "!" (id 0), the first with the end token.
    ids_2 = models.tokenizer_2(["a person"], padding="max_length", max_length=77).input_ids[0]
    ids_1 = models.tokenizer(["a person"], padding="max_length", max_length=77).input_ids[0]
    assert ids_2[:5] == [49406, 320, 2533, 49407, 0] and ids_1[4] == 49407 and len(ids_1) == 77
    scheduler = models.scheduler.config
    assert (scheduler.beta_schedule, scheduler.beta_start, scheduler.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert scheduler.num_train_timesteps == 1000 and scheduler.prediction_type == "epsilon"
    latents = encode_latents(models.vae, torch.rand((1, 64, 64, 3)))
    assert latents.shape == (1, 4, 16, 16)


def test_the_same_seed_builds_the_same_weights(folder, tokenizer_dir, tmp_path):
    again = build_sdxl_folder(tmp_path / "again", tokenizer_dir, seed=0)
    other = build_sdxl_folder(tmp_path / "other", tokenizer_dir, seed=1)
    first, second, third = (
        read_base(export_base(f, tmp_path / f"{i}.safetensors")) for i, f in enumerate((folder, again, other))
    )
    for part in first.state:
        for key, value in first.state[part].items():
            assert torch.equal(value, second.state[part][key]), f"{part}.{key}"
    assert not torch.equal(first.state["unet"]["conv_in.weight"], third.state["unet"]["conv_in.weight"])


def test_export_import_round_trip_is_exact(folder, tokenizer_dir, tmp_path):
    file = export_base(folder, tmp_path / "base.safetensors")
    assert file.stat().st_size < 16e6  # a few MB in fp16
    with safe_open(str(file), framework="pt") as opened:
        metadata = opened.metadata()
        dtypes = {opened.get_tensor(key).dtype for key in opened.keys()}
    assert metadata["format"] == BASE_FORMAT and metadata["format_version"] == "1" and dtypes == {torch.float16}
    assert json.loads(metadata["unet_config"])["block_out_channels"] == [64, 64, 64]

    imported = import_base(file, tmp_path / "imported", tokenizer_dir)
    original, restored = load_sdxl(folder), load_sdxl(imported)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        before, after = getattr(original, part).state_dict(), getattr(restored, part).state_dict()
        assert before.keys() == after.keys()
        for key in before:  # the file's fp16 values, exactly
            assert torch.equal(before[key].to(torch.float16).float(), after[key]), f"{part}.{key}"
    again = read_base(export_base(imported, tmp_path / "again.safetensors"))
    first = read_base(file)
    for part in first.state:
        assert all(torch.equal(value, again.state[part][key]) for key, value in first.state[part].items())
    assert first.configs == again.configs


def test_other_files_are_refused(tmp_path):
    other = tmp_path / "adapter.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other), metadata={"format": "bolid-adapter", "format_version": "1"})
    with pytest.raises(MiniatureFileError, match="not a miniature base model"):
        read_base(other)
    incomplete = tmp_path / "incomplete.safetensors"
    save_file({"unet.x": torch.zeros(2)}, str(incomplete), metadata={"format": BASE_FORMAT, "format_version": "1"})
    with pytest.raises(MiniatureFileError, match="has no unet"):
        read_base(incomplete)


def test_folding_the_latent_scale_keeps_decoding_and_scales_the_mean(folder):
    vae = load_sdxl(folder).vae
    pixels = torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        before = vae.encode(pixels).latent_dist
        decoded = vae.decode(before.mean).sample
        autoencoder.fold_latent_scale(vae, 3.0)
        after = vae.encode(pixels).latent_dist
        torch.testing.assert_close(after.mean, 3.0 * before.mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(after.std, 3.0 * before.std, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(vae.decode(after.mean).sample, decoded, rtol=1e-4, atol=1e-5)


def test_train_image_vae_gives_unit_scaled_latents(folder, tokenizer_dir, tmp_path):
    target = build_sdxl_folder(tmp_path / "sdxl", tokenizer_dir, seed=5)
    rng = np.random.default_rng(0)
    images = np.zeros((8, 64, 64, 3), np.uint8)
    images[:] = rng.integers(0, 256, (8, 1, 1, 3))
    images[:, 16:48, 28:36] = 255  # a white bar on a coloured ground
    calls = []
    result = autoencoder.train_image_vae(
        target, images, steps=2, batch_size=4, seed=0, progress=lambda i, n: calls.append((i, n))
    )
    assert calls == [(1, 2), (2, 2)]
    vae = load_sdxl(target).vae
    latents = encode_latents(vae, torch.as_tensor(images).float() / 255)
    assert latents.std().item() == pytest.approx(1.0, rel=1e-3)  # posterior mean x 0.13025, after the fold
    assert result["latent_std"] == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match="uint8"):
        autoencoder.train_image_vae(target, images.astype(np.float32), steps=1, batch_size=1, seed=0)
