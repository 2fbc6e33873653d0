"""Tier 2: the DCG guider on a tiny SDXL with an adapter: one UNet call per step, cond order, equivalences."""

from __future__ import annotations

import pytest
import torch
from adapter_factories import plain_ip_adapter
from safetensors.torch import save_file

from bolid_core.adapter import Source, load_adapter
from bolid_core.adapter.tokens import image_tokens
from bolid_core.guidance import DCGSchedule, DCGVariant

STEPS = 4


@pytest.fixture()
def id_model(tiny_model, tmp_path):
    from bolid_core.comfy.attn2 import AppliedSource, apply_adapter

    path = tmp_path / "faceid.safetensors"
    save_file({k: v.contiguous() for k, v in plain_ip_adapter().items()}, str(path))
    adapter = load_adapter(path)
    on, off = image_tokens(
        adapter, torch.randn(1, 1280, generator=torch.Generator().manual_seed(3)) * 3, torch.zeros(1, 1280)
    )
    return apply_adapter(tiny_model, adapter, [AppliedSource(Source.IMAGE, on, off, 1.0)])


def run(guider, seed: int = 0) -> torch.Tensor:
    import comfy.samplers

    latent = torch.zeros((1, 4, 16, 16))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    sigmas = guider.model_patcher.get_model_object("model_sampling").sigma_max * torch.linspace(1, 0, STEPS + 1) ** 2
    return guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=seed)


def dcg(model, variant=DCGVariant.ID_THEN_TEXT, alpha=(1, 1.5, 1.5, 1), beta=(1, 3, 3, 1), phi=0.75, ends=True):
    from bolid_test_models.tiny_models import tiny_conditioning

    from bolid_core.comfy.dcg_guider import DCGGuider, DCGSettings

    guider = DCGGuider(model)
    guider.set_conds(tiny_conditioning(1), tiny_conditioning(2))
    guider.set_settings(DCGSettings(variant, list(alpha), list(beta), phi, ends))
    return guider


def test_one_unet_call_per_step(id_model) -> None:
    calls: list[int] = []

    def counting(apply_model, args):
        calls.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted = id_model.clone()
    counted.set_model_unet_function_wrapper(counting)
    run(dcg(counted, phi=0.75))
    assert len(calls) == STEPS
    assert calls == [1, 3, 3, 1], "ends run only eps(text, id); the middle steps batch all three branches"


def test_cond_order_in_the_batch_does_not_matter(id_model, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = run(dcg(id_model))
    original = DCGSchedule.needed_branches
    monkeypatch.setattr(DCGSchedule, "needed_branches", lambda self, step: list(reversed(original(self, step))))
    torch.testing.assert_close(run(dcg(id_model)), reference, rtol=1e-5, atol=1e-5)


def test_alpha_beta_one_without_rescale_is_plain_conditional(id_model) -> None:
    import comfy.samplers
    from bolid_test_models.tiny_models import tiny_conditioning

    plain = comfy.samplers.CFGGuider(id_model)
    plain.set_conds(tiny_conditioning(1), tiny_conditioning(2))
    plain.set_cfg(1.0)
    expected = run(plain)
    for variant in (DCGVariant.ID_THEN_TEXT, DCGVariant.TEXT_THEN_ID):  # SEPARATE gives I + T - E there
        torch.testing.assert_close(
            run(dcg(id_model, variant, (1,) * 4, (1,) * 4, 0.0, False)), expected, rtol=1e-5, atol=1e-5
        )


def test_dcg_differs_from_plain_and_uses_the_id_switch(id_model, tiny_model) -> None:
    with_id = run(dcg(id_model))
    without_adapter = run(dcg(tiny_model))
    assert (with_id - without_adapter).abs().max() > 1e-3
