"""Tier 1: the miniature world's proportion measurer, against the renderer's exact truth and plain pixel counts."""

from __future__ import annotations

import ast
from pathlib import Path

import cv2
import numpy as np
import pytest

from bolid_core.miniature import measure as measure_module
from bolid_core.miniature.measure import MeasurementError, measure, proportion_error
from bolid_core.miniature.world import (
    BACKGROUND_COLOURS,
    PROPORTION_NAMES,
    PROPORTION_RANGES,
    SHIRT_COLOURS,
    SKIN,
    TROUSER_COLOURS,
    BodyShape,
    View,
    render,
    sample_body,
    sample_view,
    view_proportions,
)

WIDTHS = np.array([PROPORTION_RANGES[n][1] - PROPORTION_RANGES[n][0] for n in PROPORTION_NAMES])


def blurred_noisy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    soft = cv2.GaussianBlur(image.astype(np.float64), (0, 0), 0.7) + rng.normal(0.0, 8.0, image.shape)
    return np.clip(np.round(soft), 0, 255).astype(np.uint8)


def normalised_errors(count: int, seed: int, degrade: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(count):
        body, view = sample_body(rng), sample_view(rng)
        image = render(body, view).image
        if degrade:
            image = blurred_noisy(image, rng)
        errors.append(np.abs(measure(image) - view_proportions(body, view)) / WIDTHS)
    return np.array(errors)


def report(label: str, errors: np.ndarray) -> None:
    print(f"\n{label}: " + ", ".join(f"{n} {e:.4f}" for n, e in zip(PROPORTION_NAMES, errors.mean(0), strict=True)))


def test_measures_200_clean_renders_within_2_percent_of_each_range():
    errors = normalised_errors(200, seed=100, degrade=False)
    report("clean mean |error| / range", errors)
    assert np.all(errors.mean(0) < 0.02), errors.mean(0)
    assert np.all(errors.max(0) < 0.1), errors.max(0)


def test_measures_blurred_noisy_renders():
    errors = normalised_errors(100, seed=200, degrade=True)
    report("blur 0.7 + noise 8, mean |error| / range", errors)
    mean = dict(zip(PROPORTION_NAMES, errors.mean(0), strict=True))
    for name in ("height", "torso_to_leg"):
        assert mean[name] < 0.05, (name, mean[name])
    # below the 0.05 target still: the head (a 5-9 px disc under noise) and limbs (2-5 px, never a pure pixel once
    # blurred); these bounds guard the current level
    for name, bound in (("head", 0.2), ("shoulder", 0.1), ("hip", 0.1), ("limb", 0.2)):
        assert mean[name] < bound, (name, mean[name])


def test_shoulder_width_agrees_with_a_plain_row_count():
    """A wide-shouldered figure with arms out wide: the shirt's second row, counted as pixels nearer the shirt colour
    than to anything else, against the measurer's sub-pixel shoulder width (the torso narrows by a known slope)."""
    body = BodyShape(height=1.1, head=0.14, shoulder=0.30, hip=0.20, limb=0.07, torso_to_leg=0.8)
    view = View(55.0, 55.0, 8.0, 8.0, 1.0, 0.0, 0.0, "red", "black", "white")
    image = render(body, view).image
    colours = np.array([BACKGROUND_COLOURS["white"], SKIN, SHIRT_COLOURS["red"], TROUSER_COLOURS["black"]], float)
    shirt = np.argmin(((image[:, :, None, :].astype(float) - colours) ** 2).sum(-1), axis=2) == 2
    rows = np.flatnonzero(shirt.any(1))
    measured = measure(image)
    figure_px = measured[0] * 64
    torso_px = rows[-1] - rows[0] + 1
    per_row = (measured[2] - measured[3]) * figure_px / torso_px
    counted = shirt[rows[0] + 1].sum()
    assert counted == pytest.approx(measured[2] * figure_px - 1.5 * per_row, abs=1.0)
    assert measured[2] == pytest.approx(0.30, abs=0.005)


def test_no_figure_is_a_measurement_error():
    with pytest.raises(MeasurementError, match="no figure"):
        measure(np.full((64, 64, 3), 200, np.uint8))
    with pytest.raises(MeasurementError, match="RGB"):
        measure(np.zeros((64, 64), np.uint8))
    assert issubclass(MeasurementError, ValueError)


def test_proportion_error_is_the_mean_range_normalised_difference():
    true = np.array([0.7, 0.14, 0.26, 0.19, 0.07, 0.75])
    measured = true + np.array([0.0263, 0.006, 0.0, 0.0, -0.004, 0.0])
    expected = (0.0263 / (0.8625 - 0.6) + 0.006 / 0.06 + 0.004 / 0.04) / 6
    assert proportion_error(measured, true) == pytest.approx(expected)
    assert proportion_error(np.stack([measured, true]), np.stack([true, true])) == pytest.approx([expected, 0.0])
    with pytest.raises(ValueError, match="last axis"):
        proportion_error(np.zeros(5), np.zeros(5))


def test_the_measurer_reads_pixels_only():
    tree = ast.parse(Path(measure_module.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.module or "", alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    world_names = {name for module, name in imported if module.endswith("world")}
    assert world_names <= {"PROPORTION_NAMES", "PROPORTION_RANGES"}
    assert not any("body" in module or "vae" in module for module, _ in imported)
