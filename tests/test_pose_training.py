"""Tier 1: L_id's differentiable pose scorer against ultralytics' own predict, on a random YOLO11-pose built here."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pose_factories import build_varied_pose_model

from bolid_core.body.pose import PoseModel, PoseModelError, load_pose_model
from bolid_core.body.pose_training import pose_people

os.environ["YOLO_OFFLINE"] = "true"

# With the model below, the best person score on these noise images is about 0.06 to 0.16.
CONF = 0.05


@pytest.fixture(scope="module")
def pose_model(tmp_path_factory: pytest.TempPathFactory) -> PoseModel:
    return load_pose_model(build_varied_pose_model(tmp_path_factory.mktemp("ultralytics") / "yolo11n-pose.pt"))


def quantised_noise(count: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Noise images on the 8-bit grid, so predict (which reads uint8) sees exactly the same pixels."""
    noise = torch.rand((count, height, width, 3), generator=torch.Generator().manual_seed(seed))
    return (noise * 255).round() / 255


def predicted_people(model: PoseModel, image: torch.Tensor, conf: float, imgsz: int) -> torch.Tensor:
    """ultralytics' predict on one (H, W, 3) image: (P, 17, 3) of x / W, y / H, visibility, in its own order."""
    bgr = np.ascontiguousarray((image.numpy() * 255).round().astype(np.uint8)[..., ::-1])
    (result,) = model.predict([bgr], conf=conf, imgsz=imgsz)
    return torch.cat([result.keypoints.xyn, result.keypoints.conf[..., None]], dim=-1).float()


def assert_found_in(people: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """Every expected person is one of `people`, to atol: the order of near-equal scores may differ (a fused batch
    norm rounds differently), the people may not."""
    assert people.ndim == 3 and people.shape[0] > 0
    for person in expected:
        difference = (people.detach() - person).abs().amax(dim=(1, 2)).min()
        assert difference <= atol, f"a person of predict is {float(difference):.2e} away from every person found"


def test_people_match_predict_without_resizing(pose_model: PoseModel) -> None:
    images = quantised_noise(2, 160, 128, seed=1)  # 160 × 128 at imgsz 160: no resize, no padding
    people = pose_people(pose_model, images, conf=CONF, imgsz=160)
    assert len(people) == 2
    for index in range(2):
        expected = predicted_people(pose_model, images[index], CONF, 160)
        assert expected.shape[0] > 0
        assert people[index].shape == expected.shape
        torch.testing.assert_close(people[index][:5].detach(), expected[:5], rtol=0, atol=1e-4)
        assert_found_in(people[index], expected, atol=1e-4)


@pytest.mark.parametrize(("height", "width", "imgsz"), [(320, 256, 160), (200, 150, 160), (160, 128, 224)])
def test_letterboxed_people_match_predict(pose_model: PoseModel, height: int, width: int, imgsz: int) -> None:
    """Scaled (down, with stride padding, and up): predict resizes 8-bit pixels with OpenCV, which rounds them, so
    the best-scored people agree to a few thousandths."""
    images = quantised_noise(1, height, width, seed=height + imgsz)
    (people,) = pose_people(pose_model, images, conf=CONF, imgsz=imgsz)
    expected = predicted_people(pose_model, images[0], CONF, imgsz)
    assert expected.shape[0] >= 5 and abs(people.shape[0] - expected.shape[0]) <= 0.05 * expected.shape[0]
    assert_found_in(people[:20], expected[:5], atol=5e-3)


def test_gradients_reach_only_the_scored_image(pose_model: PoseModel) -> None:
    images = quantised_noise(2, 160, 128, seed=1).requires_grad_(True)
    people = pose_people(pose_model, images, conf=CONF, imgsz=160)
    person = people[0][0]
    assert bool(((person[:, :2] > 0) & (person[:, :2] < 1)).all())  # not clipped: the gradient is the network's
    person[:, :2].sum().backward()
    gradient = images.grad
    assert bool(torch.isfinite(gradient).all())
    assert gradient[0].abs().sum() > 0
    assert gradient[1].abs().sum() == 0


def test_gradients_after_predict_fused_the_model(tmp_path: Path) -> None:
    """predict runs its own (fused) copy of the network under inference mode; the scorer still backpropagates."""
    model = load_pose_model(build_varied_pose_model(tmp_path / "yolo11n-pose.pt"))
    model.yolo.model.train().requires_grad_(True)  # as a caller might leave it
    images = quantised_noise(1, 160, 128, seed=1)
    expected = predicted_people(model, images[0], CONF, 160)
    pixels = images.clone().requires_grad_(True)
    (people,) = pose_people(model, pixels, conf=CONF, imgsz=160)
    torch.testing.assert_close(people.detach(), expected, rtol=0, atol=1e-4)
    people[0, :, :2].sum().backward()
    assert pixels.grad.abs().sum() > 0
    # Scoring froze a private copy; the caller's network keeps its own mode and flags.
    assert model.yolo.model.training
    assert all(parameter.requires_grad for parameter in model.yolo.model.parameters())


def test_nobody_gives_empty_people_and_the_model_stays_usable(pose_model: PoseModel) -> None:
    images = quantised_noise(2, 160, 128, seed=1)
    people = pose_people(pose_model, images, conf=0.99, imgsz=160)
    assert [tuple(p.shape) for p in people] == [(0, 17, 3), (0, 17, 3)]
    # The scorer runs a private frozen copy: the caller's model keeps predicting as before.
    assert predicted_people(pose_model, images[0], CONF, 160).shape[0] > 0


def test_the_scorer_network_is_frozen_and_in_eval_mode(pose_model: PoseModel) -> None:
    from bolid_core.body import pose_training

    pose_people(pose_model, quantised_noise(1, 64, 64, seed=3), conf=CONF, imgsz=64)
    network = pose_training._networks[pose_model.yolo]
    assert not network.training
    assert not any(parameter.requires_grad for parameter in network.parameters())
    assert network is not pose_model.yolo.model


def test_onnx_models_and_bad_inputs_are_refused(pose_model: PoseModel) -> None:
    onnx_model = PoseModel(SimpleNamespace(model="/private/copy/yolo11n-pose.onnx", task="pose"))
    with pytest.raises(PoseModelError, match=r"yolo11n-pose\.onnx .*use the \.pt model for L_id"):
        pose_people(onnx_model, torch.rand(1, 64, 64, 3))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        pose_people(pose_model, torch.rand(64, 64, 3))
    with pytest.raises(ValueError, match="conf must be"):
        pose_people(pose_model, torch.rand(1, 64, 64, 3), conf=float("nan"))
    with pytest.raises(ValueError, match="imgsz must be"):
        pose_people(pose_model, torch.rand(1, 64, 64, 3), imgsz=16)
