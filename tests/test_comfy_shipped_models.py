"""Tier comfy: the pack's shipped miniature models are an extra models/bolid folder. Combos route each kind of file
to its own loader (the base model only to the miniature loader, saved bodies only to Load Body ID), a user's folder
comes first, Save Body ID writes there, and Load Body ID reads a shipped body by its plain name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "miniature_models" / "bolid"


@pytest.fixture()
def bolid_folders(comfy_nodes, tmp_path):
    import folder_paths

    from bolid_core.comfy import folders

    saved = folder_paths.folder_names_and_paths.get("bolid")
    folder_paths.folder_names_and_paths["bolid"] = ([str(tmp_path)], {".safetensors"})
    folders.register_model_folders()  # adds the shipped folder after the user's
    folder_paths.filename_list_cache.clear()
    yield tmp_path
    folder_paths.folder_names_and_paths["bolid"] = saved
    folder_paths.filename_list_cache.clear()


def _options(node_class, name: str) -> list[str]:
    schema = node_class.define_schema()
    return next(item for item in schema.inputs if item.id == name).options


def test_shipped_folder_comes_after_the_users(bolid_folders) -> None:
    import folder_paths

    assert folder_paths.get_folder_paths("bolid") == [str(bolid_folders), str(SHIPPED)]


def test_each_loader_lists_only_its_own_files(comfy_nodes, bolid_folders) -> None:
    adapters = _options(comfy_nodes["BoLIDAdapterLoader"], "adapter_name")
    assert [choice for choice in adapters if choice.startswith("bolid/")] == [
        "bolid/bolid_miniature_adapter.safetensors",
        "bolid/bolid_miniature_adapter_body_vae.safetensors",
    ]
    assert _options(comfy_nodes["BoLIDBodyEncoderLoader"], "body_encoder") == [
        "bolid_miniature_adapter.safetensors",
        "bolid_miniature_adapter_body_vae.safetensors",
    ]
    assert _options(comfy_nodes["BoLIDMiniatureModelLoader"], "model_name") == ["bolid_miniature_base.safetensors"]
    assert _options(comfy_nodes["BoLIDLoadBodyID"], "body") == [
        "miniature_short_broad.safetensors",
        "miniature_tall_slim.safetensors",
    ]


def test_save_writes_to_the_users_folder_and_load_finds_shipped_bodies(comfy_nodes, bolid_folders) -> None:
    from bolid_core.body.body_id import BodyID, load_body_id

    (shipped,) = comfy_nodes["BoLIDLoadBodyID"].execute("miniature_tall_slim.safetensors").result
    expected = load_body_id(SHIPPED / "bodies" / "miniature_tall_slim.safetensors")
    assert torch.equal(shipped.c_body, expected.c_body) and shipped.encoder == expected.encoder
    body = BodyID(torch.arange(4.0)[None], 1, "e")
    (name,) = comfy_nodes["BoLIDSaveBodyID"].execute(body, "mine").result
    assert (bolid_folders / "bodies" / "mine.safetensors").is_file() and not (SHIPPED / "bodies" / name).exists()
    (loaded,) = comfy_nodes["BoLIDLoadBodyID"].execute(name).result
    assert torch.equal(loaded.c_body, body.c_body)
    with pytest.raises(FileNotFoundError, match="Saved body ID 'nobody' not found"):
        comfy_nodes["BoLIDLoadBodyID"].execute("nobody")
