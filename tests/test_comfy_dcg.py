"""Tier 2: the DCG guider on a tiny SDXL with an adapter: one UNet call per step, cond order, equivalences, and the
node's wiring checked step by step against branches computed one by one."""

from __future__ import annotations

import pytest
import torch
from adapter_factories import plain_ip_adapter
from safetensors.torch import save_file

from bolid_core.adapter import Source, load_adapter
from bolid_core.adapter.tokens import image_tokens
from bolid_core.guidance import DCGSchedule, DCGVariant, EndSteps

STEPS = 4
NODE = "BoLIDDecoupledCFGGuider"


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


def sigmas_for(guider) -> torch.Tensor:
    return guider.model_patcher.get_model_object("model_sampling").sigma_max * torch.linspace(1, 0, STEPS + 1) ** 2


def run(guider, seed: int = 0) -> torch.Tensor:
    import comfy.samplers

    latent = torch.zeros((1, 4, 16, 16))
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    sampler = comfy.samplers.sampler_object("euler")
    return guider.sample(noise, latent, sampler, sigmas_for(guider), disable_pbar=True, seed=seed)


def dcg(
    model, variant=DCGVariant.ID_THEN_TEXT, alpha=(1, 1.5, 1.5, 1), beta=(1, 3, 3, 1), phi=0.75,
    end_steps=EndSteps.PUBLISHED,
):  # fmt: skip
    from bolid_test_models.tiny_models import tiny_conditioning

    from bolid_core.comfy.dcg_guider import DCGGuider, DCGSettings

    guider = DCGGuider(model)
    guider.set_conds(tiny_conditioning(1), tiny_conditioning(2))
    guider.set_settings(DCGSettings(variant, list(alpha), list(beta), phi, end_steps))
    return guider


def node_guider(comfy_nodes: dict, model, **inputs):
    from bolid_test_models.tiny_models import tiny_conditioning

    values = {"variant": "id_then_text", "alpha": "1, 1.5, 1.5, 1", "beta": "1, 3, 3, 1", "rescale_phi": 0.75}
    values.update(inputs)
    (guider,) = comfy_nodes[NODE].execute(model, tiny_conditioning(1), tiny_conditioning(2), **values).result
    return guider


def unet_calls(model, guider_for) -> list[int]:
    calls: list[int] = []

    def counting(apply_model, args):
        calls.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted = model.clone()
    counted.set_model_unet_function_wrapper(counting)
    run(guider_for(counted))
    return calls


def test_one_unet_call_per_step(id_model) -> None:
    assert unet_calls(id_model, dcg) == [2, 3, 3, 2], "published ends: eps(∅, id) and eps(text, id) for the rescale"
    plain_ends = unet_calls(id_model, lambda model: dcg(model, end_steps=EndSteps.PLAIN_CONDITIONAL))
    assert plain_ends == [1, 3, 3, 1], "plain_conditional ends run only eps(text, id)"


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
        torch.testing.assert_close(run(dcg(id_model, variant, (1,) * 4, (1,) * 4, 0.0)), expected, rtol=1e-5, atol=1e-5)


def test_dcg_differs_from_plain_and_uses_the_id_switch(id_model, tiny_model) -> None:
    with_id = run(dcg(id_model))
    without_adapter = run(dcg(tiny_model))
    assert (with_id - without_adapter).abs().max() > 1e-3


# --- the node, step by step, against the paper's formulas on separately computed branches ----------------------------

ALPHA, BETA, PHI = [1.0, 1.7, 1.2, 1.0], [1.0, 2.6, 3.1, 1.0], 0.6


def expected_eps(variant: str, end_steps: str, step: int, eps: dict, alpha=ALPHA, beta=BETA) -> torch.Tensor:
    """Paper eqs. 16-18 (the authors' dcg_type 3, 1, 2) and their std rescale, written out."""
    e, i, t, ti = eps["E"], eps["I"], eps["T"], eps["TI"]
    if end_steps == "plain_conditional" and step in (0, STEPS - 1):
        return ti
    a, b = alpha[step], beta[step]
    if variant == "id_then_text":
        guided, first, second = e + a * (i - e) + b * (ti - i), i, ti
    elif variant == "text_then_id":
        guided, first, second = e + a * (t - e) + b * (ti - t), t, ti
    else:
        guided, first, second = e + a * (t - e) + b * (i - e), t, i
    factor = (first.std() + second.std()) / (2 * guided.std())  # batch of one latent
    return PHI * factor * guided + (1 - PHI) * guided


def record_steps(guider) -> list[dict]:
    """Runs the guider; at each step also computes the four branches, one UNet call each, ID on or off by hand."""
    import comfy.samplers

    from bolid_core.comfy.attn2 import SOURCE_SWITCH_KEY

    records: list[dict] = []
    original = guider.predict_noise

    def recording(x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
        result = original(x, timestep, model_options, seed)
        sigma = timestep.reshape(-1, 1, 1, 1)
        eps = {}
        for name, cond, id_on in (("E", "negative", False), ("I", "negative", True), ("T", "positive", False),
                                  ("TI", "positive", True)):  # fmt: skip
            transformer_options = {**model_options["transformer_options"], SOURCE_SWITCH_KEY: {0: {"id": id_on}}}
            options = {**model_options, "transformer_options": transformer_options}
            (denoised,) = comfy.samplers.calc_cond_batch(guider.inner_model, [guider.conds[cond]], x, timestep, options)
            eps[name] = (x - denoised) / sigma
        records.append({"x": x, "sigma": sigma, "result": result, "eps": eps})
        return result

    guider.predict_noise = recording
    run(guider)
    return records


@pytest.mark.parametrize(
    ("variant", "end_steps"),
    [("id_then_text", "published"), ("text_then_id", "published"), ("separate", "published"),
     ("separate", "plain_conditional")],
)  # fmt: skip
def test_node_follows_the_formula_of_each_variant(comfy_nodes: dict, id_model, variant: str, end_steps: str) -> None:
    guider = node_guider(
        comfy_nodes, id_model, variant=variant, alpha="1, 1.7, 1.2, 1", beta="1, 2.6, 3.1, 1", rescale_phi=PHI,
        end_steps=end_steps,
    )  # fmt: skip
    records = record_steps(guider)
    assert len(records) == STEPS
    for step, record in enumerate(records):
        x, sigma, eps = record["x"], record["sigma"], record["eps"]
        expected = x - expected_eps(variant, end_steps, step, eps) * sigma
        torch.testing.assert_close(record["result"], expected, rtol=1e-4, atol=1e-4, msg=f"step {step}")
        if step in (1, 2):  # the test can tell alpha from beta
            swapped = x - expected_eps(variant, end_steps, step, eps, alpha=BETA, beta=ALPHA) * sigma
            assert (record["result"] - swapped).abs().max() > 1e-2


def test_node_defaults_are_the_published_preset(comfy_nodes: dict) -> None:
    inputs = {i.id: i for i in comfy_nodes[NODE].define_schema().inputs}
    assert inputs["variant"].default == "id_then_text"
    assert (inputs["alpha"].default, inputs["beta"].default) == ("1, 1.5, 1.5, 1", "1, 3, 3, 1")
    assert inputs["rescale_phi"].default == 0.75
    assert inputs["end_steps"].default == "published"
    assert inputs["end_steps"].options == ["published", "plain_conditional"]
    assert "eps(text,∅) - eps(∅,∅)" in inputs["alpha"].tooltip.split("text_then_id:")[1].split(";")[0]
    assert "eps(∅,id) - eps(∅,∅)" in inputs["beta"].tooltip.split("separate:")[1]


def test_node_refuses_numbers_that_are_not_finite(comfy_nodes: dict, id_model) -> None:
    node = comfy_nodes[NODE]
    assert node.validate_inputs(alpha="1, 1.5, 1.5, 1", beta="1, 3, 3, 1", rescale_phi=0.75) is True
    assert node.validate_inputs(alpha=None, beta=None, rescale_phi=None) is True, "linked values are checked later"
    assert "not a finite number" in node.validate_inputs(alpha="1, nan, 1.5, 1", beta="1", rescale_phi=0.75)
    assert "not a finite number" in node.validate_inputs(alpha="1", beta="inf", rescale_phi=0.75)
    assert "rescale_phi" in node.validate_inputs(alpha="1", beta="1", rescale_phi=float("nan"))
    assert "rescale_phi" in node.validate_inputs(alpha="1", beta="1", rescale_phi=1.5)
    with pytest.raises(ValueError, match="rescale_phi"):
        node_guider(comfy_nodes, id_model, rescale_phi=float("inf"))
    with pytest.raises(ValueError, match="not a finite number"):
        node_guider(comfy_nodes, id_model, beta="1, 3, nan, 1")
    with pytest.raises(ValueError, match="end_steps 'ends' is not known"):
        node_guider(comfy_nodes, id_model, end_steps="ends")


def test_schedule_longer_than_the_sampler_is_a_clear_error(comfy_nodes: dict, id_model) -> None:
    with pytest.raises(ValueError, match=f"alpha has 5 values for {STEPS} steps"):
        run(node_guider(comfy_nodes, id_model, alpha="1, 1.5, 1.5, 1.5, 1"))
