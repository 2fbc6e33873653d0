"""Tier 1: keypoints through ultralytics' real predictor, on YOLO11 models with random weights built here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from pickle_payloads import ConstructorCall, ExecPayload, checkpoint_with

from bolid_core.body.pose import PoseModelError, detect_poses, load_pose_model

os.environ["YOLO_OFFLINE"] = "true"


def build_yolo(folder: Path, config: str) -> Path:
    from ultralytics import YOLO

    path = folder / config.replace(".yaml", ".pt")
    YOLO(config).save(str(path))
    return path


@pytest.fixture(scope="module")
def pose_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return build_yolo(tmp_path_factory.mktemp("ultralytics"), "yolo11n-pose.yaml")


def noise_views(count: int, height: int = 160, width: int = 128) -> torch.Tensor:
    return torch.rand((count, height, width, 3), generator=torch.Generator().manual_seed(count))


def test_keypoints_match_ultralytics_own_results(pose_model_file: Path) -> None:
    model = load_pose_model(pose_model_file)
    views = noise_views(3)
    poses = detect_poses(model, views, detection_confidence=1e-4, keypoint_confidence=0.5, image_size=160)
    assert poses.keypoints.points.shape == (3, 17, 3)
    for index in range(3):
        bgr = np.ascontiguousarray((views[index].numpy() * 255).round().astype(np.uint8)[..., ::-1])
        (result,) = model.predict([bgr], conf=1e-4, imgsz=160, verbose=False)
        # The largest, most confident person, chosen by a plain loop.
        best, best_score = None, -1.0
        for person in range(len(result.boxes)):
            _, _, w, h = result.boxes.xywhn[person].tolist()
            score = w * h * float(result.boxes.conf[person])
            if score > best_score:
                best, best_score = person, score
        expected = torch.cat([result.keypoints.xyn[best], result.keypoints.conf[best][:, None]], dim=1)
        visible = expected[:, 2] >= 0.5
        expected[~visible] = 0.0
        torch.testing.assert_close(poses.keypoints.points[index], expected.float(), rtol=1e-5, atol=1e-5)
        if len(result.boxes) > 1:
            assert any(note.startswith(f"view {index}: {len(result.boxes)} people found") for note in poses.notes)
        conf = expected[visible, 2].mean().item() if visible.any() else 0.0
        assert poses.confidence[index].item() == pytest.approx(conf, abs=1e-6)


def test_views_without_a_person_are_named(pose_model_file: Path) -> None:
    model = load_pose_model(pose_model_file)
    poses = detect_poses(model, noise_views(2), detection_confidence=0.999, image_size=160)
    assert poses.empty_views == [0, 1]
    assert poses.notes == ["view 0: no person found; skipped.", "view 1: no person found; skipped."]
    assert torch.count_nonzero(poses.keypoints.points) == 0 and torch.count_nonzero(poses.confidence) == 0


def test_grayscale_rgba_tiny_and_wrong_models(pose_model_file: Path, tmp_path: Path) -> None:
    model = load_pose_model(pose_model_file)
    gray = detect_poses(model, noise_views(1)[..., :1], detection_confidence=1e-4, image_size=160)
    rgba = detect_poses(model, torch.cat([noise_views(1), torch.ones(1, 160, 128, 1)], -1), image_size=160)
    assert gray.keypoints.points.shape == rgba.keypoints.points.shape == (1, 17, 3)
    with pytest.raises(ValueError, match="too small for pose detection"):
        detect_poses(model, torch.rand(1, 20, 20, 3))
    with pytest.raises(ValueError, match="IMAGE shaped"):
        detect_poses(model, torch.rand(1, 64, 64, 2))
    with pytest.raises(PoseModelError, match="is a YOLO detect model; the body ID needs a -pose model"):
        load_pose_model(build_yolo(tmp_path, "yolo11n.yaml"))
    with pytest.raises(FileNotFoundError, match=r"yolo11n-pose\.pt"):
        load_pose_model(tmp_path / "missing.pt")


POSE_CONSTRUCTOR_CALL = ConstructorCall("PoseModel", "yolo11n-pose.yaml")


def test_a_payload_in_a_pt_file_never_runs(pose_model_file: Path, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    evil = checkpoint_with(pose_model_file, tmp_path, ExecPayload(marker))
    with pytest.raises(PoseModelError) as error:
        load_pose_model(evil)
    assert not marker.exists(), "the pickle payload ran"
    assert "refers to builtins.exec" in str(error.value) and "export it to ONNX" in str(error.value)
    # Nothing was left in torch's process-wide allow-list for later loads.
    assert not [entry for entry in torch.serialization.get_safe_globals() if isinstance(entry, tuple)]


def test_calling_an_allowed_class_is_refused(pose_model_file: Path, tmp_path: Path) -> None:
    with pytest.raises(PoseModelError, match=r"calls ultralytics\.nn\.tasks\.PoseModel\(\.\.\.\)"):
        load_pose_model(checkpoint_with(pose_model_file, tmp_path, POSE_CONSTRUCTOR_CALL))


def test_the_allow_list_holds_even_if_another_pack_allowed_whole_classes(pose_model_file: Path, tmp_path: Path) -> None:
    from ultralytics.nn.tasks import PoseModel

    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([PoseModel])  # as other ComfyUI packs do for their YOLO models
    try:
        with pytest.raises(PoseModelError, match="calls ultralytics"):
            load_pose_model(checkpoint_with(pose_model_file, tmp_path, POSE_CONSTRUCTOR_CALL))
        assert PoseModel in torch.serialization.get_safe_globals(), "the other pack's entry must be kept"
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def test_ultralytics_never_unpickles_the_file_itself(pose_model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ultralytics.nn.tasks

    opened: list[str] = []
    real_load = torch.load

    def recording_load(file, *args, **kwargs):
        opened.append(str(file))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setattr(ultralytics.nn.tasks.torch, "load", recording_load, raising=False)
    model = load_pose_model(pose_model_file)
    assert model.task == "pose"
    assert str(pose_model_file) not in opened, "ultralytics read the picked file, not the checked bytes"


def test_not_a_checkpoint_and_wrong_suffix(tmp_path: Path) -> None:
    (tmp_path / "noise.pt").write_bytes(b"not a zip at all")
    with pytest.raises(PoseModelError, match=r"noise\.pt"):
        load_pose_model(tmp_path / "noise.pt")
    (tmp_path / "model.pth").write_bytes(b"x")
    with pytest.raises(PoseModelError, match=r"\.pt or \.onnx"):
        load_pose_model(tmp_path / "model.pth")


def test_non_finite_confidences_are_refused(pose_model_file: Path) -> None:
    model = load_pose_model(pose_model_file)
    for value in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="detection_confidence must be a finite number"):
            detect_poses(model, noise_views(1), detection_confidence=value)
    with pytest.raises(ValueError, match="keypoint_confidence must be a finite number"):
        detect_poses(model, noise_views(1), keypoint_confidence=float("nan"))


@pytest.fixture(scope="module")
def onnx_pose_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random YOLO11-pose exported to ONNX here, offline, with every pip install refused."""
    import subprocess

    import ultralytics.utils.checks
    from ultralytics import YOLO

    pytest.importorskip("onnx", reason="exporting to ONNX needs the onnx package")
    folder = tmp_path_factory.mktemp("onnx")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ultralytics.utils.checks, "AUTOINSTALL", False)
        patch.setattr(subprocess, "check_output", _no_subprocess)
        patch.setattr(subprocess, "run", _no_subprocess)
        torch.manual_seed(0)
        exported = YOLO("yolo11n-pose.yaml").export(format="onnx", imgsz=160, simplify=False, dynamic=False)
    path = folder / "yolo11n-pose.onnx"
    Path(exported).replace(path)
    return path


def _no_subprocess(*args, **kwargs):
    raise AssertionError(f"ultralytics tried to run {args[:1]}")


def test_onnx_pose_model_gives_keypoints(onnx_pose_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    monkeypatch.setattr(subprocess, "check_output", _no_subprocess)
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    model = load_pose_model(onnx_pose_file)
    assert model.task == "pose" and model.fixed_image_size == (160, 160) and model.fixed_batch == 1
    poses = detect_poses(model, noise_views(3), detection_confidence=1e-4, keypoint_confidence=0.0)
    assert poses.keypoints.points.shape == (3, 17, 3)
    assert poses.empty_views == [] and bool((poses.confidence > 0).all())
    # The copy ultralytics reads lives only as long as the model.
    (private,) = [Path(model.yolo.ckpt_path).parent]
    del model, poses
    import gc

    gc.collect()
    assert not private.exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("names", "__import__('pathlib').Path({marker!r}).touch()", "metadata field 'names' is not a plain value"),
        ("task", "detect", "is a YOLO detect model"),
        ("kpt_shape", "[21, 3]", "needs COCO's 17"),
    ],
)
def test_onnx_metadata_is_checked_before_ultralytics_evaluates_it(
    onnx_pose_file: Path, tmp_path: Path, field: str, value: str, message: str
) -> None:
    import onnx

    marker = tmp_path / "metadata-ran"
    proto = onnx.load(str(onnx_pose_file))
    for entry in proto.metadata_props:
        if entry.key == field:
            entry.value = value.format(marker=str(marker))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, str(tampered))
    with pytest.raises(PoseModelError, match=message):
        load_pose_model(tampered)
    assert not marker.exists()
