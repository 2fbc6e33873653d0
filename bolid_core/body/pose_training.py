"""L_id's pose scorer (BoLID eq. 14): the people a YOLO pose network finds in a batch of images, with keypoints that
are differentiable in the images.

ultralytics' `predict` takes uint8 numpy images and runs under inference mode, so nothing it returns carries a
gradient. Here the network's torch module runs directly on the float images, and its raw output is decoded as
ultralytics' pose predictor decodes it: the same letterbox (scale to fit `imgsz`, pad to the stride with grey 114),
the same candidate threshold (score > conf), the same class-aware NMS (IoU 0.7, at most 300 people), the same mapping
back to the image (padding removed, gain divided out, clipped). Which people are kept is decided without gradients;
the kept people's keypoints keep theirs. With the same image (quantised to 8 bits, as predict reads it) the keypoints
agree with `PoseModel.predict` up to float rounding and the fused or unfused batch norm.
"""

from __future__ import annotations

import copy
import math
import threading
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from .keypoints import NUM_KEYPOINTS
from .pose import PoseModel, PoseModelError

DEFAULT_DETECTION_CONFIDENCE = 0.25
DEFAULT_IMAGE_SIZE = 640  # detect_poses' default, which the cached reference keypoints were found at
NMS_IOU = 0.7  # ultralytics' predict default
MAX_PEOPLE = 300  # ultralytics' max_det
MAX_CANDIDATES = 30000  # ultralytics' max_nms: candidates ranked by score before NMS
LETTERBOX_FILL = 114 / 255  # ultralytics' letterbox grey

_networks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_networks_lock = threading.Lock()


def _network(pose_model: PoseModel) -> torch.nn.Module:
    """A private frozen copy of the pose network (eval mode, no parameter gradients, float32), made once per model,
    so that freezing it and moving it to the images' device leave the caller's model as it was."""
    yolo = pose_model.yolo
    module = getattr(yolo, "model", None)
    if not isinstance(module, torch.nn.Module):
        name = Path(str(module or getattr(yolo, "ckpt_path", "") or "the pose model")).name
        raise PoseModelError(
            f"{name} is not a PyTorch pose model (an ONNX export?): it cannot give L_id gradients: use the .pt model "
            "for L_id (e.g. yolo11n-pose.pt). The ONNX export can still find the reference keypoints."
        )
    with _networks_lock:
        network = _networks.get(yolo)
        if network is None:
            network = copy.deepcopy(module).float()
            network.eval().requires_grad_(False)
            _networks[yolo] = network
    return network


def _head(network: torch.nn.Module) -> torch.nn.Module:
    layers = getattr(network, "model", None)
    head = layers[-1] if isinstance(layers, torch.nn.Sequential) and len(layers) else None
    if head is None or tuple(getattr(head, "kpt_shape", ())) != (NUM_KEYPOINTS, 3):
        raise PoseModelError(
            "The pose model's network has no COCO-17 pose head (17 keypoints of x, y, visibility): use a YOLO -pose "
            "model such as yolo11n-pose.pt."
        )
    return head


def _letterbox(images: torch.Tensor, size: int, stride: int) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """ultralytics' LetterBox for same-sized images with a .pt model (auto: pad only to a multiple of the stride):
    (B, 3, h, w) network input, (new_h, new_w) of the scaled image, (left, top) padding."""
    height, width = images.shape[1:3]
    ratio = min(size / height, size / width)
    new_h, new_w = max(round(height * ratio), 1), max(round(width * ratio), 1)
    x = images[..., :3].permute(0, 3, 1, 2).float()
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)  # cv2's INTER_LINEAR
    pad_w, pad_h = ((size - new_w) % stride) / 2, ((size - new_h) % stride) / 2
    top, bottom = round(pad_h - 0.1), round(pad_h + 0.1)
    left, right = round(pad_w - 0.1), round(pad_w + 0.1)
    return F.pad(x, (left, right, top, bottom), value=LETTERBOX_FILL), (new_h, new_w), (left, top)


def _candidates(
    output: torch.Tensor, end2end: bool, nk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per anchor (or per end-to-end detection): boxes x0, y0, x1, y1, score, class, keypoints (B, N, 17, 3)."""
    if end2end:  # (B, max_det, 6 + nk): x0, y0, x1, y1, score, class, keypoints
        boxes, scores, classes = output[..., :4], output[..., 4], output[..., 5]
        keypoints = output[..., 6 : 6 + nk]
    else:  # (B, 4 + nc + nk, anchors): centre x, y, width, height, class scores, keypoints
        classes_count = output.shape[1] - 4 - nk
        rows = output.transpose(1, 2)
        centre, half = rows[..., :2], rows[..., 2:4] / 2
        boxes = torch.cat([centre - half, centre + half], dim=-1)
        scores, classes = rows[..., 4 : 4 + classes_count].max(dim=-1)
        keypoints = rows[..., 4 + classes_count :]
    return boxes, scores, classes, keypoints.reshape(*keypoints.shape[:2], NUM_KEYPOINTS, 3)


def pose_people(
    pose_model: PoseModel,
    images: torch.Tensor,
    conf: float = DEFAULT_DETECTION_CONFIDENCE,
    imgsz: int | None = None,
) -> list[torch.Tensor]:
    """Per image of `images` (B, H, W, 3) in [0, 1], the (P, 17, 3) keypoints of the P people found (score > conf,
    then NMS; ordered by score), x / W and y / H as fractions of the image and the visibility, differentiable in
    `images`; (0, 17, 3) where nobody is found. `imgsz`: the network's input side (default 640, rounded up to the
    network's stride); the images are letterboxed to it as predict does. Raises PoseModelError for an ONNX model."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"pose_people needs images shaped (B, H, W, 3) with B ≥ 1; got {shape}.")
    if not (isinstance(conf, (int, float)) and math.isfinite(conf) and 0 <= conf <= 1):
        raise ValueError(f"conf must be a number in [0, 1]; got {conf!r}.")
    size = DEFAULT_IMAGE_SIZE if imgsz is None else imgsz
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"imgsz must be a whole number of at least 32 pixels; got {imgsz!r}.")
    network = _network(pose_model)
    head = _head(network)
    if next(network.parameters()).device != images.device:
        network.to(images.device)
    stride = max(int(getattr(network, "stride", torch.tensor([32])).max()), 1)
    size = math.ceil(size / stride) * stride
    height, width = images.shape[1:3]
    x, (new_h, new_w), (left, top) = _letterbox(images, size, stride)
    output = network(x)
    output = output[0] if isinstance(output, (tuple, list)) else output
    end2end = bool(getattr(head, "end2end", False))
    boxes, scores, classes, keypoints = _candidates(output, end2end, NUM_KEYPOINTS * 3)
    gain = keypoints.new_tensor([new_w / width, new_h / height])
    offset = keypoints.new_tensor([left, top])
    limit = keypoints.new_tensor([width, height])
    people = []
    for index in range(images.shape[0]):
        with torch.no_grad():
            kept = (scores[index] > conf).nonzero().flatten()
            if end2end:
                kept = kept[:MAX_PEOPLE]
            elif kept.numel():
                kept = kept[scores[index, kept].argsort(descending=True)[:MAX_CANDIDATES]]
                chosen = torchvision.ops.batched_nms(
                    boxes[index, kept].float(), scores[index, kept].float(), classes[index, kept], NMS_IOU
                )
                kept = kept[chosen[:MAX_PEOPLE]]
        found = keypoints[index, kept]
        xy = ((found[..., :2] - offset) / gain).clamp(min=torch.zeros_like(limit), max=limit) / limit
        people.append(torch.cat([xy, found[..., 2:]], dim=-1).float())
    return people
