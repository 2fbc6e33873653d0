"""Random-weight YOLO-seg checkpoints that ultralytics itself saves, for the tests and the server's test assets.

A freshly built yolo11n-seg is useless to test against: its activations shrink layer by layer, so every anchor gets
the same score, sigmoid(class bias) = 9.7e-6, and its class names are "0".."79". `person_seg_model` re-estimates
each BatchNorm's statistics from one batch of noise (so scores, boxes and masks vary with the image), raises the
person logit (so people are found at detection_confidence 1e-4, like the random pose model) and names the classes
as COCO does.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("YOLO_OFFLINE", "true")

PERSON_LOGIT_SHIFT = 4.0


def coco_names() -> dict[int, str]:
    from ultralytics.utils import YAML
    from ultralytics.utils.checks import check_yaml

    return dict(YAML.load(check_yaml("coco.yaml"))["names"])


def person_seg_model(path: Path, config: str = "yolo11n-seg.yaml", seed: int = 0) -> Path:
    """A YOLO-seg checkpoint at `path` with COCO's class names, finding people in noise (see the module docstring)."""
    from ultralytics import YOLO

    torch.manual_seed(seed)
    yolo = YOLO(config)
    network = yolo.model
    batch_norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in batch_norms:
        norm.momentum = 1.0  # the running statistics become those of the one batch below
    network.train()
    with torch.no_grad():
        network(torch.rand((4, 3, 224, 224), generator=torch.Generator().manual_seed(seed + 1)))
    network.eval()
    for norm in batch_norms:
        norm.momentum = 0.03  # ultralytics' own value
    with torch.no_grad():
        for branch in network.model[-1].cv3:
            branch[-1].bias[0] += PERSON_LOGIT_SHIFT
    network.names = coco_names()
    path.parent.mkdir(parents=True, exist_ok=True)
    yolo.save(str(path))
    return path


def plain_seg_model(path: Path, config: str = "yolo11n-seg.yaml", seed: int = 0) -> Path:
    """A YOLO-seg checkpoint exactly as ultralytics builds it from its config: classes named "0".."79"."""
    from ultralytics import YOLO

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    YOLO(config).save(str(path))
    return path
