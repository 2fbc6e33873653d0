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


def pack_manipulation_class(comfy_nodes: dict):
    import sys

    module = sys.modules[comfy_nodes["BoLIDFastFaceAttention"].__module__]
    return sys.modules[module.manipulation_for.__module__].AttentionManipulation


def am(comfy_nodes: dict, model, preset: str = "AM2 (published)"):
    (patched,) = comfy_nodes["BoLIDFastFaceAttention"].execute(
        model, preset=preset, source="image", down_blocks=True, mid_block=False, up_blocks=True,
        scale_down=1.45, scale_mid=1.55, scale_up=1.55, power=1.3, quantile=0.65, sharpness="7.5, 5",
        adain_weight=0.7, invert_first_token=True,
    ).result  # fmt: skip
    return patched


def test_am_changes_the_result_and_leaves_the_input_model(comfy_nodes: dict, node_id_model) -> None:
    baseline = run(dcg(node_id_model))
    for preset in ("AM1 (published)", "AM2 (published)"):
        assert (run(dcg(am(comfy_nodes, node_id_model, preset))) - baseline).abs().max() > 1e-4
    torch.testing.assert_close(run(dcg(node_id_model)), baseline, rtol=0, atol=0)


def test_schedule_steps_come_from_sigma_once_per_layer_and_call(
    comfy_nodes: dict, node_id_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    manipulation_class = pack_manipulation_class(comfy_nodes)
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
