"""Body proportions measured from the pixels of one picture of the miniature world, independently of its renderer.

Conventions relied on (and nothing else): a plain background that fills the image border; one frontal, upright
figure made of four flat colours at most, background included: skin (a round head on top, a narrower neck, arms),
a shirt (the torso, a symmetric trapezoid from the shoulder line to the hip line), trousers (two straight legs from
the hip line down to flat soles); the hands end above the lower half of the legs.

Pixels are unmixed, not thresholded: with the four colours estimated from the picture (the border's median for the
background, a 3-means of the figure's colours for the rest), every pixel is solved as a mixture of them, so an
anti-aliased or blurred edge pixel contributes its fraction of each part. Areas and row sums of those fractions do not
change under blur, and noise averages out in them, which is what makes sub-pixel lengths reliable:

- torso: a line fitted to the shirt's row widths on its inner rows; its top and bottom edges extend the inner rows by
  each outer row's shirt mass over the fitted width there; shoulder and hip widths are the line at those edges;
- head: a disc, blurred by a Gaussian of unknown width, fitted to the skin row widths of the head's upper part;
- legs: on each side, the lower half's trouser row widths (horizontal, w) and row centres (slope, tan a); limb
  thickness is w cos a; the soles extend the inner rows by the bottom rows' mass over w; leg length is the hip line
  to the soles;
- height: top of the fitted disc to the soles, over the image height.

The result is in the order of PROPORTION_NAMES: height / image size, head diameter, shoulder width, hip width and
limb thickness over the height, torso length over leg length.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .world import PROPORTION_NAMES, PROPORTION_RANGES

FIGURE_CONTRAST = 50.0  # RGB distance from the background beyond which a pixel surely belongs to the figure
MIN_FIGURE_PIXELS = 40
SUBSAMPLES_PER_ROW = 8  # of the head model's vertical profile
MAX_HEAD_BLUR = 2.5  # pixels
LOWER_LEG_START = 0.45  # legs are measured from this fraction of their visible length down


class MeasurementError(ValueError):
    """The picture has no figure that the measurer can read."""


def _border_pixels(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])


def _components(mask: np.ndarray):
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return count, labels, stats


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def _fractions(image: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Per pixel, the weights of the four colours that reproduce it and sum to 1 (unclipped, so noise averages out)."""
    system = np.vstack([colours.T, np.ones((1, 4))])  # 4x4: RGB rows and the sum-to-one row
    if np.linalg.cond(system) > 1e4:
        raise MeasurementError("the figure's colours cannot be told apart: skin, shirt, trousers and background mix")
    flat = np.concatenate([image.reshape(-1, 3), np.ones((image.shape[0] * image.shape[1], 1))], axis=1)
    return np.linalg.solve(system, flat.T).T.reshape(*image.shape[:2], 4)


def _row_profile(fraction: np.ndarray, region: np.ndarray) -> np.ndarray:
    return (fraction * region).sum(axis=1)


def _extend_edges(mass: np.ndarray, width: np.ndarray, first: int, last: int) -> tuple[float, float]:
    """Sub-pixel top and bottom of a part whose inner rows are first..last: each outer row adds its mass over the
    part's width there (the covered fraction of that row)."""
    above = mass[:first] / np.maximum(width[:first], 1e-6)
    below = mass[last + 1 :] / np.maximum(width[last + 1 :], 1e-6)
    return first - float(above.sum()), last + 1 + float(below.sum())


def _disc_rows(params: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Row sums of a disc (centre row coordinate yc, radius r) blurred vertically by a Gaussian of width s."""
    yc, radius, blur = params
    step = 1.0 / SUBSAMPLES_PER_ROW
    pad = math.ceil(3 * abs(blur)) + 1
    y = np.arange(rows[0] - pad, rows[-1] + 1 + pad, step) + step / 2
    chord = 2.0 * np.sqrt(np.clip(radius * radius - (y - yc) ** 2, 0.0, None))
    if abs(blur) > 1e-3:
        offsets = np.arange(-pad, pad + step / 2, step)
        kernel = np.exp(-0.5 * (offsets / blur) ** 2)
        chord = np.convolve(chord, kernel / kernel.sum(), mode="same")
    per_row = chord.reshape(-1, SUBSAMPLES_PER_ROW).mean(axis=1)
    return per_row[pad : pad + len(rows)]


def _fit_disc(mass: np.ndarray, rows: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Levenberg-Marquardt on (yc, r, blur)."""
    params = start.astype(np.float64)
    damping = 1e-3
    residual = _disc_rows(params, rows) - mass
    cost = float(residual @ residual)
    for _ in range(40):
        jacobian = np.empty((len(rows), 3))
        for j, delta in enumerate((1e-4, 1e-4, 1e-4)):
            moved = params.copy()
            moved[j] += delta
            jacobian[:, j] = (_disc_rows(moved, rows) - mass - residual) / delta
        normal = jacobian.T @ jacobian
        gradient = jacobian.T @ residual
        improved = False
        while damping < 1e6:
            step = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-9), -gradient)
            trial = params + step
            trial[1] = max(trial[1], 0.5)
            trial[2] = min(max(trial[2], 0.0), MAX_HEAD_BLUR)
            trial_residual = _disc_rows(trial, rows) - mass
            trial_cost = float(trial_residual @ trial_residual)
            if trial_cost < cost:
                params, residual, cost = trial, trial_residual, trial_cost
                damping = max(damping / 10, 1e-7)
                improved = True
                break
            damping *= 10
        if not improved or np.abs(step).max() < 1e-6:
            break
    return params


def _leg(fraction: np.ndarray, region: np.ndarray, first: int, last: int) -> tuple[float, float, float]:
    """One leg's horizontal width, slope dx/dy and sub-pixel sole line from its rows first..last (inner rows)."""
    mass = _row_profile(fraction, region)
    xs = np.arange(fraction.shape[1]) + 0.5
    rows = np.arange(first, last + 1)
    inner = mass[rows]
    if np.any(inner <= 0.25):
        raise MeasurementError("a leg is broken or hidden in its lower half; the figure must stand with both legs seen")
    centres = (fraction[rows] * region[rows] * xs).sum(axis=1) / inner
    slope = float(np.polyfit(rows + 0.5, centres, 1)[0])
    width = float(inner.mean())
    below = mass[last + 1 :] / width
    return width, slope, last + 1 + float(below.sum())


def measure(image: np.ndarray) -> np.ndarray:
    """The six proportions of the figure in an RGB uint8 picture (H, W, 3); MeasurementError when there is none.

    A generated picture may hold no figure of the world's kind at all (parts missing, merged or misplaced): whatever
    the steps below cannot measure is a MeasurementError, never another exception or a non-finite value."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 16:
        raise MeasurementError(f"expected an RGB image of at least 16x16 pixels, got shape {image.shape}")
    try:
        values = _measure(image)
    except MeasurementError:
        raise
    except (ValueError, IndexError, ZeroDivisionError, np.linalg.LinAlgError) as error:
        raise MeasurementError(f"no measurable figure: {error}") from error
    if not np.all(np.isfinite(values)):
        raise MeasurementError("no measurable figure: a proportion came out non-finite")
    return values


def _measure(image: np.ndarray) -> np.ndarray:
    pixels = image.astype(np.float64)
    height, width = pixels.shape[:2]

    background = np.median(_border_pixels(pixels), axis=0)
    distance = np.linalg.norm(pixels - background, axis=2)
    figure = distance > FIGURE_CONTRAST
    if figure.sum() < MIN_FIGURE_PIXELS:
        raise MeasurementError("no figure found: the picture is (nearly) only background")
    rows_with_figure = np.flatnonzero(figure.any(axis=1))
    top_row, bottom_row = rows_with_figure[0], rows_with_figure[-1]
    span = bottom_row - top_row + 1

    def band(lo: float, hi: float) -> np.ndarray:
        rows = slice(top_row + int(lo * span), top_row + max(math.ceil(hi * span), int(lo * span) + 1))
        return pixels[rows][figure[rows]], distance[rows][figure[rows]]

    def purest(colours: np.ndarray, distances: np.ndarray) -> np.ndarray:
        """Edge pixels mix a part with the background; the ones farthest from the background are the part's own."""
        if len(colours) == 0:
            raise MeasurementError("the figure has no head, torso or legs where a standing figure has them")
        return np.median(colours[distances >= np.quantile(distances, 0.6)], axis=0)

    skin_colour = purest(*band(0.0, 0.08))
    trouser_colour = purest(*band(0.92, 1.0))
    torso_colours, torso_distances = band(0.25, 0.4)
    not_skin = np.linalg.norm(torso_colours - skin_colour, axis=1) > FIGURE_CONTRAST
    shirt_colour = purest(torso_colours[not_skin], torso_distances[not_skin])
    colours = np.array([background, skin_colour, shirt_colour, trouser_colour])
    for _ in range(2):  # refine each colour on the pixels that are nearly all of it
        fractions = _fractions(pixels, colours)
        for k in (1, 2, 3):
            # chosen by the neighbourhood's mean, so that a pixel's own noise hardly decides whether it is taken
            own = cv2.blur(fractions[..., k].astype(np.float32), (3, 3)) > 0.9
            if own.sum() < 4:
                own = fractions[..., k] > 0.85
            if own.sum() >= 4:
                colours[k] = np.median(pixels[own], axis=0)
    fractions = _fractions(pixels, colours)
    labels = np.argmax(fractions, axis=2)  # an edge pixel goes to the part covering most of it
    rows = np.arange(height)[:, None] * np.ones((1, width))
    skin, shirt, trousers = 1, 2, 3
    skin_fraction, shirt_fraction, trouser_fraction = fractions[..., 1], fractions[..., 2], fractions[..., 3]

    # torso
    count, parts, stats = _components(labels == shirt)
    if count < 2:
        raise MeasurementError("no torso found")
    torso_id = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    torso_top = int(stats[torso_id, cv2.CC_STAT_TOP])
    torso_bottom = torso_top + int(stats[torso_id, cv2.CC_STAT_HEIGHT]) - 1
    first, last = torso_top + 2, torso_bottom - 2
    if last - first < 2:
        raise MeasurementError("the torso is too short to measure")
    shirt_mass = _row_profile(shirt_fraction, _dilate(parts == torso_id, 2))
    inner_rows = np.arange(first, last + 1)
    line = np.polyfit(inner_rows + 0.5, shirt_mass[inner_rows], 1)
    fitted_width = np.polyval(line, np.arange(height) + 0.5)
    shoulder_y, hip_y = _extend_edges(shirt_mass, fitted_width, first, last)
    shoulder_width, hip_width = float(np.polyval(line, shoulder_y)), float(np.polyval(line, hip_y))
    torso_centre_x = float(
        (shirt_fraction[inner_rows] * (np.arange(width) + 0.5)).sum() / shirt_fraction[inner_rows].sum()
    )

    # head: the skin component reaching highest, above the shoulder line
    count, parts, stats = _components((labels == skin) & (rows < shoulder_y))
    if count < 2:
        raise MeasurementError("no head found above the torso")
    candidates = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= 3]
    if not candidates:
        raise MeasurementError("no head found above the torso")
    head_id = min(candidates, key=lambda i: stats[i, cv2.CC_STAT_TOP])
    head_region = _dilate(parts == head_id, 1)
    head_mass = _row_profile(skin_fraction, head_region)
    head_top = int(stats[head_id, cv2.CC_STAT_TOP])
    widest = head_top + int(np.argmax(head_mass[head_top : int(shoulder_y)]))
    radius_guess = max(head_mass[widest] / 2, 1.0)
    centre_guess = head_top + radius_guess
    fit_last = math.floor(centre_guess + 0.45 * radius_guess)
    fit_rows = np.arange(max(head_top - 3, 0), fit_last + 1)
    if len(fit_rows) < 4:
        raise MeasurementError("the head is too small to measure")
    head_y, head_radius, _ = _fit_disc(head_mass[fit_rows], fit_rows, np.array([centre_guess, radius_guess, 0.5]))

    # legs: split at the torso's axis
    trouser_region = _dilate(labels == trousers, 2)
    trouser_region[: math.floor(hip_y)] = False
    trouser_rows = np.flatnonzero((labels == trousers).any(axis=1))
    if trouser_rows.size == 0:
        raise MeasurementError("no legs found")
    lowest = int(trouser_rows[-1])
    leg_first = math.ceil(hip_y + LOWER_LEG_START * (lowest + 1 - hip_y))
    leg_last = lowest - 2
    if leg_last - leg_first < 2:
        raise MeasurementError("the legs are too short to measure")
    sides = []
    split = round(torso_centre_x)
    for columns in (slice(0, split), slice(split, width)):
        region = np.zeros_like(trouser_region)
        region[:, columns] = trouser_region[:, columns]
        sides.append(_leg(trouser_fraction, region, leg_first, leg_last))
    limb = float(np.mean([w / math.sqrt(1.0 + slope * slope) for w, slope, _ in sides]))
    soles_y = float(np.mean([sole for _, _, sole in sides]))

    figure_height = soles_y - (head_y - head_radius)
    torso_length = hip_y - shoulder_y
    leg_length = soles_y - hip_y
    if figure_height <= 0 or torso_length <= 0 or leg_length <= 0:
        raise MeasurementError("the figure's parts are not in order head, torso, legs from top to bottom")
    return np.array(
        [
            figure_height / height,
            2 * head_radius / figure_height,
            shoulder_width / figure_height,
            hip_width / figure_height,
            limb / figure_height,
            torso_length / leg_length,
        ]
    )


def proportion_error(measured: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per sample, the mean over the six proportions of |measured - true| / (high - low) of its prior range."""
    measured, true = np.asarray(measured, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if measured.shape[-1] != len(PROPORTION_NAMES) or true.shape[-1] != len(PROPORTION_NAMES):
        raise ValueError(
            f"proportions have {len(PROPORTION_NAMES)} values in the last axis ({', '.join(PROPORTION_NAMES)})"
        )
    return (np.abs(measured - true) / range_widths()).mean(axis=-1)


def range_widths() -> np.ndarray:
    return np.array([PROPORTION_RANGES[name][1] - PROPORTION_RANGES[name][0] for name in PROPORTION_NAMES])
