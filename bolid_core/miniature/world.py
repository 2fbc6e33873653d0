"""A synthetic world of people small enough to train on a CPU: flat-coloured frontal figures whose body proportions
are the identity, and whose pose, framing and colours are the view.

A figure, top to bottom: a skin-coloured head (a disc) on a short neck, a shirt-coloured torso (a trapezoid with the
shoulder width on top and the hip width at the bottom), skin-coloured straight arms ending in round hands, hung from
the shoulder corners, and trouser-coloured straight legs from the hip corners down to a horizontal sole line. Arms
and legs are drawn behind the torso, so its outline is never hidden; legs are drawn behind the arms.

Units. A BodyShape's `height` is the figure's height at view scale 1 as a fraction of `HEIGHT_UNIT` (0.75) of the
image side; every other proportion is a ratio of lengths: head diameter / height, shoulder width / height, hip width
/ height, limb thickness / height, torso length / leg length, where the figure's height runs from the top of the head
to the soles, the torso's length from the shoulder line to the hip line and the leg's length from the hip line to the
soles (vertical lengths, so that they do not change with the pose). `true_proportions` gives the same six numbers in
the measurer's units (the height as a fraction of the image side), and `PROPORTION_RANGES` is the uniform identity
prior in those units.

Images are rendered at `SUPERSAMPLE` times the size by sampling each fine pixel's centre, then downsampled with
area averaging, so every edge is anti-aliased and the colour fractions of a pixel are its area fractions.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

import cv2
import numpy as np

PROPORTION_NAMES = ("height", "head", "shoulder", "hip", "limb", "torso_to_leg")

HEIGHT_UNIT = 0.75  # a BodyShape.height of 1 is a figure 0.75 of the image side tall at view scale 1
BODY_RANGES = {
    "height": (0.80, 1.15),
    "head": (0.11, 0.17),
    "shoulder": (0.20, 0.32),
    "hip": (0.14, 0.24),
    "limb": (0.05, 0.09),
    "torso_to_leg": (0.55, 0.95),
}
PROPORTION_RANGES = {
    name: ((low * HEIGHT_UNIT, high * HEIGHT_UNIT) if name == "height" else (low, high))
    for name, (low, high) in BODY_RANGES.items()
}

NECK_LENGTH = 0.035  # visible neck, head bottom to shoulder line, / height
NECK_WIDTH = 0.45  # / head diameter
ARM_LENGTH = 0.32  # shoulder joint to wrist, / height; the same for everyone, so it is no identity
HAND_RADIUS = 0.65  # / limb thickness
ANKLE_HEIGHT = 0.75  # ankle keypoint above the soles, / limb thickness

ARM_ABDUCTION_DEG = (10.0, 60.0)
LEG_ABDUCTION_DEG = (3.0, 15.0)
SCALE_RANGE = (0.90, 1.05)
MAX_OFFSET = 0.10  # horizontal position, / image side
MAX_BASELINE_JITTER = 0.03  # soles raised above the lowest position by up to this, / image side
MARGIN_PX = 2.0
SUPERSAMPLE = 4

SKIN = (224, 172, 138)
SHIRT_COLOURS = {
    "red": (200, 35, 45),
    "green": (35, 150, 65),
    "blue": (45, 80, 205),
    "yellow": (240, 210, 40),
    "purple": (125, 55, 165),
    "orange": (245, 125, 25),
}
TROUSER_COLOURS = {
    "black": (28, 28, 32),
    "navy": (25, 35, 100),
    "brown": (105, 65, 35),
    "grey": (120, 120, 125),
    "dark green": (25, 85, 45),
}
BACKGROUND_COLOURS = {
    "light blue": (175, 210, 240),
    "white": (248, 248, 248),
    "mint green": (160, 230, 200),
    "lavender": (215, 200, 240),
}
MIN_COLOUR_DISTANCE = 90.0  # RGB distance between any two of skin, shirt, trousers and background in one view
MIN_COLOUR_SPREAD = 20.0  # smallest singular value of the colours less the background: all four separable as mixtures

ARM_BUCKETS = ((25.0, "down"), (42.0, "slightly out"), (math.inf, "out wide"))
LEGS_APART_DEG = 8.0  # mean leg abduction from which the legs are "apart"
POSITION_WORDS = ((-1.0 / 3.0, "left of centre"), (1.0 / 3.0, "in the centre"), (math.inf, "right of centre"))

# COCO-17 order; a frontal figure's left side is on the image's right.
KEYPOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

_BACKGROUND, _SKIN, _SHIRT, _TROUSERS = range(4)


@dataclass(frozen=True)
class BodyShape:
    """One identity: the proportions above, in BodyShape units (see the module docstring)."""

    height: float
    head: float
    shoulder: float
    hip: float
    limb: float
    torso_to_leg: float

    def __post_init__(self):
        for name, value in zip(PROPORTION_NAMES, astuple(self), strict=True):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"BodyShape.{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class View:
    """One picture of a body: pose, framing and colours. Angles are abductions from the vertical in degrees;
    `position` in [-1, 1] shifts the figure by up to MAX_OFFSET of the width (less where a wide figure would leave
    the frame); `baseline_jitter` in [0, 1] raises the soles by up to MAX_BASELINE_JITTER of the height (same)."""

    left_arm_deg: float
    right_arm_deg: float
    left_leg_deg: float
    right_leg_deg: float
    scale: float
    position: float
    baseline_jitter: float
    shirt: str
    trousers: str
    background: str

    def __post_init__(self):
        for name, palette in (
            ("shirt", SHIRT_COLOURS),
            ("trousers", TROUSER_COLOURS),
            ("background", BACKGROUND_COLOURS),
        ):
            if getattr(self, name) not in palette:
                raise ValueError(f"View.{name} must be one of {sorted(palette)}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Render:
    image: np.ndarray  # (size, size, 3) uint8 RGB
    keypoints: np.ndarray  # (17, 3) float: x and y as fractions of the width and height, confidence 1


def _colour_distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def _colours_separable(shirt, trousers, background) -> bool:
    colours = (SKIN, shirt, trousers, background)
    if any(_colour_distance(a, b) < MIN_COLOUR_DISTANCE for i, a in enumerate(colours) for b in colours[i + 1 :]):
        return False
    spread = np.subtract(colours[:3], background, dtype=np.float64)
    return float(np.linalg.svd(spread, compute_uv=False)[-1]) >= MIN_COLOUR_SPREAD


COLOUR_COMBINATIONS = tuple(
    (shirt, trousers, background)
    for shirt in SHIRT_COLOURS
    for trousers in TROUSER_COLOURS
    for background in BACKGROUND_COLOURS
    if _colours_separable(SHIRT_COLOURS[shirt], TROUSER_COLOURS[trousers], BACKGROUND_COLOURS[background])
)


def sample_body(rng: np.random.Generator) -> BodyShape:
    return BodyShape(*(float(rng.uniform(*BODY_RANGES[name])) for name in PROPORTION_NAMES))


def sample_view(rng: np.random.Generator) -> View:
    arms = rng.uniform(*ARM_ABDUCTION_DEG, size=2)
    legs = rng.uniform(*LEG_ABDUCTION_DEG, size=2)
    shirt, trousers, background = COLOUR_COMBINATIONS[int(rng.integers(len(COLOUR_COMBINATIONS)))]
    return View(
        left_arm_deg=float(arms[0]),
        right_arm_deg=float(arms[1]),
        left_leg_deg=float(legs[0]),
        right_leg_deg=float(legs[1]),
        scale=float(rng.uniform(*SCALE_RANGE)),
        position=float(rng.uniform(-1.0, 1.0)),
        baseline_jitter=float(rng.uniform(0.0, 1.0)),
        shirt=shirt,
        trousers=trousers,
        background=background,
    )


def true_proportions(body: BodyShape) -> np.ndarray:
    """The identity in the measurer's units: the height at view scale 1 as a fraction of the image side."""
    values = astuple(body)
    return np.array([values[0] * HEIGHT_UNIT, *values[1:]], dtype=np.float64)


def view_proportions(body: BodyShape, view: View) -> np.ndarray:
    """What an exact measurement of one render gives: only the height depends on the view (its scale)."""
    proportions = true_proportions(body)
    proportions[0] *= view.scale
    return proportions


@dataclass(frozen=True)
class _Figure:
    """The figure's shapes in output pixels (x right, y down, pixel i spanning [i, i + 1])."""

    legs: tuple[np.ndarray, np.ndarray]  # parallelograms, (4, 2) each, image-left leg first
    arms: tuple[np.ndarray, np.ndarray]  # rectangles
    hands: tuple[tuple[float, float], tuple[float, float]]
    hand_radius: float
    neck: np.ndarray
    torso: np.ndarray
    head_centre: tuple[float, float]
    head_radius: float
    keypoints: np.ndarray  # (17, 2) in pixels


def _layout(body: BodyShape, view: View, size: int, centre_x: float, soles_y: float) -> _Figure:
    height = body.height * view.scale * HEIGHT_UNIT * size
    head_d = body.head * height
    shoulder = body.shoulder * height
    hip = body.hip * height
    limb = body.limb * height
    neck_length = NECK_LENGTH * height
    torso_and_leg = height - head_d - neck_length
    leg_length = torso_and_leg / (1.0 + body.torso_to_leg)
    top = soles_y - height
    head_cy = top + head_d / 2
    shoulder_y = top + head_d + neck_length
    hip_y = shoulder_y + body.torso_to_leg * leg_length

    torso = np.array(
        [
            (centre_x - shoulder / 2, shoulder_y),
            (centre_x + shoulder / 2, shoulder_y),
            (centre_x + hip / 2, hip_y),
            (centre_x - hip / 2, hip_y),
        ]
    )
    neck_half = NECK_WIDTH * head_d / 2
    neck = np.array(
        [
            (centre_x - neck_half, head_cy),
            (centre_x + neck_half, head_cy),
            (centre_x + neck_half, shoulder_y + limb),
            (centre_x - neck_half, shoulder_y + limb),
        ]
    )

    legs, knees, ankles, hips = [], [], [], []
    for side, degrees in ((-1.0, view.right_leg_deg), (1.0, view.left_leg_deg)):  # image left = the person's right
        slope = math.tan(math.radians(degrees))
        half_w = limb / (2.0 * math.cos(math.radians(degrees)))
        top_x = centre_x + side * hip / 2
        sole_x = top_x + side * slope * leg_length
        legs.append(
            np.array(
                [
                    (top_x - half_w, hip_y),
                    (top_x + half_w, hip_y),
                    (sole_x + half_w, soles_y),
                    (sole_x - half_w, soles_y),
                ]
            )
        )
        ankle_y = soles_y - ANKLE_HEIGHT * limb
        ankle = (top_x + side * slope * (ankle_y - hip_y), ankle_y)
        hips.append((top_x - side * limb / 2, hip_y - limb / 2))  # the joint, just inside the torso
        ankles.append(ankle)
        knees.append(((top_x + ankle[0]) / 2, (hip_y + ankle_y) / 2))

    arm_length = ARM_LENGTH * height
    arms, hands, elbows, joints = [], [], [], []
    for side, degrees in ((-1.0, view.right_arm_deg), (1.0, view.left_arm_deg)):
        angle = math.radians(degrees)
        direction = np.array([side * math.sin(angle), math.cos(angle)])
        across = np.array([direction[1], -direction[0]]) * (limb / 2)
        joint = np.array([centre_x + side * shoulder / 2, shoulder_y + limb / 2])
        wrist = joint + arm_length * direction
        arms.append(np.array([joint - across, joint + across, wrist + across, wrist - across]))
        hands.append((float(wrist[0]), float(wrist[1])))
        elbows.append(tuple(joint + arm_length / 2 * direction))
        joints.append(tuple(joint))

    eye_dx, eye_dy = 0.18 * head_d, -0.06 * head_d
    keypoints = np.array(
        [
            (centre_x, head_cy + 0.12 * head_d),
            (centre_x + eye_dx, head_cy + eye_dy),
            (centre_x - eye_dx, head_cy + eye_dy),
            (centre_x + head_d / 2, head_cy),
            (centre_x - head_d / 2, head_cy),
            joints[1],
            joints[0],
            elbows[1],
            elbows[0],
            hands[1],
            hands[0],
            hips[1],
            hips[0],
            knees[1],
            knees[0],
            ankles[1],
            ankles[0],
        ],
        dtype=np.float64,
    )
    return _Figure(
        legs=(legs[0], legs[1]),
        arms=(arms[0], arms[1]),
        hands=(hands[0], hands[1]),
        hand_radius=HAND_RADIUS * limb,
        neck=neck,
        torso=torso,
        head_centre=(centre_x, head_cy),
        head_radius=head_d / 2,
        keypoints=keypoints,
    )


def _horizontal_extent(figure: _Figure) -> tuple[float, float]:
    polygons = np.concatenate([*figure.legs, *figure.arms, figure.torso])
    xs = [polygons[:, 0].min(), polygons[:, 0].max()]
    for x, _ in figure.hands:
        xs += [x - figure.hand_radius, x + figure.hand_radius]
    cx = figure.head_centre[0]
    xs += [cx - figure.head_radius, cx + figure.head_radius]
    return min(xs), max(xs)


def _place(body: BodyShape, view: View, size: int) -> _Figure:
    height = body.height * view.scale * HEIGHT_UNIT * size
    vertical_room = size - 2 * MARGIN_PX - height
    if vertical_room < 0:
        raise ValueError(f"a figure {height:.1f} px tall does not fit a {size} px image; use a smaller height or scale")
    soles_y = size - MARGIN_PX - view.baseline_jitter * min(MAX_BASELINE_JITTER * size, vertical_room)
    centred = _layout(body, view, size, size / 2, soles_y)
    left, right = _horizontal_extent(centred)
    room = min(left - MARGIN_PX, size - MARGIN_PX - right)
    if room < 0:
        raise ValueError(f"a figure {right - left:.1f} px wide does not fit a {size} px image; narrow the pose")
    offset = view.position * min(MAX_OFFSET * size, room)
    return _layout(body, view, size, size / 2 + offset, soles_y)


def _window(points_x, points_y, fine: int, limit: int):
    x0 = max(math.floor(min(points_x) * fine), 0)
    x1 = min(math.ceil(max(points_x) * fine) + 1, limit)
    y0 = max(math.floor(min(points_y) * fine), 0)
    y1 = min(math.ceil(max(points_y) * fine) + 1, limit)
    xs = (np.arange(x0, x1, dtype=np.float64) + 0.5) / fine
    ys = (np.arange(y0, y1, dtype=np.float64) + 0.5) / fine
    return (slice(y0, y1), slice(x0, x1)), xs[None, :], ys[:, None]


def _fill_convex(labels: np.ndarray, polygon: np.ndarray, fine: int, value: int) -> None:
    window, xs, ys = _window(polygon[:, 0], polygon[:, 1], fine, labels.shape[0])
    x, y = polygon[:, 0], polygon[:, 1]
    orientation = 1.0 if (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) > 0 else -1.0
    inside = np.ones((ys.shape[0], xs.shape[1]), dtype=bool)
    for (ax, ay), (bx, by) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        inside &= orientation * ((bx - ax) * (ys - ay) - (by - ay) * (xs - ax)) >= 0
    labels[window][inside] = value


def _fill_disc(labels: np.ndarray, centre: tuple[float, float], radius: float, fine: int, value: int) -> None:
    cx, cy = centre
    window, xs, ys = _window((cx - radius, cx + radius), (cy - radius, cy + radius), fine, labels.shape[0])
    labels[window][(xs - cx) ** 2 + (ys - cy) ** 2 <= radius * radius] = value


def render(body: BodyShape, view: View, size: int = 64) -> Render:
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"render size must be an int >= 16, got {size!r}")
    figure = _place(body, view, size)
    fine = SUPERSAMPLE
    labels = np.full((size * fine, size * fine), _BACKGROUND, dtype=np.uint8)
    for leg in figure.legs:
        _fill_convex(labels, leg, fine, _TROUSERS)
    for arm, hand in zip(figure.arms, figure.hands, strict=True):
        _fill_convex(labels, arm, fine, _SKIN)
        _fill_disc(labels, hand, figure.hand_radius, fine, _SKIN)
    _fill_convex(labels, figure.neck, fine, _SKIN)
    _fill_convex(labels, figure.torso, fine, _SHIRT)
    _fill_disc(labels, figure.head_centre, figure.head_radius, fine, _SKIN)
    palette = np.array(
        [
            BACKGROUND_COLOURS[view.background],
            SKIN,
            SHIRT_COLOURS[view.shirt],
            TROUSER_COLOURS[view.trousers],
        ],
        dtype=np.uint8,
    )
    image = cv2.resize(palette[labels], (size, size), interpolation=cv2.INTER_AREA)
    keypoints = np.concatenate([figure.keypoints / size, np.ones((17, 1))], axis=1)
    return Render(image=image, keypoints=keypoints)


def _arm_words(degrees: float) -> str:
    return next(word for limit, word in ARM_BUCKETS if degrees < limit)


def caption(view: View) -> str:
    """Pose and scene in words; never the body's proportions."""
    left, right = _arm_words(view.left_arm_deg), _arm_words(view.right_arm_deg)
    arms = f"arms {left}" if left == right else f"the left arm {left} and the right arm {right}"
    legs = "legs apart" if (view.left_leg_deg + view.right_leg_deg) / 2 >= LEGS_APART_DEG else "legs together"
    position = next(word for limit, word in POSITION_WORDS if view.position < limit)
    return (
        f"a person with {arms} and {legs}, wearing a {view.shirt} shirt and {view.trousers} trousers, "
        f"on a {view.background} background, {position}"
    )


def write_dataset(
    root: str | os.PathLike, bodies: Sequence[BodyShape], views_per_body: int, seed: int, size: int = 64
) -> list[str]:
    """root/person_0000/view_00.png with view_00.txt (caption) and view_00.keypoints.json (17 [x, y, confidence]
    triples, COCO-17 order, fractions of the image side); views drawn from `seed`. Returns the person folder names."""
    if views_per_body < 1:
        raise ValueError(f"views_per_body must be at least 1, got {views_per_body}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    names = []
    for index, body in enumerate(bodies):
        name = f"person_{index:04d}"
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for view_index in range(views_per_body):
            view = sample_view(rng)
            picture = render(body, view, size)
            stem = folder / f"view_{view_index:02d}"
            if not cv2.imwrite(f"{stem}.png", cv2.cvtColor(picture.image, cv2.COLOR_RGB2BGR)):
                raise RuntimeError(f"could not write {stem}.png; check that the folder is writable")
            Path(f"{stem}.txt").write_text(caption(view), encoding="utf-8")
            Path(f"{stem}.keypoints.json").write_text(
                json.dumps([[round(float(v), 6) for v in point] for point in picture.keypoints]), encoding="utf-8"
            )
        names.append(name)
    return names
