"""Preview of face detection: every face found boxed and numbered left to right, the embedded one highlighted."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..images import to_uint8_bgr
from .face import ImageFaces

PREVIEW_MAX_SIDE = 512
# RGB, drawn without anti-aliasing so a box's own pixels carry exactly its colour.
FACE_BOX_COLOUR = (80, 160, 255)
CHOSEN_BOX_COLOUR = (255, 200, 40)
FACE_BOX_THICKNESS, CHOSEN_BOX_THICKNESS = 1, 3


def draw_face_preview(images: torch.Tensor, faces: Sequence[ImageFaces]) -> torch.Tensor:
    """(N, h, w, 3) in [0, 1]: each image at most 512 px on its longer side with its faces' boxes and numbers."""
    import cv2

    batch = to_uint8_bgr(images)
    if len(faces) != len(batch):
        raise ValueError(f"Face preview needs the faces of every image: {len(batch)} images, {len(faces)} found.")
    height, width = batch.shape[1:3]
    scale = min(1.0, PREVIEW_MAX_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    previews = []
    for image, found in zip(batch, faces, strict=True):
        canvas = np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA)[..., ::-1])
        # The chosen face last, so its box is on top where boxes overlap.
        for number in sorted(range(len(found.boxes)), key=lambda k: k == found.chosen):
            chosen = number == found.chosen
            colour = CHOSEN_BOX_COLOUR if chosen else FACE_BOX_COLOUR
            x0, y0, x1, y1 = (round(float(v) * scale) for v in found.boxes[number])
            thickness = CHOSEN_BOX_THICKNESS if chosen else FACE_BOX_THICKNESS
            cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thickness, cv2.LINE_8)
            label_y = y0 - 4 - thickness if y0 >= 20 else y1 + 14 + thickness
            cv2.putText(canvas, str(number), (x0, label_y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        previews.append(torch.from_numpy(canvas).float() / 255.0)
    return torch.stack(previews)
