"""What the scenario workflows of issue 13 read besides conftest's test assets, as tiny synthetic files under the
names the shipped workflows use: a folder of generated images to evaluate and a CLIP scorer.

Installed into a running server's base directory: folder and model lists are read again at each /prompt.
"""

from __future__ import annotations

from pathlib import Path

EVAL_FOLDER = "fastface_eval"  # the folder fastface_evaluation_folder.json evaluates, in input/
CLIP_SCORER = "clip-vit-large-patch14"  # the README's CLIP scorer folder, in models/clip_scorers/
FACE_CENTRE = (320, 320, 40)  # the reference face of conftest's bolid_face.png: x, y, side on a 640² image
# The evaluated images: the reference face itself, and one with no face. Expected: 2 images, 1 without a face, and
# ID similarity 1 over the one with a face (the same pixels as the reference).
EVAL_IMAGES = {"same_face.png": [FACE_CENTRE], "no_face.png": []}


def install_scenario_assets(base: Path) -> None:
    import numpy as np
    from onnx_factories import face_image
    from PIL import Image
    from test_eval_metrics import tiny_clip_folder

    folder = base / "input" / EVAL_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, faces in EVAL_IMAGES.items():
        Image.fromarray(face_image(640, 640, faces).astype(np.uint8)).save(folder / name)
    scorer = base / "models" / "clip_scorers" / CLIP_SCORER
    if not (scorer / "config.json").is_file():
        tiny_clip_folder(scorer)
