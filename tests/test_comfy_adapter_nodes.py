"""Tier 2: the adapter nodes as ComfyUI loaded them: cache fingerprints of adapter files, number checks."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch
from adapter_factories import plain_ip_adapter
from safetensors.torch import save_file

CHOICE = "ipadapter/a.safetensors"


@pytest.fixture()
def adapter_folder(comfy_nodes: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ipadapter", ([str(tmp_path)], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    write_adapter(tmp_path / "a.safetensors", seed=0)
    return tmp_path


def write_adapter(path: Path, seed: int, mtime_ns: int | None = None) -> None:
    save_file({key: value.contiguous() for key, value in plain_ip_adapter(clip_dim=1024, seed=seed).items()}, str(path))
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_replaced_or_deleted_adapter_file_changes_the_fingerprint(comfy_nodes: dict, adapter_folder: Path) -> None:
    from comfy_api.internal import first_real_override

    loader = comfy_nodes["BoLIDAdapterLoader"]
    assert first_real_override(loader, "fingerprint_inputs") is not None, "ComfyUI would never re-check the file"
    path = adapter_folder / "a.safetensors"
    os.utime(path, ns=(10**18, 10**18))
    original = loader.fingerprint_inputs(adapter_name=CHOICE)
    assert loader.fingerprint_inputs(adapter_name=CHOICE) == original, "an unchanged file must stay cached"
    write_adapter(path, seed=1, mtime_ns=10**18 + 10**9)  # same size, new weights
    replaced = loader.fingerprint_inputs(adapter_name=CHOICE)
    assert replaced != original
    path.unlink()
    assert loader.fingerprint_inputs(adapter_name=CHOICE) not in (original, replaced)
    with pytest.raises(FileNotFoundError, match=r"'a\.safetensors' is not in models/ipadapter .* Put the file there"):
        loader.execute(CHOICE)


def apply_inputs(**overrides) -> dict:
    numbers = {
        "image_weight": 1.0, "face_weight": 1.0, "body_weight": 1.0, "start_at": 0.0, "end_at": 1.0,
        "faceid_v2_shortcut": 1.0,
    }  # fmt: skip
    return {**numbers, **overrides}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("start_at", math.nan, r"start_at is nan: give a finite number between 0\.0 and 1\.0"),
        ("end_at", math.nan, r"end_at is nan: give a finite number between 0\.0 and 1\.0"),
        ("image_weight", math.inf, r"image_weight is inf: give a finite number between -1\.0 and 5\.0"),
        ("face_weight", 7.0, r"face_weight is 7\.0: give a number between -1\.0 and 5\.0"),
        ("body_weight", -math.inf, r"body_weight is -inf"),
        ("faceid_v2_shortcut", math.nan, r"faceid_v2_shortcut is nan"),
        ("start_at", 1.5, r"start_at is 1\.5: give a number between 0\.0 and 1\.0"),
    ],
)
def test_apply_adapter_numbers_are_checked(comfy_nodes, adapter_folder, tiny_model, name, value, message) -> None:
    apply = comfy_nodes["BoLIDApplyAdapter"]
    assert apply.validate_inputs(**apply_inputs()) is True
    problem = apply.validate_inputs(**apply_inputs(**{name: value}))
    assert isinstance(problem, str) and re.search(message, problem), problem
    # The same value arriving over a link reaches execute: a clear ValueError, not an IndexError deep in ComfyUI.
    (adapter,) = comfy_nodes["BoLIDAdapterLoader"].execute(CHOICE).result
    image = torch.rand((1, 64, 64, 3), generator=torch.Generator().manual_seed(2))
    from bolid_test_models.tiny_models import tiny_clip_vision

    with pytest.raises(ValueError, match=message):
        apply.execute(
            tiny_model, adapter, combine_references="average", clip_vision=tiny_clip_vision(), image=image,
            **apply_inputs(**{name: value}),
        )  # fmt: skip


def test_apply_adapter_order_of_window_and_links_not_yet_known(comfy_nodes: dict) -> None:
    apply = comfy_nodes["BoLIDApplyAdapter"]
    assert "after end_at" in apply.validate_inputs(**apply_inputs(start_at=0.8, end_at=0.2))
    # During validation a linked input is None: only the typed-in values are checked.
    assert apply.validate_inputs(**apply_inputs(start_at=None, image_weight=None)) is True


def test_style_composition_checks_its_numbers_and_window(comfy_nodes: dict) -> None:
    node = comfy_nodes["BoLIDApplyStyleComposition"]
    numbers = {"weight_style": 1.0, "weight_composition": 0.5, "start_at": 0.0, "end_at": 1.0}
    assert node.validate_inputs(**numbers) is True
    assert node.validate_inputs(**{**numbers, "start_at": 0.9, "end_at": 0.1}) == (
        "start_at (0.9) is after end_at (0.1): swap them."
    )
    problem = node.validate_inputs(**{**numbers, "weight_composition": math.nan})
    assert isinstance(problem, str) and problem.startswith("weight_composition is nan"), problem
    assert node.validate_inputs(**{**numbers, "start_at": None, "end_at": 0.1}) is True  # start_at over a link


def test_core_refuses_a_nan_window_and_bad_masks_with_clear_messages(tiny_model, adapter_folder) -> None:
    from bolid_core.adapter import Source, load_adapter
    from bolid_core.adapter.tokens import ReferenceCombine
    from bolid_core.comfy.sources import SourceInputs, applied_sources

    adapter = load_adapter(adapter_folder / "a.safetensors")
    weights = {Source.IMAGE: 1.0, Source.FACE: 1.0, Source.BODY: 1.0}

    def inputs(start=0.0, end=1.0, mask=None):
        image = torch.rand((1, 64, 64, 3))
        return SourceInputs(None, image, None, None, weights, start, end, ReferenceCombine.AVERAGE, mask)

    with pytest.raises(ValueError, match=r"start percent is nan: give a number from 0 to 1"):
        applied_sources(tiny_model, adapter, inputs(start=math.nan))
    with pytest.raises(ValueError, match=r"end percent is nan"):
        applied_sources(tiny_model, adapter, inputs(end=math.nan))
    with pytest.raises(ValueError, match=r"start \(0\.8\) is after end \(0\.2\): swap start_at and end_at"):
        applied_sources(tiny_model, adapter, inputs(start=0.8, end=0.2))
    with pytest.raises(ValueError, match=r"attn_mask has shape \(1, 1, 8, 8\): give a MASK"):
        applied_sources(tiny_model, adapter, inputs(mask=torch.ones(1, 1, 8, 8)))
    with pytest.raises(ValueError, match=r"attn_mask has NaN or infinite values"):
        applied_sources(tiny_model, adapter, inputs(mask=torch.full((8, 8), math.nan)))
