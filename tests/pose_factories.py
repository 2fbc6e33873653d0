"""A random YOLO11n-pose model whose outputs depend on the image, for the training tests."""

from __future__ import annotations

from pathlib import Path

import torch


def build_varied_pose_model(path: Path) -> Path:
    """A random YOLO11n-pose whose outputs depend on the image: batch-norm statistics set from random images (a
    fresh model's unit variances shrink every activation to ~0, so every anchor scores alike), person logits scaled
    down so scores are distinct, keypoint offsets scaled down so keypoints stay inside the image (not clipped)."""
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO("yolo11n-pose.yaml")
    network = yolo.model
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one forward sets the statistics
    network.train()
    with torch.no_grad():
        network(torch.rand(8, 3, 256, 256, generator=torch.Generator().manual_seed(0)))
    network.eval()
    head = network.model[-1]
    for branch in head.cv3:
        branch[-1].weight.data.mul_(0.05)
        branch[-1].bias.data.fill_(-3.0)
    for branch in head.cv4:
        branch[-1].weight.data.mul_(0.05)
    yolo.save(str(path))
    return path
