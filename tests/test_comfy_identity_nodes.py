"""Tier 2: the identity nodes (mix several people, many photos of one person) in the ComfyUI that loaded the pack.

Expected values are the weighted sums written plainly; prompt validation and node execution run through ComfyUI's
own execution module.
"""

from __future__ import annotations

import asyncio
import sys

import pytest
import torch

NODE_IDS = ("BoLIDIdentityMix", "BoLIDFacesOfOnePerson")


@pytest.fixture()
def identity_nodes(comfy_nodes: dict) -> dict:
    """The identity node classes as the pack registered them with ComfyUI."""
    return {node_id: comfy_nodes[node_id] for node_id in NODE_IDS}


def pack_classes(identity_nodes: dict):
    """FaceEmbeds and BodyID as the loaded pack defines them (its own module copies)."""
    module = sys.modules[identity_nodes["BoLIDIdentityMix"].__module__]
    return module.FaceEmbeds, module.BodyID


def faces(face_embeds_class, count: int, seed: int, norms: list[float] | None = None):
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn((count, 8), generator=generator)
    return face_embeds_class(
        arcface=raw / raw.norm(dim=-1, keepdim=True),
        crops=torch.rand((count, 4, 4, 3), generator=generator),
        norms=torch.tensor(norms) if norms is not None else None,
    )


def validate(node_id: str, inputs: dict) -> tuple[bool, list]:
    """Node "1" of a prompt, as ComfyUI validates it when queued; node "0", an identity mix, can feed it faces."""
    import execution

    source = {"class_type": "BoLIDIdentityMix", "inputs": {f"weight_{slot}": 1.0 for slot in range(1, 5)}}
    prompt = {"0": source, "1": {"class_type": node_id, "inputs": inputs}}
    valid, errors, _ = asyncio.run(execution.validate_inputs("test", prompt, "1", {}))
    return valid, errors


def run_node(node_class, inputs: dict):
    """(outputs, ui) as ComfyUI's executor gets them from the node."""
    import execution

    output, ui, _, _ = asyncio.run(
        execution.get_output_data("test", "1", node_class(), {name: [value] for name, value in inputs.items()})
    )
    return [values[0] for values in output], ui


def test_schemas(identity_nodes: dict) -> None:
    mix = identity_nodes["BoLIDIdentityMix"].GET_SCHEMA()
    assert (mix.display_name, mix.category) == ("BoLID Identity Mix", "BoLID/identity")
    assert "Σ β_i·e_i" in mix.description
    expected = [f"{kind}_{slot}" for slot in range(1, 5) for kind in ("face_embeds", "body_id", "weight")]
    assert [i.id for i in mix.inputs] == expected
    weights = [i for i in mix.inputs if i.id.startswith("weight_")]
    assert {(i.default, i.min, i.max) for i in weights} == {(1.0, 0.0, 10.0)}
    assert all(i.optional for i in mix.inputs if not i.id.startswith("weight_"))
    assert [o.display_name for o in mix.outputs] == ["face_embeds", "body_id"]

    photos = identity_nodes["BoLIDFacesOfOnePerson"].GET_SCHEMA()
    assert (photos.display_name, photos.category) == ("BoLID Faces Of One Person", "BoLID/identity")
    by_id = {i.id: i for i in photos.inputs}
    assert by_id["combine"].options == ["average", "norm_weighted"]
    assert by_id["drop_outliers"].default is False
    assert (by_id["outlier_below"].min, by_id["outlier_below"].max) == (-1.0, 1.0)
    assert [o.display_name for o in photos.outputs] == ["face_embeds", "report"]


def test_identity_mix_is_the_weighted_sum_of_its_slots(identity_nodes: dict) -> None:
    face_embeds_class, body_id_class = pack_classes(identity_nodes)
    face_1, face_3 = faces(face_embeds_class, 1, seed=1), faces(face_embeds_class, 2, seed=3)
    body_1 = body_id_class(torch.tensor([[1.0, -2.0]]), 1, "enc")
    body_2 = body_id_class(torch.tensor([[5.0, 4.0]]), 1, "enc")
    inputs = {
        "weight_1": 1.0, "weight_2": 3.0, "weight_3": 2.0, "weight_4": 7.0,  # slot 4 is empty: ignored
        "face_embeds_1": face_1, "body_id_1": body_1, "body_id_2": body_2, "face_embeds_3": face_3,
    }  # fmt: skip
    (face, body), _ = run_node(identity_nodes["BoLIDIdentityMix"], inputs)

    # Faces over slots 1 and 3 (1 : 2; slot 3's two photos half each), bodies over slots 1 and 2 (1 : 3).
    expected_face = (1 / 3) * face_1.arcface[0] + (2 / 3) * (0.5 * face_3.arcface[0] + 0.5 * face_3.arcface[1])
    torch.testing.assert_close(face.mix(face.arcface)[0], expected_face, atol=1e-6, rtol=0)
    torch.testing.assert_close(face.weights, torch.tensor([1 / 3, 1 / 3, 1 / 3]))
    assert body.c_body[0].tolist() == pytest.approx([(1.0 + 3 * 5.0) / 4, (-2.0 + 3 * 4.0) / 4])


def test_identity_mix_outputs_nothing_for_a_kind_no_slot_has(identity_nodes: dict) -> None:
    _, body_id_class = pack_classes(identity_nodes)
    body = body_id_class(torch.tensor([[1.0, 2.0]]), 1, "enc")
    weights = {f"weight_{slot}": 1.0 for slot in range(1, 5)}
    (face, mixed), _ = run_node(identity_nodes["BoLIDIdentityMix"], {**weights, "body_id_2": body})
    assert face is None and mixed.c_body.tolist() == [[1.0, 2.0]]


def test_identity_mix_refuses_empty_slots_and_bad_weights(identity_nodes: dict) -> None:
    node = identity_nodes["BoLIDIdentityMix"]
    face_embeds_class, _ = pack_classes(identity_nodes)
    weights = {f"weight_{slot}": 1.0 for slot in range(1, 5)}
    with pytest.raises(ValueError, match="No identity to mix"):
        node.execute(**weights)
    with pytest.raises(ValueError, match="weight_2 is nan"):  # a NaN that came over a link
        node.execute(**{**weights, "weight_2": float("nan")}, face_embeds_1=faces(face_embeds_class, 1, seed=1))
    with pytest.raises(ValueError, match="Every weight of the identities with a face is 0"):
        node.execute(**{**weights, "weight_1": 0.0}, face_embeds_1=faces(face_embeds_class, 1, seed=1))


def test_prompt_validation_catches_a_typed_in_nan_weight(identity_nodes: dict) -> None:
    weights = {f"weight_{slot}": 1.0 for slot in range(1, 5)}
    assert validate("BoLIDIdentityMix", weights) == (True, [])
    valid, errors = validate("BoLIDIdentityMix", {**weights, "weight_3": float("nan")})
    assert not valid and "weight_3 is nan" in str(errors)
    photos = {"face_embeds": ["0", 0], "combine": "average", "outlier_below": float("inf"), "drop_outliers": False}
    assert validate("BoLIDFacesOfOnePerson", {**photos, "outlier_below": 0.3}) == (True, [])
    valid, errors = validate("BoLIDFacesOfOnePerson", photos)
    assert not valid and "outlier_below is inf" in str(errors)


def test_faces_of_one_person_flags_drops_and_reports_the_odd_photo(identity_nodes: dict) -> None:
    face_embeds_class, _ = pack_classes(identity_nodes)
    arcface = torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.99, -0.1, 0.0], [0.0, 0.0, 1.0]])
    photos = face_embeds_class(arcface / arcface.norm(dim=-1, keepdim=True), norms=torch.tensor([2.0, 3.0, 5.0, 9.0]))
    inputs = {"face_embeds": photos, "combine": "norm_weighted", "outlier_below": 0.3, "drop_outliers": True}
    (combined, report), ui = run_node(identity_nodes["BoLIDFacesOfOnePerson"], inputs)

    assert "Face 3 looks like a different person (mean cosine 0.00 to the others)." in report
    assert "Left out: face 3." in report and "Weights: face 0: 0.20, face 1: 0.30, face 2: 0.50." in report
    assert ui == {"text": [report]}  # what the executor sends to the node's UI
    expected = (2 * photos.arcface[0] + 3 * photos.arcface[1] + 5 * photos.arcface[2]) / 10
    torch.testing.assert_close(combined.mix(combined.arcface)[0], expected, atol=1e-6, rtol=0)

    (kept_all, report), _ = run_node(identity_nodes["BoLIDFacesOfOnePerson"], {**inputs, "drop_outliers": False})
    assert kept_all.faces == 4 and "Left out" not in report and "Face 3 looks like a different person" in report


def test_faces_of_one_person_refuses_an_already_mixed_identity(identity_nodes: dict) -> None:
    face_embeds_class, _ = pack_classes(identity_nodes)
    mixed = face_embeds_class(torch.eye(2), weights=torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="already one mixed identity"):
        identity_nodes["BoLIDFacesOfOnePerson"].execute(mixed, "average", 0.3, False)
