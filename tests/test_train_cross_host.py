"""Tier comfy: an adapter trained by the diffusers host acts in ComfyUI as it did in training. The ComfyUI tiny SDXL
UNet and a diffusers UNet holding the same weights are run on the same x_t, t, context and pooled; the adapter,
saved by the host and loaded through the pack's AdapterLoader and ApplyAdapter nodes, must change ComfyUI's output by
what it changes the diffusers host's."""

from __future__ import annotations

import diffusers_factories
import pytest
import torch

from bolid_core.adapter.checkpoint import AdapterKind, AdapterSpec, ClipInput, Source, new_bolid_adapter, save_adapter
from bolid_core.train.adapter_task import AdapterAttention, TextCondition
from bolid_core.train.diffusers_host import DiffusersDenoiser, unet_layer_widths

HEIGHT, WIDTH = 64, 48  # pixels; not square, so swapped time ids would show
CHOICE = "bolid/trained.safetensors"


def diffusers_twin(comfy_model) -> torch.nn.Module:
    """The diffusers SDXL UNet with the ComfyUI model's weights, mapped by ComfyUI's own key table."""
    import comfy.utils

    unet_config = comfy_model.model.model_config.unet_config
    comfy_state = comfy_model.model.diffusion_model.state_dict()
    twin = diffusers_factories.comfy_twin_unet()
    mapping = comfy.utils.unet_to_diffusers(unet_config)  # diffusers key → ComfyUI key
    state = {key: comfy_state[mapping[key]] for key in twin.state_dict()}
    twin.load_state_dict(state, strict=True)
    return twin


@pytest.fixture()
def adapter_folder(comfy_nodes, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "bolid", ([str(tmp_path)], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    return tmp_path


def test_comfy_patch_changes_the_output_as_the_diffusers_host_does(comfy_nodes, adapter_folder, tiny_model):
    from bolid_test_models.tiny_models import tiny_clip_vision, tiny_conditioning

    twin = diffusers_twin(tiny_model)
    torch.manual_seed(4)
    spec = AdapterSpec(
        AdapterKind.BOLID, 2048, unet_layer_widths(twin), {Source.IMAGE: 3}, clip_dim=1024,
        clip_input=ClipInput.EMBEDS,
    )  # fmt: skip
    adapter = new_bolid_adapter(spec)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.mul_(4.0)  # a stronger adapter than its initialisation, as training leaves it
    save_adapter(adapter, adapter_folder / "trained.safetensors")

    (loaded,) = comfy_nodes["BoLIDAdapterLoader"].execute(CHOICE).result
    image = torch.rand((1, 64, 64, 3), generator=torch.Generator().manual_seed(2))
    numbers = {
        "image_weight": 1.0, "face_weight": 1.0, "body_weight": 1.0, "start_at": 0.0, "end_at": 1.0,
        "faceid_v2_shortcut": 1.0,
    }  # fmt: skip
    (patched,) = (
        comfy_nodes["BoLIDApplyAdapter"]
        .execute(
            tiny_model, loaded, combine_references="average", clip_vision=tiny_clip_vision(), image=image, **numbers
        )
        .result
    )
    patches = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    tokens = next(iter(patches.values())).applied.sources[0].tokens_on  # the node's tokens, (1, 3, 2048)

    [[context, extra]] = tiny_conditioning(seed=5)
    pooled = extra["pooled_output"]
    generator = torch.Generator().manual_seed(6)
    x_t = torch.randn((1, 4, HEIGHT // 8, WIDTH // 8), generator=generator)
    timestep = 400
    model = tiny_model.model
    sigma = model.model_sampling.sigma(torch.tensor([float(timestep)]))
    y = model.encode_adm(pooled_output=pooled, width=WIDTH, height=HEIGHT, crop_w=0, crop_h=0)

    def comfy_eps(options: dict) -> torch.Tensor:
        transformer_options = {**options, "cond_or_uncond": [0], "sigmas": sigma}
        with torch.no_grad():
            return model.diffusion_model(
                x_t, torch.tensor([float(timestep)]), context=context, y=y, transformer_options=transformer_options
            )

    comfy_plain = comfy_eps(tiny_model.model_options["transformer_options"])
    comfy_patched = comfy_eps(patched.model_options["transformer_options"])

    attention = AdapterAttention(adapter)
    scheduler = diffusers_factories.sdxl_scheduler()
    denoiser = DiffusersDenoiser(twin, scheduler, attention, (HEIGHT, WIDTH))
    text = TextCondition(context, pooled)
    with torch.no_grad():
        host_plain = denoiser(x_t, torch.tensor([timestep]), text)
        with attention.using({Source.IMAGE: tokens}):
            host_patched = denoiser(x_t, torch.tensor([timestep]), text)

    torch.testing.assert_close(host_plain, comfy_plain, rtol=1e-4, atol=1e-4)  # same UNet, same time ids
    comfy_change, host_change = comfy_patched - comfy_plain, host_patched - host_plain
    assert comfy_change.abs().max() > 1e-2 * comfy_plain.abs().max()  # the adapter matters
    relative = (host_change - comfy_change).norm() / comfy_change.norm()
    assert relative < 1e-4, f"relative difference {relative:.2e}"
