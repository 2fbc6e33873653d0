"""COCO-17 pose keypoints from Ultralytics YOLO pose models (.pt or .onnx), offline, batched over views; the checks
every YOLO model file passes before ultralytics reads it (segmentation.py uses them too).

ultralytics is imported only when a model is loaded. YOLO_OFFLINE stops its settings sync and downloads, and
YOLO_AUTOINSTALL its pip installs; the pack draws its own previews, so ultralytics' plotting (which fetches a font)
never runs.

A model file is untrusted input: a shared workflow names it, and /prompt is reachable from the network.
- `.pt` files are pickles, which can run code when loaded. Their bytes are read once and unpickled with
  torch.load(weights_only=True) against an allow-list of the classes a YOLO pose checkpoint holds. Module classes
  may only be re-created empty and filled with their saved state, as pickle does for every module; a file that calls
  one with arguments is refused, since some constructors read (and download) model configs. Only bytes that pass go
  to ultralytics, from a private copy, so it never unpickles anything unchecked.
- `.onnx` files carry no code, but ultralytics before 8.4 runs eval() on some of their metadata: those values must
  be plain literals. Tensors stored in outside files are refused.
"""

from __future__ import annotations

import ast
import contextlib
import io
import math
import os
import pickle
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..images import to_uint8_bgr
from .keypoints import NUM_KEYPOINTS, PoseKeypoints

VIEW_CHUNK = 8  # views per predict call: bounds memory for any number of views
POSE_MODEL_SUFFIXES = (".pt", ".onnx")

# What YOLOv8-, YOLO11- and YOLO26-pose checkpoints hold, read off checkpoints that ultralytics saved. Detect models
# are listed only so that picking one gets "this is a detect model" rather than a refusal.
POSE_CHECKPOINT_MODULES = (
    "torch.nn.modules.activation.SiLU", "torch.nn.modules.activation.Tanh", "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.container.ModuleList", "torch.nn.modules.container.Sequential", "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.linear.Identity", "torch.nn.modules.linear.Linear", "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
    "ultralytics.nn.modules.block.Attention", "ultralytics.nn.modules.block.Bottleneck",
    "ultralytics.nn.modules.block.C2f", "ultralytics.nn.modules.block.C2PSA", "ultralytics.nn.modules.block.C3k",
    "ultralytics.nn.modules.block.C3k2", "ultralytics.nn.modules.block.DFL", "ultralytics.nn.modules.block.PSABlock",
    "ultralytics.nn.modules.block.RealNVP", "ultralytics.nn.modules.block.SPPF", "ultralytics.nn.modules.conv.Concat",
    "ultralytics.nn.modules.conv.Conv", "ultralytics.nn.modules.conv.DWConv", "ultralytics.nn.modules.head.Detect",
    "ultralytics.nn.modules.head.Pose", "ultralytics.nn.modules.head.Pose26",
    "ultralytics.nn.tasks.DetectionModel", "ultralytics.nn.tasks.PoseModel",
)  # fmt: skip
# Plain data that trained checkpoints carry beside the model: training arguments and numpy metric values.
POSE_CHECKPOINT_DATA = (
    "ultralytics.utils.IterableSimpleNamespace", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.dtype",
)  # fmt: skip
# What YOLOv8-, YOLO11- and YOLO26-seg checkpoints hold besides POSE_CHECKPOINT_MODULES, read off checkpoints that
# ultralytics saved. Only the segmentation loader allows them; the pose loader only names them in its refusal.
SEGMENTATION_CHECKPOINT_MODULES = (
    "torch.nn.modules.conv.ConvTranspose2d", "ultralytics.nn.modules.block.Proto",
    "ultralytics.nn.modules.block.Proto26", "ultralytics.nn.modules.head.Segment",
    "ultralytics.nn.modules.head.Segment26", "ultralytics.nn.tasks.SegmentationModel",
)  # fmt: skip
# ultralytics' model class for each task: what a checkpoint's model is, and what its pickle names.
YOLO_TASK_MODELS = {"DetectionModel": "detect", "PoseModel": "pose", "SegmentationModel": "segment"}
# The ONNX metadata that ultralytics before 8.4 passes to eval().
ONNX_EVALUATED_METADATA = ("imgsz", "names", "kpt_shape", "args")

_REGISTRY_LOCK = threading.Lock()


class PoseModelError(RuntimeError):
    """A pose model file that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class YoloFileRules:
    """What one kind of YOLO model file may hold, and the words its refusals use."""

    kind: str  # "pose", "segmentation"
    task: str  # ultralytics' task name: "pose", "segment"
    example: str  # a file to suggest: "yolo11n-pose.pt"
    needs: str  # "the body ID needs a -pose model (yolo11n-pose.pt)"
    modules: tuple[str, ...]  # the allow-list of module classes
    onnx_metadata: tuple[str, ...]  # metadata keys an ultralytics export of this kind always has
    error: type[RuntimeError]


POSE_FILE_RULES = YoloFileRules(
    "pose", "pose", "yolo11n-pose.pt", "the body ID needs a -pose model (yolo11n-pose.pt)", POSE_CHECKPOINT_MODULES,
    ("task", "kpt_shape"), PoseModelError,
)  # fmt: skip


@dataclass(frozen=True)
class ViewPoses:
    """One person per view: keypoints (zeroed where the view has no person), a confidence per view, notes."""

    keypoints: PoseKeypoints  # (views, 17, 3), x/y as fractions of the view
    confidence: torch.Tensor  # (views,) mean confidence of the visible keypoints; 0 for a view with no person
    empty_views: list[int]
    notes: list[str]


@dataclass(frozen=True)
class PoseModel:
    """An ultralytics YOLO pose model; an ONNX export with fixed shapes runs at its own size and batch."""

    yolo: Any
    fixed_image_size: tuple[int, int] | None = None  # (height, width)
    fixed_batch: int | None = None

    @property
    def task(self) -> str:
        return self.yolo.task

    def predict(self, images: list, conf: float, imgsz: int, verbose: bool = False) -> list:
        size = self.fixed_image_size or imgsz
        step = self.fixed_batch or max(1, len(images))
        results = []
        for start in range(0, len(images), step):
            results += self.yolo.predict(images[start : start + step], conf=conf, imgsz=size, verbose=verbose)
        return results


def _refusal(name: str, reason: str, rules: YoloFileRules) -> str:
    return (
        f"{name} was refused: {reason}. {rules.kind.capitalize()} models are checked before use because .pt files "
        f"are pickles, which can run code. Use a {rules.kind} model from a source you trust: export it to ONNX "
        f"(`yolo export model={name} format=onnx`, on a machine where you trust it) and put the .onnx file in "
        "models/ultralytics, or save it again with a current ultralytics."
    )


def load_pose_model(path: str | os.PathLike) -> PoseModel:
    """A YOLO pose model from a local .pt or .onnx file, checked as the module docstring says; never downloads."""
    offline_ultralytics()
    path = Path(path)
    if path.suffix.lower() not in POSE_MODEL_SUFFIXES:
        raise PoseModelError(f"{path.name} is not a pose model file: use a YOLO11-pose .pt or .onnx file.")
    if not path.is_file():
        raise FileNotFoundError(
            f"Pose model {path} not found: put a YOLO11-pose .pt or .onnx file (e.g. yolo11n-pose.pt) there."
        )
    data = path.read_bytes()  # read once: the bytes checked are the bytes ultralytics loads
    if path.suffix.lower() == ".onnx":
        return _load_onnx(data, path.name)
    return _load_checkpoint(data, path.name)


def offline_ultralytics() -> None:
    """No settings sync, downloads or pip installs from ultralytics in this process (unless the user set these)."""
    os.environ.setdefault("YOLO_OFFLINE", "true")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")


# --- .pt -----------------------------------------------------------------------------------------------------------


class _CreateOnly(type):
    """Stands in for an allowed module class while unpickling: creating an empty instance (pickle's NEWOBJ) is
    allowed, calling the class (pickle's REDUCE, which runs its constructor with the file's arguments) is not."""

    def __call__(cls, *args, **kwargs):
        raise pickle.UnpicklingError(f"it calls {cls.qualified_name}(...), which no saved model does")


def _create_only(real: type, qualified_name: str) -> type:
    def create(_stand_in, *args):
        if args:
            raise pickle.UnpicklingError(f"it creates {qualified_name} with arguments, which no saved model does")
        return real.__new__(real)

    return _CreateOnly(real.__name__, (), {"__new__": staticmethod(create), "qualified_name": qualified_name})


def _resolve(qualified_name: str) -> Any | None:
    import importlib

    module, _, attribute = qualified_name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute, None)
    except ImportError:
        return None  # a class this ultralytics or numpy does not have: a file that needs it is refused


def _checkpoint_allow_list(modules: tuple[str, ...]) -> list:
    import numpy as np

    entries: list = []
    for name in modules:
        real = _resolve(name)
        if real is not None:
            entries.append((_create_only(real, name), name))
            # pickle fills the new instance from its saved state (BUILD), which torch allows only for listed types.
            # A name with a newline cannot appear in a pickle, so the real class stays out of the file's reach.
            entries.append((real, f"\nfill only\n{name}"))
    for name in POSE_CHECKPOINT_DATA:
        value = _resolve(name)
        if value is not None:
            entries.append((value, name))
    for dtype in (np.float64, np.float32, np.int64, np.int32, np.bool_):
        entries.append((type(np.dtype(dtype)), f"\nfill only\n{type(np.dtype(dtype)).__name__}"))
    return entries


@contextlib.contextmanager
def _only_these_safe_globals(entries: list) -> Iterator[None]:
    """torch's allow-list is one set for the whole process: other packs may have put whole classes in it, which
    would let a file call them. Swap it for ours for the length of the load, then restore it."""
    with _REGISTRY_LOCK:
        saved = torch.serialization.get_safe_globals()
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(entries)
        try:
            yield
        finally:
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(saved)


def checked_checkpoint_model(data: bytes, name: str, rules: YoloFileRules) -> torch.nn.Module:
    """The model a .pt file holds, unpickled against the allow-list of `rules`; refuses anything else."""
    if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        raise rules.error(
            f"{name}: checking a .pt {rules.kind} model safely needs torch 2.6 or newer. Update torch, or use the "
            f"model exported to ONNX (`yolo export model={name} format=onnx`), which carries no code."
        )
    try:
        with _only_these_safe_globals(_checkpoint_allow_list(rules.modules)):
            checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _globals_in_checkpoint(data)
        other_task = _other_yolo_task(found, rules)
        if other_task is not None:  # refused all the same, before anything is unpickled: only the words differ
            raise rules.error(f"{name} is a YOLO {other_task} model; {rules.needs}.") from None
        raise rules.error(_refusal(name, _unpickling_problem(found, error, rules), rules)) from None
    except (RuntimeError, EOFError, ValueError) as error:
        raise rules.error(
            f"{name} is not a readable PyTorch checkpoint ({str(error).splitlines()[0][:200]}): pick a YOLO "
            f"{rules.kind} .pt or .onnx file."
        ) from None
    model = (checkpoint.get("ema") or checkpoint.get("model")) if isinstance(checkpoint, dict) else None
    if not isinstance(model, torch.nn.Module):
        raise rules.error(f"{name} holds no ultralytics model: pick a YOLO {rules.kind} .pt file saved by ultralytics.")
    task = YOLO_TASK_MODELS.get(type(model).__name__, type(model).__name__)
    if task != rules.task:
        raise rules.error(f"{name} is a YOLO {task} model; {rules.needs}.")
    return model


def _globals_in_checkpoint(data: bytes) -> list[str]:
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except (ValueError, RuntimeError, pickle.UnpicklingError):  # the scan only improves the message
        return []


def _other_yolo_task(found: list[str], rules: YoloFileRules) -> str | None:
    """The task of a file whose names are all those of a YOLO pose, detect or segmentation checkpoint, with the
    model class of a task other than `rules.task`; None for anything else."""
    known = set(POSE_CHECKPOINT_MODULES) | set(SEGMENTATION_CHECKPOINT_MODULES) | set(POSE_CHECKPOINT_DATA)
    if not found or not set(found) <= known:
        return None
    tasks = {YOLO_TASK_MODELS[n.rpartition(".")[2]] for n in found if n.startswith("ultralytics.nn.tasks.")}
    tasks.discard(rules.task)
    return tasks.pop() if len(tasks) == 1 else None


def _unpickling_problem(found: list[str], error: pickle.UnpicklingError, rules: YoloFileRules) -> str:
    """Which names outside the allow-list the file refers to, or else what torch's unpickler refused."""
    allowed = set(rules.modules) | set(POSE_CHECKPOINT_DATA)
    outside = sorted(set(found) - allowed)
    if outside:
        shown = ", ".join(outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
        return f"it refers to {shown}, which a YOLO {rules.kind} checkpoint never holds"
    text = str(error)
    marker = "WeightsUnpickler error: "
    detail = text[text.index(marker) + len(marker) :] if marker in text else text
    return next((line.strip() for line in detail.splitlines() if line.strip()), "torch could not read it")[:300]


def _load_checkpoint(data: bytes, name: str) -> PoseModel:
    checked_checkpoint_model(data, name, POSE_FILE_RULES)
    return _checked_task(PoseModel(yolo_from_checked_checkpoint(data, name, "pose")), name)


def yolo_from_checked_checkpoint(data: bytes, name: str, task: str):
    """ultralytics' YOLO on bytes that passed checked_checkpoint_model, read from a private copy."""
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory(prefix="bolid-yolo-") as private:
        copy = Path(private) / name
        copy.write_bytes(data)
        return YOLO(str(copy), task=task)


def _checked_task(model: PoseModel, name: str) -> PoseModel:
    if model.task != "pose":
        raise PoseModelError(f"{name} is a YOLO {model.task} model; {POSE_FILE_RULES.needs}.")
    return model


# --- .onnx ---------------------------------------------------------------------------------------------------------


def _graph_tensors(graph) -> Iterator:
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


@dataclass(frozen=True)
class CheckedOnnx:
    """An ONNX export that passed checked_onnx: its metadata, the evaluated fields as plain values, fixed shapes."""

    metadata: dict[str, str]
    literals: dict[str, Any]
    fixed_image_size: tuple[int, int] | None  # (height, width)
    fixed_batch: int | None


def checked_onnx(data: bytes, name: str, rules: YoloFileRules) -> CheckedOnnx:
    """Weights inside the file, ultralytics' metadata present, and its evaluated fields plain literals."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        raise rules.error(_onnx_packages_missing(name, rules)) from None
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError) as error:
        raise rules.error(f"{name} is not a readable ONNX file ({error}): export it again.") from None
    if any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in _graph_tensors(proto.graph)):
        raise rules.error(
            _refusal(name, "it reads tensors from other files; export it again as one file (weights inside)", rules)
        )
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    if any(key not in metadata for key in rules.onnx_metadata):
        raise rules.error(
            f"{name} has no Ultralytics metadata ({', '.join(rules.onnx_metadata)}): export the {rules.kind} model "
            f"with ultralytics (`yolo export model={rules.example} format=onnx`)."
        )
    literals = {}
    for key in ONNX_EVALUATED_METADATA:
        if key in metadata:
            try:
                literals[key] = ast.literal_eval(metadata[key])
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise rules.error(_refusal(name, f"its metadata field '{key}' is not a plain value", rules)) from None
    if metadata["task"] != rules.task:
        raise rules.error(f"{name} is a YOLO {metadata['task']} model; {rules.needs}.")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in proto.graph.input[0].type.tensor_type.shape.dim]
    fixed_size = (dims[2], dims[3]) if len(dims) == 4 and dims[2] and dims[3] else None
    fixed_batch = dims[0] if dims and dims[0] else None
    return CheckedOnnx(metadata, literals, fixed_size, fixed_batch)


def _onnx_packages_missing(name: str, rules: YoloFileRules) -> str:
    return (
        f"{name}: ONNX {rules.kind} models need the onnx and onnxruntime packages. Install them "
        f"(pip install onnx onnxruntime, or onnxruntime-gpu), or use a .pt {rules.kind} model."
    )


def yolo_from_checked_onnx(data: bytes, name: str, rules: YoloFileRules):
    """ultralytics' YOLO on an export that passed checked_onnx, from a private copy that lives as long as it."""
    try:
        import onnxruntime
    except ImportError:
        raise rules.error(_onnx_packages_missing(name, rules)) from None
    from ultralytics import YOLO

    private = tempfile.mkdtemp(prefix="bolid-yolo-")
    copy = Path(private) / name
    copy.write_bytes(data)
    yolo = YOLO(str(copy), task=rules.task)  # ultralytics opens the ONNX session on first predict: keep the copy
    weakref.finalize(yolo, shutil.rmtree, private, True)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        yolo.overrides["device"] = "cpu"  # else ultralytics, seeing a GPU, would try to pip-install onnxruntime-gpu
    return yolo


def _load_onnx(data: bytes, name: str) -> PoseModel:
    checked = checked_onnx(data, name, POSE_FILE_RULES)
    if list(checked.literals.get("kpt_shape", ())) != [NUM_KEYPOINTS, 3]:
        raise PoseModelError(
            f"{name} gives keypoints shaped {checked.metadata['kpt_shape']}; the body ID needs COCO's 17 "
            "(x, y, visibility)."
        )
    yolo = yolo_from_checked_onnx(data, name, POSE_FILE_RULES)
    return _checked_task(PoseModel(yolo, checked.fixed_image_size, checked.fixed_batch), name)


def _pick_person(result, view: int) -> tuple[torch.Tensor, float, str | None]:
    """The largest, most confident person: score = box area x box confidence."""
    boxes = result.boxes
    if boxes is None or len(boxes) == 0 or result.keypoints is None:
        return torch.zeros(NUM_KEYPOINTS, 3), 0.0, None
    xywhn = boxes.xywhn.float().cpu()
    scores = xywhn[:, 2] * xywhn[:, 3] * boxes.conf.float().cpu()
    best = int(scores.argmax())
    xyn = result.keypoints.xyn[best].float().cpu()
    conf = result.keypoints.conf
    kp_conf = conf[best].float().cpu() if conf is not None else torch.ones(NUM_KEYPOINTS)
    note = None
    if len(boxes) > 1:
        note = f"view {view}: {len(boxes)} people found; used the largest, most confident one (person {best})."
    return torch.cat([xyn, kp_conf[:, None]], dim=1), float(boxes.conf[best]), note


def detect_poses(
    model: PoseModel,
    views: torch.Tensor,
    *,
    detection_confidence: float = 0.25,
    keypoint_confidence: float = 0.5,
    image_size: int = 640,
    progress: Callable[[int, int], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> ViewPoses:
    """Keypoints of one person per view of `views` (N, H, W, C) in [0, 1]; invisible points are zeroed."""
    if views.ndim != 4 or views.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"Views must be an IMAGE shaped (N, H, W, 3), (N, H, W, 1) or (N, H, W, 4); got {tuple(views.shape)}."
        )
    if not (math.isfinite(detection_confidence) and 0.0 < detection_confidence <= 1.0):
        raise ValueError(f"detection_confidence must be a finite number in (0, 1]; got {detection_confidence}.")
    if not (math.isfinite(keypoint_confidence) and 0.0 <= keypoint_confidence <= 1.0):
        raise ValueError(f"keypoint_confidence must be a finite number in [0, 1]; got {keypoint_confidence}.")
    if min(views.shape[1:3]) < 32:
        raise ValueError(
            f"Views of {views.shape[2]}x{views.shape[1]} px are too small for pose detection: use at least 32 px."
        )
    points, confidences, notes, empty = [], [], [], []
    for start in range(0, views.shape[0], VIEW_CHUNK):
        if check_interrupt is not None:
            check_interrupt()
        chunk = list(to_uint8_bgr(views[start : start + VIEW_CHUNK]))
        results = model.predict(chunk, conf=detection_confidence, imgsz=image_size, verbose=False)
        for offset, result in enumerate(results):
            index = start + offset
            keypoints, _, note = _pick_person(result, index)
            visible = keypoints[:, 2] >= keypoint_confidence
            keypoints = torch.where(visible[:, None], keypoints, torch.zeros(()))
            points.append(keypoints)
            confidences.append(float(keypoints[visible, 2].mean()) if visible.any() else 0.0)
            if not visible.any():
                empty.append(index)
                notes.append(f"view {index}: no person found; skipped.")
            elif note:
                notes.append(note)
        if progress is not None:
            progress(min(start + VIEW_CHUNK, views.shape[0]), views.shape[0])
    return ViewPoses(PoseKeypoints(torch.stack(points)), torch.tensor(confidences), empty, notes)
