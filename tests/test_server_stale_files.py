"""Tier 3: a real server keeps no result made from a file that was replaced or deleted, and refuses NaN numbers."""

from __future__ import annotations

import math

import pytest
import torch

from bolid_core.body import BodyID, load_body_id, save_body_id
from bolid_dev.client import WorkflowError


def load_then_save(source: str, copy_name: str) -> dict:
    """Load Body ID -> Save Body ID: the saved copy shows which body the load node produced."""
    return {
        "1": {"class_type": "BoLIDLoadBodyID", "inputs": {"body": source}},
        "2": {"class_type": "BoLIDSaveBodyID", "inputs": {"body_id": ["1", 0], "name": copy_name}},
    }


def test_load_body_id_follows_a_replaced_then_deleted_file(client, comfy_server) -> None:
    bodies = comfy_server.base_directory / "models" / "bolid" / "bodies"
    source, copy = bodies / "stale_test.safetensors", bodies / "stale_copy.safetensors"
    save_body_id(BodyID(torch.zeros(1, 16), 1, "abc"), source)
    client.run(load_then_save("stale_test.safetensors", "stale_copy"), timeout_s=120)
    torch.testing.assert_close(load_body_id(copy).c_body, torch.zeros(1, 16))

    save_body_id(BodyID(torch.full((1, 16), 2.0), 1, "abc"), source)  # same name and size, new contents
    client.run(load_then_save("stale_test.safetensors", "stale_copy"), timeout_s=120)
    torch.testing.assert_close(load_body_id(copy).c_body, torch.full((1, 16), 2.0))

    source.unlink()
    with pytest.raises(WorkflowError, match=r"stale_test\.safetensors"):
        client.run(load_then_save("stale_test.safetensors", "stale_copy"), timeout_s=120)


def test_nan_blend_weight_is_refused_before_anything_runs(client, comfy_server) -> None:
    bodies = comfy_server.base_directory / "models" / "bolid" / "bodies"
    save_body_id(BodyID(torch.ones(1, 16), 1, "abc"), bodies / "blend_a.safetensors")
    prompt = {
        "1": {"class_type": "BoLIDLoadBodyID", "inputs": {"body": "blend_a.safetensors"}},
        "2": {
            "class_type": "BoLIDBlendBodyIDs",
            "inputs": {"body_a": ["1", 0], "body_b": ["1", 0], "weight_b": math.nan},
        },
        "3": {"class_type": "BoLIDSaveBodyID", "inputs": {"body_id": ["2", 0], "name": "nan_blend"}},
    }
    with pytest.raises(WorkflowError, match=r"(?s)HTTP 400.*weight_b is nan"):
        client.queue(prompt)
    assert not (bodies / "nan_blend.safetensors").exists()
