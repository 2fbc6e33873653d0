"""Draws the pack's Registry icon, docs/icon.png: a body's keypoint skeleton beside a face ring, on a dark tile.

`python -m bolid_dev.release_icon` writes it again; pyproject.toml's [tool.comfy] Icon points at its raw GitHub URL.
The Registry shows square icons of at most 400 x 400 pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

ICON_PATH = Path(__file__).resolve().parent.parent / "docs" / "icon.png"
ICON_SIZE = 400
SUPERSAMPLE = 4

BACKGROUND = (22, 27, 41)
BODY = (79, 195, 247)
JOINT = (255, 255, 255)
FACE = (255, 183, 77)

# COCO-style joints on a 100-unit canvas: head, neck, shoulders, elbows, wrists, hips, knees, ankles.
JOINTS = {
    "neck": (38, 33),
    "l_shoulder": (27, 36),
    "r_shoulder": (49, 36),
    "l_elbow": (21, 52),
    "r_elbow": (55, 52),
    "l_wrist": (18, 66),
    "r_wrist": (58, 66),
    "l_hip": (31, 62),
    "r_hip": (45, 62),
    "l_knee": (29, 78),
    "r_knee": (47, 78),
    "l_ankle": (28, 92),
    "r_ankle": (48, 92),
}
BONES = [
    ("neck", "l_shoulder"),
    ("neck", "r_shoulder"),
    ("l_shoulder", "l_elbow"),
    ("l_elbow", "l_wrist"),
    ("r_shoulder", "r_elbow"),
    ("r_elbow", "r_wrist"),
    ("l_shoulder", "l_hip"),
    ("r_shoulder", "r_hip"),
    ("l_hip", "r_hip"),
    ("l_hip", "l_knee"),
    ("l_knee", "l_ankle"),
    ("r_hip", "r_knee"),
    ("r_knee", "r_ankle"),
]
HEAD_CENTRE, HEAD_RADIUS = (38, 21), 9
FACE_CENTRE, FACE_RADIUS = (74, 28), 15


def draw_icon(size: int = ICON_SIZE) -> Image.Image:
    canvas = size * SUPERSAMPLE
    unit = canvas / 100

    def at(point: tuple[float, float]) -> tuple[float, float]:
        return point[0] * unit, point[1] * unit

    def disc(centre: tuple[float, float], radius: float) -> list[float]:
        x, y = at(centre)
        return [x - radius * unit, y - radius * unit, x + radius * unit, y + radius * unit]

    image = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle([0, 0, canvas - 1, canvas - 1], radius=int(14 * unit), fill=BACKGROUND)
    for start, end in BONES:
        draw.line([at(JOINTS[start]), at(JOINTS[end])], fill=BODY, width=int(3.2 * unit))
    draw.ellipse(disc(HEAD_CENTRE, HEAD_RADIUS), outline=BODY, width=int(3.2 * unit))
    for joint in JOINTS.values():
        draw.ellipse(disc(joint, 2.3), fill=JOINT)
    # The identity: a face ring with its five landmarks (eyes, nose, mouth corners).
    draw.ellipse(disc(FACE_CENTRE, FACE_RADIUS), outline=FACE, width=int(3.2 * unit))
    for landmark in [(-5, -4), (5, -4), (0, 1), (-4, 6), (4, 6)]:
        draw.ellipse(disc((FACE_CENTRE[0] + landmark[0], FACE_CENTRE[1] + landmark[1]), 1.8), fill=FACE)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ICON_PATH)
    arguments = parser.parse_args()
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    draw_icon().save(arguments.out, optimize=True)
    print(arguments.out)


if __name__ == "__main__":
    main()
