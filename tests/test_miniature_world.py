"""Tier 1: the miniature world's renderer, captions, truth and dataset layout, checked against plain pixel counts."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from bolid_core.miniature import world
from bolid_core.miniature.world import (
    BACKGROUND_COLOURS,
    PROPORTION_NAMES,
    PROPORTION_RANGES,
    SHIRT_COLOURS,
    SKIN,
    TROUSER_COLOURS,
    BodyShape,
    View,
    caption,
    render,
    sample_body,
    sample_view,
    true_proportions,
    view_proportions,
    write_dataset,
)

PARTS = ("background", "skin", "shirt", "trousers")


def part_map(image: np.ndarray, view: View) -> np.ndarray:
    """Per pixel, the index in PARTS of the nearest of the view's four colours."""
    colours = np.array(
        [BACKGROUND_COLOURS[view.background], SKIN, SHIRT_COLOURS[view.shirt], TROUSER_COLOURS[view.trousers]], float
    )
    return np.argmin(((image[:, :, None, :].astype(float) - colours) ** 2).sum(-1), axis=2)


def pure_part_map(image: np.ndarray, view: View) -> np.ndarray:
    """Like part_map, but -1 where a pixel is not exactly one of the colours (an anti-aliased edge)."""
    parts = part_map(image, view)
    colours = np.array(
        [BACKGROUND_COLOURS[view.background], SKIN, SHIRT_COLOURS[view.shirt], TROUSER_COLOURS[view.trousers]], float
    )
    exact = np.abs(image.astype(float) - colours[parts]).max(-1) <= 1
    return np.where(exact, parts, -1)


def test_sampled_bodies_and_views_stay_in_their_ranges_and_fit_the_frame():
    rng = np.random.default_rng(0)
    for _ in range(300):
        body, view = sample_body(rng), sample_view(rng)
        for name, value in zip(PROPORTION_NAMES, true_proportions(body), strict=True):
            low, high = PROPORTION_RANGES[name]
            assert low <= value <= high, name
        assert view.shirt in SHIRT_COLOURS and view.trousers in TROUSER_COLOURS
        image = render(body, view).image
        figure = part_map(image, view) != 0
        rows, cols = np.flatnonzero(figure.any(1)), np.flatnonzero(figure.any(0))
        assert rows[0] >= 2 and rows[-1] <= 61 and cols[0] >= 2 and cols[-1] <= 61


@pytest.mark.parametrize("arm", [10.0, 60.0])
@pytest.mark.parametrize("scale", [0.90, 1.05])
def test_the_largest_figures_in_the_widest_poses_fit_with_a_margin(arm, scale):
    high = {name: high for name, (_, high) in world.BODY_RANGES.items()}
    body = BodyShape(**{**high, "torso_to_leg": world.BODY_RANGES["torso_to_leg"][0]})
    for position in (-1.0, 1.0):
        view = View(arm, arm, 15.0, 15.0, scale, position, 1.0, "red", "black", "white")
        image = render(body, view).image
        figure = np.flatnonzero((np.abs(image.astype(int) - BACKGROUND_COLOURS["white"]).sum(-1) > 0).any(0))
        assert figure[0] >= 2 and figure[-1] <= 61


def test_palettes_contrast_with_skin_and_each_other():
    for palette in (SHIRT_COLOURS, TROUSER_COLOURS, BACKGROUND_COLOURS):
        for name, colour in palette.items():
            assert np.linalg.norm(np.subtract(colour, SKIN)) >= world.MIN_COLOUR_DISTANCE, name
    for shirt, trousers, background in world.COLOUR_COMBINATIONS:
        colours = [SKIN, SHIRT_COLOURS[shirt], TROUSER_COLOURS[trousers], BACKGROUND_COLOURS[background]]
        for i in range(4):
            for j in range(i + 1, 4):
                assert np.linalg.norm(np.subtract(colours[i], colours[j])) >= 90
    assert len(world.COLOUR_COMBINATIONS) >= 40


def test_keypoints_land_on_the_drawn_parts():
    rng = np.random.default_rng(1)
    expected = {
        "nose": {"skin"},
        "left_eye": {"skin"},
        "right_eye": {"skin"},
        "left_elbow": {"skin"},
        "right_elbow": {"skin"},
        "left_wrist": {"skin"},
        "right_wrist": {"skin"},
        "left_hip": {"shirt"},
        "right_hip": {"shirt"},
        "left_knee": {"trousers"},
        "right_knee": {"trousers"},
        "left_ankle": {"trousers"},
        "right_ankle": {"trousers"},
    }
    for _ in range(40):
        body, view = sample_body(rng), sample_view(rng)
        picture = render(body, view, size=256)
        assert picture.keypoints.shape == (17, 3)
        assert np.all(picture.keypoints[:, 2] == 1.0)
        parts = part_map(picture.image, view)
        for name, allowed in expected.items():
            x, y, _ = picture.keypoints[world.KEYPOINT_NAMES.index(name)]
            assert PARTS[parts[int(y * 256), int(x * 256)]] in allowed, (name, view)
        # a frontal figure's left side is on the image's right
        kp = dict(zip(world.KEYPOINT_NAMES, picture.keypoints[:, :2], strict=True))
        for joint in ("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee", "ankle"):
            assert kp[f"left_{joint}"][0] > kp[f"right_{joint}"][0], joint
        assert kp["left_shoulder"][1] < kp["left_elbow"][1] < kp["left_wrist"][1]
        assert kp["left_hip"][1] < kp["left_knee"][1] < kp["left_ankle"][1]


def test_keypoints_at_64_px_on_the_limbs():
    rng = np.random.default_rng(2)
    for _ in range(40):
        body, view = sample_body(rng), sample_view(rng)
        picture = render(body, view)
        parts = part_map(picture.image, view)
        for name in ("left_knee", "right_knee", "left_wrist", "right_wrist", "nose"):
            x, y, _ = picture.keypoints[world.KEYPOINT_NAMES.index(name)]
            assert PARTS[parts[int(y * 64), int(x * 64)]] == ("trousers" if "knee" in name else "skin"), name


def test_plain_pixel_counts_match_the_truth_of_a_large_render():
    """Shoulder width, hip width, head diameter and figure height, counted pixel by pixel on a 512 px render (edges
    are at most one pixel off), against view_proportions' exact lengths."""
    size = 512
    body = BodyShape(height=1.0, head=0.15, shoulder=0.30, hip=0.18, limb=0.07, torso_to_leg=0.8)
    view = View(30.0, 30.0, 8.0, 8.0, 1.0, 0.0, 0.0, "red", "black", "light blue")
    truth = view_proportions(body, view)
    figure_height = truth[0] * size
    assert figure_height == pytest.approx(0.75 * size)
    parts = pure_part_map(render(body, view, size=size).image, view)

    figure_rows = np.flatnonzero((parts != 0).any(1))
    assert figure_rows[-1] - figure_rows[0] + 1 == pytest.approx(figure_height, abs=1.5)
    shirt_rows = np.flatnonzero((parts == 2).sum(1) > 0)
    assert (shirt_rows[-1] - shirt_rows[0] + 1) == pytest.approx(
        figure_height * (1 - 0.15 - world.NECK_LENGTH) * 0.8 / 1.8, abs=1.5
    )
    top_row_count = (parts[shirt_rows[0] + 1] == 2).sum()
    bottom_row_count = (parts[shirt_rows[-1] - 1] == 2).sum()
    slope = (0.30 - 0.18) * figure_height / (shirt_rows[-1] - shirt_rows[0])  # width lost per row
    assert top_row_count == pytest.approx(0.30 * figure_height - 1.5 * slope, abs=2)
    assert bottom_row_count == pytest.approx(0.18 * figure_height + 1.5 * slope, abs=2)
    nearest = part_map(render(body, view, size=size).image, view)
    head_rows = (nearest[: shirt_rows[0]] == 1).sum(1)
    assert head_rows.max() == pytest.approx(0.15 * figure_height, abs=1.5)


def test_view_proportions_scale_only_the_height():
    body = sample_body(np.random.default_rng(3))
    view = sample_view(np.random.default_rng(4))
    truth, seen = true_proportions(body), view_proportions(body, view)
    assert seen[0] == pytest.approx(truth[0] * view.scale)
    assert np.array_equal(seen[1:], truth[1:])
    assert truth[0] == pytest.approx(body.height * 0.75)


def test_captions_describe_pose_and_scene_but_never_proportions():
    rng = np.random.default_rng(5)
    forbidden = re.compile(
        r"tall|short|height|head|shoulder|hip|limb|thin|thick|slim|broad|wide shoulders|torso|leg length|\d"
    )
    for _ in range(200):
        view = sample_view(rng)
        text = caption(view)
        assert not forbidden.search(text), text
        assert f"{view.shirt} shirt" in text and f"{view.trousers} trousers" in text
        assert f"{view.background} background" in text
    view = View(50.0, 55.0, 12.0, 10.0, 1.0, -0.8, 0.5, "red", "black", "light blue")
    assert caption(view) == (
        "a person with arms out wide and legs apart, wearing a red shirt and black trousers, "
        "on a light blue background, left of centre"
    )
    view = View(50.0, 12.0, 4.0, 5.0, 1.0, 0.0, 0.5, "green", "navy", "white")
    assert caption(view) == (
        "a person with the left arm out wide and the right arm down and legs together, wearing a green shirt and "
        "navy trousers, on a white background, in the centre"
    )


def test_sampling_and_rendering_are_deterministic_from_the_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        body, view = sample_body(rng), sample_view(rng)
        return body, view, render(body, view)

    first, again, other = draw(7), draw(7), draw(8)
    assert first[0] == again[0] and first[1] == again[1]
    assert np.array_equal(first[2].image, again[2].image)
    assert np.array_equal(first[2].keypoints, again[2].keypoints)
    assert first[0] != other[0] and not np.array_equal(first[2].image, other[2].image)


def test_bad_bodies_and_views_are_refused():
    with pytest.raises(ValueError, match="head"):
        BodyShape(1.0, float("nan"), 0.3, 0.2, 0.07, 0.8)
    with pytest.raises(ValueError, match="shirt"):
        View(20, 20, 5, 5, 1.0, 0, 0, "chartreuse", "black", "white")
    with pytest.raises(ValueError, match="views_per_body"):
        write_dataset("/nonexistent", [], 0, 0)


def test_write_dataset_layout(tmp_path):
    bodies = [sample_body(np.random.default_rng(i)) for i in range(3)]
    names = write_dataset(tmp_path, bodies, views_per_body=2, seed=11)
    assert names == ["person_0000", "person_0001", "person_0002"]
    rng = np.random.default_rng(11)
    for name, body in zip(names, bodies, strict=True):
        folder = tmp_path / name
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            f"view_0{v}{suffix}" for v in range(2) for suffix in (".png", ".txt", ".keypoints.json")
        )
        for v in range(2):
            view = sample_view(rng)
            expected = render(body, view)
            image = np.asarray(Image.open(folder / f"view_0{v}.png").convert("RGB"))
            assert np.array_equal(image, expected.image)  # RGB order survives the PNG
            assert (folder / f"view_0{v}.txt").read_text(encoding="utf-8") == caption(view)
            keypoints = json.loads((folder / f"view_0{v}.keypoints.json").read_text(encoding="utf-8"))
            assert len(keypoints) == 17 and all(len(point) == 3 for point in keypoints)
            assert np.allclose(keypoints, expected.keypoints, atol=1e-6)
