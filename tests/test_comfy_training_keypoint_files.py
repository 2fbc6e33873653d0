"""Tier 2: the ComfyUI training host with renderer keypoints (<stem>.keypoints.json beside every image): a body target
needs no pose model then, a mixed dataset without one is refused by name, and the command-line-only target base_unet
is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_comfy_training_host import write_dataset
from test_comfy_training_targets import body_config

from bolid_core.body.vae import load_body_vae
from bolid_core.train.config import TrainTarget


def with_keypoints(root: Path, skip: tuple[str, ...] = ()) -> Path:
    generator = torch.Generator().manual_seed(9)
    for image in sorted(root.glob("*/*.png")):
        if f"{image.parent.name}/{image.name}" in skip:
            continue
        points = 0.1 + 0.8 * torch.rand(17, 3, generator=generator)
        points[:, 2] = 1.0
        image.with_name(f"{image.stem}.keypoints.json").write_text(json.dumps(points.tolist()))
    return root


def test_body_vae_trains_from_keypoint_files_without_a_pose_model(comfy_nodes, tmp_path: Path) -> None:
    from bolid_core.comfy.train_host import TrainingModels, TrainingRun, train_adapter

    dataset = with_keypoints(write_dataset(tmp_path / "data"))
    config = body_config(TrainTarget.BODY_VAE, 2, body={"image_size": 32})
    run = TrainingRun(dataset, tmp_path / "shape.safetensors", tmp_path / "run", tmp_path / "cache", config)
    result = train_adapter(TrainingModels(None, None, None), run)
    assert len(result.history) == 2 and all(math.isfinite(r["loss"]) for r in result.history)
    vae = load_body_vae(result.body_vae_path).vae
    assert vae.config.image_size == 32 and vae.config.latent_dim == 10


def test_a_mixed_dataset_without_a_pose_model_names_the_images(comfy_nodes, tmp_path: Path) -> None:
    from bolid_core.comfy.train_host import TrainingModels, TrainingRun, train_adapter

    dataset = with_keypoints(write_dataset(tmp_path / "data"), skip=("bob/1.png",))
    config = body_config(TrainTarget.BODY_VAE, 1)
    run = TrainingRun(dataset, tmp_path / "shape.safetensors", tmp_path / "run", tmp_path / "cache", config)
    with pytest.raises(ValueError, match=r"'body_vae'.*connect pose_model.*1 image\(s\) without one \(bob/1.png\)"):
        train_adapter(TrainingModels(None, None, None), run)
    assert not (tmp_path / "cache").exists(), "refused before any work"


def test_base_unet_is_refused_by_the_node_host(comfy_nodes, tmp_path: Path) -> None:
    from bolid_core.comfy.train_host import TrainingModels, TrainingRun, train_adapter

    config = body_config(TrainTarget.BASE_UNET, 1)
    run = TrainingRun(tmp_path, tmp_path / "x.safetensors", tmp_path / "run", tmp_path / "cache", config)
    with pytest.raises(ValueError, match=r"'base_unet'.*command line only"):
        train_adapter(TrainingModels(None, None, None), run)
