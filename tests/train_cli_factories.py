"""A tiny synthetic people dataset and run configs for the training CLI tests (diffusers host)."""

from __future__ import annotations

from pathlib import Path

import diffusers_factories
import numpy as np
from PIL import Image

PERSONS = {"ada": (220, 40, 40), "ben": (40, 200, 60), "cyd": (50, 70, 230)}
IMAGES_PER_PERSON = 2
SIZE = 64


def write_people(root: Path) -> Path:
    """Three people, two 64 px images each: a coloured figure on a grey ground, in two poses, with captions."""
    root = Path(root)
    rng = np.random.default_rng(0)
    for person, colour in PERSONS.items():
        folder = root / person
        folder.mkdir(parents=True)
        (folder / "caption.txt").write_text(f"a photo of {person}", encoding="utf-8")
        for view in range(IMAGES_PER_PERSON):
            pixels = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)
            left = 12 + 20 * view
            pixels[8:56, left : left + 16] = colour
            pixels += rng.integers(0, 8, pixels.shape, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"view{view}.png")
    return root


def write_models(folder: Path) -> dict[str, Path]:
    folder = Path(folder)
    sdxl = diffusers_factories.write_tiny_sdxl(folder / "sdxl")
    clip = diffusers_factories.write_tiny_clip_vision(folder / "clip_vision")
    return {"base_model": sdxl, "clip_vision": clip}


def run_config(
    folder: Path, dataset: Path, models: dict[str, Path], *, max_steps: int, batch_size: int = 2, **tables
) -> dict:
    """A config that trains the image source only (no face or pose models), every source kept."""
    config = {
        "seed": 3,
        "optimizer": {"lr": 3e-3, "weight_decay": 0.0, "max_grad_norm": 1.0},
        "steps": {"max_steps": max_steps, "batch_size": batch_size},
        "checkpoint": {"every_steps": 1000, "keep_last": 2},
        "loss": {"alpha_id": 0.0, "beta_clip": 0.0},
        "dropout": {"image": 0.0, "face": 0.0, "body": 0.0, "text": 0.0},
        "data": {"resolution": SIZE},
        "adapter": {"image_tokens": 2, "face_tokens": 0, "body_tokens": 0},
        "paths": {
            "dataset": str(dataset), "cache": str(folder / "cache"), "output": str(folder / "run"),
            "base_model": str(models["base_model"]), "clip_vision": str(models["clip_vision"]),
        },
        "logging": {"tensorboard": False},
        "run": {"name": "tiny", "device": "cpu"},
    }  # fmt: skip
    for table, values in tables.items():
        if isinstance(values, dict):
            config.setdefault(table, {}).update(values)
        else:
            config[table] = values
    return config


def write_config(path: Path, config: dict) -> Path:
    """As TOML, with the writer the miniature experiment uses for its own CLI runs."""
    from bolid_core.miniature.experiment import write_toml

    return write_toml(Path(path), config)
