"""Tier server: the README's main job without an SDXL checkpoint runs the miniature BoLID in a real ComfyUI: it
prints the paths of text alone and of text plus each of the two shipped saved bodies, and the tall body comes out
taller than the short one (the figure's extent counted in plain pixel rows)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_main_job_without_a_checkpoint_shows_the_miniature(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "COMFYUI_PATH"}
    result = subprocess.run(
        [sys.executable, "-m", "bolid_dev.run_example", "--timeout", "600"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "MINIATURE BoLID" in result.stdout
    saved = dict(re.findall(r"saved image \((miniature_\w+)\): (.+)", result.stdout))
    assert set(saved) == {"miniature_tall_slim", "miniature_short_broad", "miniature_text_only"}, result.stdout
    heights = {}
    for name, path in saved.items():
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        assert image.shape == (256, 256, 3), "the 64 px image, enlarged 4x for viewing"
        heights[name] = figure_rows(image[::4, ::4])
    # The shipped bodies are 1.14 and 0.86 of the mean height (experiment.example_bodies): the tall one must be
    # clearly taller, whatever the caption's pose.
    assert heights["miniature_tall_slim"] >= 1.15 * heights["miniature_short_broad"], heights


def figure_rows(image: np.ndarray) -> int:
    """Rows holding figure pixels: colours far from the picture's border colour (its background)."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    distance = np.linalg.norm(image - np.median(border, axis=0), axis=2)
    rows = np.flatnonzero((distance > 60).sum(axis=1) >= 1)
    assert rows.size, "no figure in the image"
    return int(rows[-1] - rows[0] + 1)
