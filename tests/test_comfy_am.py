"""Tier 2: FastFace AM on an applied adapter, with DCG, on a tiny SDXL; schedules follow the sampler's sigma."""

from __future__ import annotations

import pytest
import torch
from adapter_factories import plain_ip_adapter
from safetensors.torch import save_file
from test_comfy_dcg import STEPS, dcg, run


@pytest.fixture()
def node_id_model(comfy_nodes: dict, tiny_model, tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A tiny SDXL with an adapter applied by the pack's own nodes (the classes ComfyUI loaded)."""
    import folder_paths
    from bolid_test_models.tiny_models import tiny_clip_vision

    save_file({k: v.contiguous() for k, v in plain_ip_adapter(clip_dim=1024).items()}, str(tmp_path / "a.safetensors"))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ipadapter", ([str(tmp_path)], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    (adapter,) = comfy_nodes["BoLIDAdapterLoader"].execute("ipadapter/a.safetensors").result
    image = torch.rand((1, 64, 64, 3), generator=torch.Generator().manual_seed(2))
    (model,) = comfy_nodes["BoLIDApplyAdapter"].execute(
        tiny_model, adapter, image_weight=1.0, face_weight=1.0, body_weight=1.0, start_at=0.0, end_at=1.0,
        combine_references="average", faceid_v2_shortcut=1.0, clip_vision=tiny_clip_vision(), image=image,
    ).result  # fmt: skip
    return model


def pack_manipulation_module(comfy_nodes: dict):
    import sys

    module = sys.modules[comfy_nodes["BoLIDFastFaceAttention"].__module__]
    return sys.modules[module.manipulation_for.__module__]


PUBLISHED_INPUTS = {
    "down_blocks": True,
    "mid_block": False,
    "up_blocks": True,
    "am1_scale_down": 1.55,
    "am1_scale_mid": 1.0,
    "am1_scale_up": 1.45,
    "am1_power": 1.3,
    "am2_scale": "1.0, 1.55",
    "am2_sharpness": "7.5, 5.0",
    "am2_quantile": 0.65,
    "am2_adain_weight": 0.7,
    "am2_invert_first_token": True,
}  # fmt: skip  (src/custom_dca.py and configs/fastface/am{1,2}_and_dcg.json of the authors' code)


def am(comfy_nodes: dict, model, preset: str = "AM2 (published)", **changes):
    inputs = PUBLISHED_INPUTS | changes
    (patched,) = comfy_nodes["BoLIDFastFaceAttention"].execute(model, preset=preset, source="image", **inputs).result
    return patched


def bound_manipulation(model):
    """The AM settings the pack's attn2 patches of `model` carry for the image source."""
    patches = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    found = {
        id(s.manipulation): s.manipulation
        for patch in patches.values()
        for s in patch.applied.sources
        if s.manipulation is not None
    }
    assert len(found) == 1, "every layer must carry the same settings"
    return next(iter(found.values()))


def test_am_changes_the_result_and_leaves_the_input_model(comfy_nodes: dict, node_id_model) -> None:
    baseline = run(dcg(node_id_model))
    for preset in ("AM1 (published)", "AM2 (published)"):
        assert (run(dcg(am(comfy_nodes, node_id_model, preset))) - baseline).abs().max() > 1e-4
    torch.testing.assert_close(run(dcg(node_id_model)), baseline, rtol=0, atol=0)


def test_schedule_steps_come_from_sigma_once_per_layer_and_call(
    comfy_nodes: dict, node_id_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    manipulation_class = pack_manipulation_module(comfy_nodes).AttentionManipulation
    seen: list[tuple[str, int]] = []
    original = manipulation_class.bind

    def recording(self, block: str, step: int):
        seen.append((block, step))
        return original(self, block, step)

    monkeypatch.setattr(manipulation_class, "bind", recording)
    run(dcg(am(comfy_nodes, node_id_model)))
    layers = 11
    assert [step for _, step in seen] == [step for step in range(STEPS) for _ in range(layers)]
    assert sum(block == "middle" for block, _ in seen) == STEPS


def test_am_without_an_adapter_is_a_clear_error(comfy_nodes: dict, tiny_model) -> None:
    with pytest.raises(ValueError, match="apply an ID adapter first"):
        am(comfy_nodes, tiny_model)


def test_node_defaults_are_the_published_values(comfy_nodes: dict) -> None:
    defaults = {i.id: getattr(i, "default", None) for i in comfy_nodes["BoLIDFastFaceAttention"].define_schema().inputs}
    assert {name: defaults[name] for name in PUBLISHED_INPUTS} == PUBLISHED_INPUTS


def test_published_presets_carry_the_authors_values(comfy_nodes: dict, node_id_model) -> None:
    am1 = bound_manipulation(am(comfy_nodes, node_id_model, "AM1 (published)", am1_scale_up=3.0, up_blocks=False))
    assert dict(am1.scales) == {"input": (1.55,), "output": (1.45,)} and am1.power == 1.3
    assert am1.adain_weight is None
    am2 = bound_manipulation(am(comfy_nodes, node_id_model, "AM2 (published)", am2_scale="2", mid_block=True))
    assert dict(am2.scales) == {"input": (1.0, 1.55), "output": (1.0, 1.55)}
    assert (am2.sharpness, am2.quantile, am2.adain_weight, am2.invert_first_token) == ((7.5, 5.0), 0.65, 0.7, True)


def test_custom_presets_use_the_inputs_and_default_to_the_published_run(comfy_nodes: dict, node_id_model) -> None:
    am1 = bound_manipulation(
        am(comfy_nodes, node_id_model, "AM1 custom", mid_block=True, up_blocks=False, am1_scale_mid=2.5, am1_power=2.0)
    )
    assert dict(am1.scales) == {"input": (1.55,), "middle": (2.5,)} and am1.power == 2.0
    am2 = bound_manipulation(
        am(comfy_nodes, node_id_model, "AM2 custom", down_blocks=False, am2_scale="0.5; 1; 2", am2_sharpness="9",
           am2_quantile=0.3, am2_adain_weight=1.0, am2_invert_first_token=False)
    )  # fmt: skip
    assert dict(am2.scales) == {"output": (0.5, 1.0, 2.0)} and am2.sharpness == (9.0,) and am2.quantile == 0.3
    assert am2.adain_weight is None and not am2.invert_first_token
    for kind in ("AM1", "AM2"):
        published = run(dcg(am(comfy_nodes, node_id_model, f"{kind} (published)")))
        torch.testing.assert_close(
            run(dcg(am(comfy_nodes, node_id_model, f"{kind} custom"))), published, rtol=0, atol=0
        )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"am1_scale_down": float("nan")}, "am1_scale_down is nan: give a finite number between 0.0 and 10.0"),
        ({"am1_scale_up": float("inf")}, "am1_scale_up is inf: give a finite number"),
        ({"am1_scale_mid": -0.1}, "am1_scale_mid is -0.1: give a number between 0.0 and 10.0"),
        ({"am1_power": 0.0}, "am1_power is 0.0"),
        ({"am2_quantile": 1.5}, "am2_quantile is 1.5"),
        ({"am2_adain_weight": float("nan")}, "am2_adain_weight is nan"),
        ({"am2_scale": "1.0, nan"}, "am2_scale holds nan: every value must be a finite number"),
        ({"am2_scale": "1.0, -1"}, "am2_scale holds -1: every value must be a finite number at least 0 and at most 10"),
        ({"am2_scale": "1.0, 12"}, "am2_scale holds 12"),
        ({"am2_scale": "1.0 1.55"}, "am2_scale '1.0 1.55' is not a list of numbers"),
        ({"am2_sharpness": "7.5, 0"}, "am2_sharpness holds 0: every value must be a finite number above 0"),
        ({"am2_sharpness": "inf"}, "am2_sharpness holds inf"),
        ({"am2_sharpness": ""}, "am2_sharpness is empty: give one number"),
    ],
)
def test_node_refuses_bad_numbers_naming_the_input(comfy_nodes: dict, changes, message) -> None:
    import re

    node = comfy_nodes["BoLIDFastFaceAttention"]
    typed = {name: value for name, value in (PUBLISHED_INPUTS | changes).items() if name.startswith(("am1_", "am2_"))}
    typed.pop("am2_invert_first_token")
    problem = node.validate_inputs(**typed)
    assert isinstance(problem, str) and re.search(message, problem), problem
    assert node.validate_inputs(**dict.fromkeys(typed)) is True, "links are checked in execute"
    with pytest.raises(ValueError, match=message):  # the same value arriving over a link; checked before the model
        am(comfy_nodes, None, "AM2 (published)", **changes)
