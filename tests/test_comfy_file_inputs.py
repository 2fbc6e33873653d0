"""Tier 2: file inputs picked by name, through the pack's node classes: fingerprints, hostile names, NaN numbers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from onnx_factories import build_model_pack

from bolid_core.body import BodyID, load_body_id, save_body_id


@pytest.fixture()
def model_folders(comfy_nodes: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import folder_paths

    for name, extensions in (("bolid", {".safetensors"}), ("ultralytics", {".pt", ".onnx"}), ("insightface", set())):
        (tmp_path / name).mkdir()
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(tmp_path / name)], extensions))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "clip_scorers", ([str(tmp_path / "clip_scorers")], set()))
    folder_paths.filename_list_cache.clear()
    yield tmp_path
    folder_paths.filename_list_cache.clear()


def touch_later(path: Path) -> None:
    """Give a rewritten file a new mtime even on file systems with coarse timestamps."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_load_body_id_fingerprint_follows_the_file(comfy_nodes: dict, model_folders: Path) -> None:
    node = comfy_nodes["BoLIDLoadBodyID"]
    path = model_folders / "bolid" / "bodies" / "me.safetensors"
    save_body_id(BodyID(torch.zeros(1, 8), 1, "abc"), path)
    first = node.fingerprint_inputs(body="me.safetensors")
    assert node.fingerprint_inputs(body="me.safetensors") == first, "an unchanged file keeps its fingerprint"
    save_body_id(BodyID(torch.ones(1, 8), 1, "abc"), path)  # same size, replaced
    touch_later(path)
    second = node.fingerprint_inputs(body="me.safetensors")
    assert second != first
    (loaded,) = node.execute(body="me.safetensors").result
    torch.testing.assert_close(loaded.c_body, torch.ones(1, 8))
    path.unlink()
    assert node.fingerprint_inputs(body="me.safetensors") not in (first, second)
    with pytest.raises(FileNotFoundError, match="not found"):
        node.execute(body="me.safetensors")
    assert node.fingerprint_inputs(body="../escape").startswith("invalid:")


def test_loader_fingerprints_follow_their_files(comfy_nodes: dict, model_folders: Path) -> None:
    encoder = model_folders / "bolid" / "encoder.safetensors"
    encoder.write_bytes(b"one")
    pose = model_folders / "ultralytics" / "pose.onnx"
    pose.write_bytes(b"one")
    build_model_pack(model_folders / "insightface", "buffalo_l")
    cases = [
        (comfy_nodes["BoLIDBodyEncoderLoader"], {"body_encoder": "encoder.safetensors"}, encoder),
        (comfy_nodes["BoLIDPoseModelLoader"], {"pose_model": "pose.onnx"}, pose),
        (
            comfy_nodes["BoLIDInsightFaceLoader"],
            {"model_pack": "buffalo_l", "provider": "CPU"},
            next((model_folders / "insightface" / "models" / "buffalo_l").glob("*.onnx")),
        ),
    ]
    for node, inputs, path in cases:
        before = node.fingerprint_inputs(**inputs)
        assert node.fingerprint_inputs(**inputs) == before
        path.write_bytes(path.read_bytes() + b"x")
        after_edit = node.fingerprint_inputs(**inputs)
        assert after_edit != before, f"{node.__name__} missed an edit of {path.name}"
        path.unlink()
        assert node.fingerprint_inputs(**inputs) not in (before, after_edit), f"{node.__name__} missed a deletion"


def test_model_folders_list_onnx_pose_models(comfy_nodes: dict) -> None:
    from bolid_core.comfy.folders import MODEL_FOLDERS

    assert {".pt", ".onnx"} <= MODEL_FOLDERS["ultralytics"]


HOSTILE_NAMES = [("a\x00b.safetensors", "NUL byte"), ("x" * 10_000, "too long")]


@pytest.mark.parametrize(("name", "message"), HOSTILE_NAMES)
def test_hostile_names_are_clear_errors_on_every_path(
    comfy_nodes: dict, model_folders: Path, name: str, message: str
) -> None:
    from bolid_core.comfy.folders import body_id_path, clip_scorer_path, resolve_model_choice, resolve_model_file

    calls = [
        lambda: resolve_model_file("bolid", name),
        lambda: resolve_model_choice(f"ipadapter/{name}", ("ipadapter",)),
        lambda: body_id_path(name),
        lambda: clip_scorer_path(name),
        lambda: comfy_nodes["BoLIDLoadBodyID"].execute(body=name),
        lambda: comfy_nodes["BoLIDSaveBodyID"].execute(body_id=BodyID(torch.zeros(1, 4), 1, "a"), name=name),
        lambda: comfy_nodes["BoLIDPoseModelLoader"].execute(pose_model=name),
        lambda: comfy_nodes["BoLIDBodyEncoderLoader"].execute(body_encoder=name),
        lambda: comfy_nodes["BoLIDInsightFaceLoader"].execute(model_pack=name, provider="CPU"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert len(str(error.value)) < 400
    for node, inputs in (
        ("BoLIDLoadBodyID", {"body": name}),
        ("BoLIDPoseModelLoader", {"pose_model": name}),
        ("BoLIDInsightFaceLoader", {"model_pack": name, "provider": "CPU"}),
    ):
        assert isinstance(comfy_nodes[node].fingerprint_inputs(**inputs), str)


def test_unknown_execution_provider_is_a_clear_error(comfy_nodes: dict, model_folders: Path) -> None:
    build_model_pack(model_folders / "insightface", "buffalo_l")
    with pytest.raises(ValueError, match=r"Unknown execution provider 'TPU'; use one of CPU, CUDA"):
        comfy_nodes["BoLIDInsightFaceLoader"].execute(model_pack="buffalo_l", provider="TPU")


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("node_id", "inputs", "bad"),
    [
        ("BoLIDBlendBodyIDs", {"weight_b": 0.5}, "weight_b"),
        ("BoLIDKeypointWeighting", {"sigma": 0.08, "alpha": 0.25}, "sigma"),
        ("BoLIDKeypointWeighting", {"sigma": 0.08, "alpha": 0.25}, "alpha"),
        (
            "BoLIDBodyIDFromImages",
            {"sigma": 0.08, "alpha": 0.25, "detection_confidence": 0.25, "keypoint_confidence": 0.5},
            "detection_confidence",
        ),
        (
            "BoLIDBodyIDFromImages",
            {"sigma": 0.08, "alpha": 0.25, "detection_confidence": 0.25, "keypoint_confidence": 0.5},
            "keypoint_confidence",
        ),
    ],
)
def test_float_inputs_must_be_finite_and_in_range(comfy_nodes: dict, node_id: str, inputs: dict, bad: str) -> None:
    node = comfy_nodes[node_id]
    assert node.validate_inputs(**inputs) is True
    for value in (NAN, INF, -INF, 2.0):
        message = node.validate_inputs(**{**inputs, bad: value})
        assert isinstance(message, str) and message.startswith(f"{bad} is"), message
    linked = {name: None for name in inputs}  # inputs arriving over links are not known during validation
    assert node.validate_inputs(**linked) is True


def test_linked_nan_values_are_refused_in_execute(comfy_nodes: dict, model_folders: Path) -> None:
    body = BodyID(torch.randn(1, 4), 1, "abc")
    with pytest.raises(ValueError, match="weight_b is nan"):
        comfy_nodes["BoLIDBlendBodyIDs"].execute(body_a=body, body_b=body, weight_b=NAN)
    from bolid_core.body import PoseKeypoints

    keypoints = PoseKeypoints(torch.full((1, 17, 3), 0.5))
    with pytest.raises(ValueError, match="sigma is nan"):
        comfy_nodes["BoLIDKeypointWeighting"].execute(torch.rand(1, 8, 8, 3), keypoints, sigma=NAN, alpha=0.5)
    with pytest.raises(ValueError, match="detection_confidence is nan"):
        comfy_nodes["BoLIDBodyIDFromImages"].execute(
            None, None, torch.rand(1, 64, 64, 3), sigma=0.1, alpha=0.2, detection_confidence=NAN,
            keypoint_confidence=0.5,
        )  # fmt: skip
    # A NaN body never reaches the disk.
    target = model_folders / "bolid" / "bodies" / "nan.safetensors"
    nan_body = BodyID(torch.zeros(1, 4), 1, "abc")
    nan_body.c_body[0, 0] = NAN
    with pytest.raises(ValueError, match="holds NaN"):
        comfy_nodes["BoLIDSaveBodyID"].execute(body_id=nan_body, name="nan")
    assert not target.exists()
    save_body_id(BodyID(torch.ones(1, 4), 1, "abc"), target)
    assert load_body_id(target).c_body.sum() == 4
