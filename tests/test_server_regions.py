"""Tier 3: several people through a real server: the shipped two-person workflows, probed at a cross-attention layer.

The region image the tests install (region_assets.REGIONS_IMAGE) is 128 x 128: person 0 in red over image columns 0-47,
person 1 in green over columns 80-127, background between. The probe calls the first patched layer for a 16 x 16
latent, an 8 x 8 grid of 16 px tokens: person 0 owns token columns 0-2, person 1 columns 5-7, 3-4 are background.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from region_assets import REGIONS_IMAGE

from bolid_dev.workflows import load_api_workflow, upstream, with_tiny_models

FACEID = "facestudio_two_people_faceid"
FACE_AND_BODY = "facestudio_two_people_face_and_body"
GRID = 8
PERSON_0, PERSON_1, BACKGROUND = [0, 1, 2], [5, 6, 7], [3, 4]


def _only(workflow: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in workflow.items() if node["class_type"] == class_type]


def _with_drawn_regions(workflow: dict) -> dict:
    """The regions from the installed two-colour image (red: person 0, green: person 1), whatever made them before."""
    adds = _only(workflow, "BoLIDAddRegion")
    for person, (node_id, channel) in enumerate(zip(adds, ("red", "green"), strict=True)):
        mask_id = f"region_mask_{person}"
        workflow[mask_id] = {"class_type": "LoadImageMask", "inputs": {"image": REGIONS_IMAGE, "channel": channel}}
        workflow[node_id]["inputs"].update(mask=[mask_id, 0], mask_index=0)
    return workflow


def _probe(client, workflow: dict) -> np.ndarray:
    """The first patched layer's output for each token of the 8 x 8 grid: (8, 8, width)."""
    (apply_id,) = _only(workflow, "BoLIDApplyAdapter")
    probe = {
        "class_type": "BoLIDTestAttentionProbe",
        "inputs": {"model": [apply_id, 0], "layer": 0, "latent_width": 16, "latent_height": 16, "seed": 3},
    }
    prompt = upstream({**workflow, "probe": probe}, "probe")
    entry = client.run(prompt, timeout_s=600)
    (report,) = entry["outputs"]["probe"]["bolid_attention"]
    assert report["grid"] == [GRID, GRID]
    return np.asarray(report["output"], dtype=np.float64).reshape(GRID, GRID, -1)


def _person_1_face(workflow: dict) -> dict:
    """Node ids of person 1's face image, found through the graph: Add Region 1 <- Face Embed <- LoadImage."""
    second = _only(workflow, "BoLIDAddRegion")[1]
    embed = workflow[second]["inputs"]["face_embeds"][0]
    return workflow[workflow[embed]["inputs"]["images"][0]]["inputs"]


def _change(a: np.ndarray, b: np.ndarray, columns: list[int]) -> np.ndarray:
    return np.abs(a[:, columns] - b[:, columns]).max(axis=-1)


@pytest.mark.parametrize("name", [FACEID, FACE_AND_BODY])
def test_changing_one_persons_face_leaves_the_other_region_unchanged(client, name: str) -> None:
    workflow = _with_drawn_regions(with_tiny_models(load_api_workflow(name)))
    (apply_id,) = _only(workflow, "BoLIDApplyAdapter")
    workflow[apply_id]["inputs"]["region_background"] = "none"
    before = _probe(client, workflow)
    _person_1_face(workflow)["image"] = "bolid_face.png"  # person 1 now has person 0's face
    after = _probe(client, workflow)
    assert _change(before, after, PERSON_0).max() <= 1e-6, "person 0's region saw person 1's face change"
    assert _change(before, after, PERSON_1).min() > 1e-5, "person 1's region must follow person 1's face"
    assert _change(before, after, BACKGROUND).max() <= 1e-6, "background 'none' gets no identity"


@pytest.mark.parametrize("background", ["none", "average", "nearest"])
def test_background_tokens_follow_the_chosen_rule(client, background: str) -> None:
    workflow = _with_drawn_regions(with_tiny_models(load_api_workflow(FACE_AND_BODY)))
    (apply_id,) = _only(workflow, "BoLIDApplyAdapter")
    workflow[apply_id]["inputs"]["region_background"] = background
    before = _probe(client, workflow)
    second_body = workflow[_only(workflow, "BoLIDAddRegion")[1]]["inputs"]["body_id"][0]
    workflow[second_body]["inputs"]["body"] = "my_body.safetensors"  # person 1 now has person 0's body
    after = _probe(client, workflow)
    assert _change(before, after, PERSON_0).max() <= 1e-6, "person 0's region saw person 1's body change"
    assert _change(before, after, PERSON_1).min() > 1e-5, "person 1's region must follow person 1's body"
    column_3, column_4 = _change(before, after, [3]), _change(before, after, [4])
    if background == "none":
        weightless = json.loads(json.dumps(workflow))
        weightless[apply_id]["inputs"].update(face_weight=0.0, body_weight=0.0)
        unpatched = _probe(client, weightless)
        assert np.abs(after[:, BACKGROUND] - unpatched[:, BACKGROUND]).max() <= 1e-6, "background got an identity"
        assert column_3.max() <= 1e-6 and column_4.max() <= 1e-6
    elif background == "average":
        assert column_3.min() > 1e-6 and column_4.min() > 1e-6, "every identity reaches the background at 1/N"
    else:
        # Column 3 is nearer person 0 (column 2), column 4 nearer person 1 (column 5).
        assert column_3.max() <= 1e-6 and column_4.min() > 1e-6
