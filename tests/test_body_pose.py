"""Tier 1: keypoints through ultralytics' real predictor, on YOLO11 models with random weights built here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bolid_core.body.pose import PoseModelError, detect_poses, load_pose_model

os.environ["YOLO_OFFLINE"] = "1"


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
