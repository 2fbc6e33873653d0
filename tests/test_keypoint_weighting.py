"""Tier 1: Gaussian keypoint weighting (eqs. 11-13) and keypoint parsing, against plain loops."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bolid_core.body import PoseKeypoints, keypoint_weight_map, parse_keypoints_json, weight_views


def reference_weight_map(points_px: list[list[float]], height: int, width: int, sigma: float) -> torch.Tensor:
    """Eqs. 11-12 one pixel and one keypoint at a time; points are (x, y, confidence) in pixels."""
    weight = torch.zeros(height, width, dtype=torch.float64)
    for row in range(height):
        for col in range(width):
            px, py = col + 0.5, row + 0.5
            best = 0.0
            for x, y, confidence in points_px:
                if confidence > 0:
                    w_i = math.exp(-((px - x) ** 2 + (py - y) ** 2) / (2 * sigma**2))
                    best = max(best, w_i)
            weight[row, col] = best
    return weight / weight.max()


def random_keypoints(generator: torch.Generator, views: int, visible_fraction: float = 0.7) -> PoseKeypoints:
    points = torch.rand((views, 17, 3), generator=generator)
    visible = torch.rand((views, 17), generator=generator) < visible_fraction
    points[..., 2] = torch.where(visible, 0.2 + 0.8 * points[..., 2], torch.zeros(()))
    return PoseKeypoints(torch.where(visible[..., None], points, torch.zeros(())))


@pytest.mark.parametrize(("height", "width", "sigma"), [(9, 13, 2.0), (16, 5, 0.7), (11, 11, 6.0)])
def test_weight_map_matches_plain_formula(height: int, width: int, sigma: float) -> None:
    keypoints = random_keypoints(torch.Generator().manual_seed(height * width), views=3)
    result = keypoint_weight_map(keypoints, height, width, sigma_px=sigma)
    for view in range(3):
        px = keypoints.points[view].clone()
        px[:, 0] *= width
        px[:, 1] *= height
        expected = reference_weight_map(px.tolist(), height, width, sigma)
        torch.testing.assert_close(result[view].double(), expected, rtol=1e-5, atol=1e-6)


def test_weighted_images_match_eq_13() -> None:
    generator = torch.Generator().manual_seed(3)
    images = torch.rand((2, 10, 12, 3), generator=generator)
    keypoints = random_keypoints(generator, views=2)
    alpha, sigma = 0.3, 2.5
    result = weight_views(images, keypoints, sigma_px=sigma, alpha=alpha)
    for view in range(2):
        px = keypoints.points[view].clone()
        px[:, 0] *= 12
        px[:, 1] *= 10
        w_norm = reference_weight_map(px.tolist(), 10, 12, sigma)
        for row in range(10):
            for col in range(12):
                factor = alpha + (1 - alpha) * w_norm[row, col].item()
                expected = [images[view, row, col, c].item() * factor for c in range(3)]
                assert result.images[view, row, col].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_invisible_keypoints_have_no_effect() -> None:
    points = torch.zeros((1, 17, 3))
    points[0, 0] = torch.tensor([0.2, 0.3, 0.9])
    points[0, 5] = torch.tensor([0.7, 0.6, 0.8])
    with_hidden = points.clone()
    with_hidden[0, 9] = torch.tensor([0.95, 0.05, 0.0])  # a position, but confidence 0
    expected = keypoint_weight_map(PoseKeypoints(points), 20, 20, sigma_px=2.0)
    result = keypoint_weight_map(PoseKeypoints(with_hidden), 20, 20, sigma_px=2.0)
    torch.testing.assert_close(result, expected)


def test_zero_invisible_zeroes_low_confidence_points() -> None:
    points = torch.tensor([[[0.4, 0.5, 0.9]] * 17])
    points[0, 3] = torch.tensor([0.1, 0.2, 0.2])
    points[0, 8] = torch.tensor([0.6, 0.7, 0.0])
    zeroed = PoseKeypoints(points).zero_invisible(min_confidence=0.5).points
    assert zeroed[0, 3].tolist() == [0.0, 0.0, 0.0]
    assert zeroed[0, 8].tolist() == [0.0, 0.0, 0.0]
    assert zeroed[0, 0].tolist() == pytest.approx([0.4, 0.5, 0.9])
    assert int((zeroed[..., 2] > 0).sum()) == 15


def test_alpha_bounds_and_peak() -> None:
    generator = torch.Generator().manual_seed(5)
    images = torch.rand((1, 8, 8, 4), generator=generator)  # RGBA works as any channel count
    points = torch.zeros((1, 17, 3))
    points[0, 0] = torch.tensor([0.5625, 0.4375, 1.0])  # pixel centre (4.5, 3.5) of an 8x8 view
    keypoints = PoseKeypoints(points)
    unchanged = weight_views(images, keypoints, sigma_px=1.0, alpha=1.0)
    torch.testing.assert_close(unchanged.images, images)
    only_map = weight_views(images, keypoints, sigma_px=1.0, alpha=0.0)
    torch.testing.assert_close(only_map.images, images * only_map.weight_maps[..., None])
    assert only_map.weight_maps[0, 3, 4].item() == pytest.approx(1.0)
    assert only_map.weight_maps.max().item() == pytest.approx(1.0)


def test_one_keypoint_set_serves_all_images_and_mismatch_is_an_error() -> None:
    generator = torch.Generator().manual_seed(7)
    images = torch.rand((3, 6, 6, 3), generator=generator)
    keypoints = random_keypoints(generator, views=1, visible_fraction=1.0)
    result = weight_views(images, keypoints, sigma_px=1.5, alpha=0.2)
    assert result.weight_maps.shape == (3, 6, 6)
    torch.testing.assert_close(result.weight_maps[0], result.weight_maps[2])
    with pytest.raises(ValueError, match="3 images but keypoints for 2 views"):
        weight_views(images, random_keypoints(generator, views=2), sigma_px=1.5, alpha=0.2)


def test_view_without_keypoints_is_left_unweighted_and_reported() -> None:
    images = torch.rand((2, 5, 5, 3), generator=torch.Generator().manual_seed(9))
    points = torch.zeros((2, 17, 3))
    points[1, 4] = torch.tensor([0.5, 0.5, 1.0])
    result = weight_views(images, PoseKeypoints(points), sigma_px=1.0, alpha=0.1)
    assert result.views_without_keypoints == [0]
    torch.testing.assert_close(result.images[0], images[0])
    assert result.weight_maps[1].min().item() < 0.5


def test_bad_arguments_are_clear_errors() -> None:
    keypoints = PoseKeypoints(torch.full((1, 17, 3), 0.5))
    with pytest.raises(ValueError, match="sigma must be a positive, finite number"):
        keypoint_weight_map(keypoints, 4, 4, sigma_px=0.0)
    with pytest.raises(ValueError, match="alpha must lie in"):
        weight_views(torch.rand(1, 4, 4, 3), keypoints, sigma_px=1.0, alpha=1.5)
    with pytest.raises(ValueError, match="shaped \\(views, height, width, channels\\)"):
        weight_views(torch.rand(4, 4, 3), keypoints, sigma_px=1.0, alpha=0.5)
    with pytest.raises(ValueError, match="shaped \\(views, 17, 3\\)"):
        PoseKeypoints(torch.zeros((1, 18, 3)))
    with pytest.raises(ValueError, match="NaN"):
        PoseKeypoints(torch.full((1, 17, 3), float("nan")))


def test_parse_keypoints_json_forms() -> None:
    triples = [[i / 20, 1 - i / 20, 1.0] for i in range(17)]
    one = parse_keypoints_json(json.dumps(triples))
    flat = parse_keypoints_json(json.dumps([v for p in triples for v in p]))
    two = parse_keypoints_json(json.dumps([triples, triples]))
    assert one.num_views == 1 and two.num_views == 2
    torch.testing.assert_close(one.points, flat.points)
    assert one.points[0, 16].tolist() == pytest.approx([0.8, 0.2, 1.0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2", "not valid JSON"),
        ("{}", "must be a list"),
        ("[[0.1, 0.2, 1.0]]", "view 0 is not 17"),
        (json.dumps([[0.1, 0.2, 1.5]] * 17), "confidences must lie in"),
    ],
)
def test_parse_keypoints_json_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_keypoints_json(text)


@pytest.mark.parametrize("sigma", [float("nan"), float("inf")])
def test_non_finite_sigma_is_refused_not_a_map_of_ones(sigma: float) -> None:
    # NaN or inf sigma once gave W_norm = 1 everywhere: the weighting silently off.
    keypoints = PoseKeypoints(torch.full((1, 17, 3), 0.5))
    with pytest.raises(ValueError, match="sigma must be a positive, finite number"):
        keypoint_weight_map(keypoints, 8, 8, sigma_px=sigma)
    with pytest.raises(ValueError, match="sigma must be a positive, finite number"):
        weight_views(torch.rand(1, 8, 8, 3), keypoints, sigma_px=sigma, alpha=0.5)


def test_non_finite_alpha_and_images_are_refused() -> None:
    keypoints = PoseKeypoints(torch.full((1, 17, 3), 0.5))
    for alpha in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha must lie in"):
            weight_views(torch.rand(1, 8, 8, 3), keypoints, sigma_px=1.0, alpha=alpha)
    images = torch.rand(1, 8, 8, 3)
    images[0, 3, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="images hold NaN or infinite values"):
        weight_views(images, keypoints, sigma_px=1.0, alpha=0.5)
