"""Face embeddings with insightface: one face of each image (the largest, or the i-th from the left) → ArcFace
embedding and aligned crop.

Model packs live in `<models_root>/models/<name>/` (ComfyUI: models/insightface/models/buffalo_l). Nothing is
ever downloaded: a missing pack is an error that says where to put it. insightface, onnxruntime and OpenCV are
imported only when a pack is loaded, so this module imports without them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..choices import enum_member
from ..file_names import check_name, shown
from ..images import to_uint8_bgr
from .embeds import FaceEmbeds

# Largest first: a face too large for the detector at 640 is often found once the image is scaled down.
DET_SIZES = (640, 576, 512, 448, 384, 320)
DEFAULT_CROP_SIZE = 256
DET_THRESHOLD = 0.5
MODULES = ("detection", "recognition")


class ExecutionProvider(enum.Enum):
    """ONNX Runtime execution providers, by the names ONNX Runtime gives them."""

    CPU = "CPUExecutionProvider"
    CUDA = "CUDAExecutionProvider"
    ROCM = "ROCMExecutionProvider"
    DirectML = "DmlExecutionProvider"
    OpenVINO = "OpenVINOExecutionProvider"
    CoreML = "CoreMLExecutionProvider"


class FaceChoice(enum.Enum):
    """Which face of an image to embed when it shows several."""

    LARGEST = "largest"
    BY_INDEX = "index_left_to_right"


@dataclass(frozen=True)
class ImageFaces:
    """The faces found in one image, ordered left to right (box centre x, ties by y), and the one chosen."""

    boxes: np.ndarray  # (F, 4) x0, y0, x1, y1 in image pixels
    chosen: int  # position of the embedded face in `boxes`


class FaceModelError(RuntimeError):
    """A face model pack or execution provider that cannot be used; the message says what to do."""


class NoFaceError(ValueError):
    """An input image in which no face was found."""


class FaceAnalyzer:
    """A loaded insightface pack (detector + ArcFace recogniser) that embeds one chosen face of each image."""

    def __init__(self, analysis: Any, pack_dir: Path, det_sizes: Sequence[int] = DET_SIZES) -> None:
        self.analysis = analysis
        self.pack_dir = pack_dir
        fixed = _fixed_detector_size(analysis.det_model)
        # A detector with a fixed input size runs at that size only.
        self.detection_sizes: tuple[tuple[int, int], ...] = (fixed,) if fixed else tuple((s, s) for s in det_sizes)

    def detect_faces(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (F, 5: x0, y0, x1, y1, score) and landmarks (F, 5, 2) in the detector's order, at the first
        detection size that finds any face; empty arrays when none does."""
        for size in self.detection_sizes:
            boxes, landmarks = self.analysis.det_model.detect(image_bgr, input_size=size, max_num=0)
            if len(boxes):
                return boxes, landmarks
        return np.zeros((0, 5), dtype=np.float32), np.zeros((0, 5, 2), dtype=np.float32)

    def _pick_face(self, image_bgr: np.ndarray, image_index: int, choice: FaceChoice, face_index: int):
        boxes, landmarks = self.detect_faces(image_bgr)
        if not len(boxes):
            raise NoFaceError(self._no_face_message(image_index))
        order = left_to_right(boxes)
        if choice is FaceChoice.LARGEST:
            picked = _largest(boxes)
        elif face_index < len(boxes):
            picked = int(order[face_index])
        else:
            count = f"{len(boxes)} face" + ("s" if len(boxes) != 1 else "")
            raise ValueError(
                f"Face index {face_index} is past the faces found: image {image_index} has {count} "
                f"(indices 0 to {len(boxes) - 1}, left to right). Lower the face index, or choose the largest face."
            )
        found = ImageFaces(boxes=boxes[order, :4].copy(), chosen=int(np.flatnonzero(order == picked)[0]))
        return _as_face(boxes, landmarks, picked), found

    def embed(self, images: torch.Tensor, crop_size: int = DEFAULT_CROP_SIZE, **options) -> FaceEmbeds:
        """The embeddings of `embed_and_locate`, without the detected boxes."""
        return self.embed_and_locate(images, crop_size, **options)[0]

    def embed_and_locate(
        self,
        images: torch.Tensor,
        crop_size: int = DEFAULT_CROP_SIZE,
        progress: Callable[[int, int], None] | None = None,
        check_interrupt: Callable[[], None] | None = None,
        choice: FaceChoice = FaceChoice.LARGEST,
        face_index: int = 0,
    ) -> tuple[FaceEmbeds, list[ImageFaces]]:
        """images: (N, H, W, C) floats in [0, 1], C = 3 (RGB), 1 (grey) or 4 (RGBA, alpha dropped).

        Returns the L2-normalised ArcFace embedding (N, 512) of each image's chosen face (the largest, or with
        BY_INDEX the `face_index`-th from the left), its norm before normalisation (N,) and its aligned crop
        (N, crop_size, crop_size, 3) in [0, 1], and each image's detected faces with the one embedded (for
        previews). `check_interrupt()` runs before and `progress(i, N)` after image i.
        """
        from insightface.utils import face_align

        _check_crop_size(crop_size)
        choice = enum_member(FaceChoice, choice, "face choice")
        if isinstance(face_index, bool) or not isinstance(face_index, (int, np.integer)) or face_index < 0:
            raise ValueError(f"Face index must be a whole number from 0 (the leftmost face); got {face_index!r}.")
        batch = to_uint8_bgr(images)
        recognizer = self.analysis.models["recognition"]
        embeddings, crops, located = [], [], []
        for index, image in enumerate(batch):
            if check_interrupt is not None:
                check_interrupt()
            face, found = self._pick_face(image, index, choice, int(face_index))
            embeddings.append(np.asarray(recognizer.get(image, face), dtype=np.float32).reshape(-1))
            crops.append(face_align.norm_crop(image, landmark=face.kps, image_size=crop_size)[..., ::-1].copy())
            located.append(found)
            if progress is not None:
                progress(index + 1, len(batch))
        raw = torch.from_numpy(np.stack(embeddings))
        embeds = FaceEmbeds(
            arcface=F.normalize(raw, dim=-1),
            crops=torch.from_numpy(np.stack(crops)).float() / 255.0,
            norms=torch.linalg.vector_norm(raw, dim=-1),  # a face-quality cue, for norm-weighted averaging
        )
        return embeds, located

    def _no_face_message(self, index: int) -> str:
        tried = ", ".join(f"{w}x{h}" for w, h in self.detection_sizes)
        return (
            f"No face detected in image {index} (detection sizes tried: {tried}). "
            "Use a clearer, larger, frontal face, or crop the image closer to the face."
        )


def load_face_analysis(
    models_root: str | Path, name: str, provider: ExecutionProvider | str = ExecutionProvider.CPU
) -> FaceAnalyzer:
    """Loads the detector and recogniser of `<models_root>/models/<name>` on `provider`; never downloads."""
    root = Path(models_root).expanduser().absolute()
    pack_dir = find_model_pack(root, name)
    providers = onnx_providers(provider)
    try:
        analysis = _open_face_analysis(pack_dir, root, providers)
    except AssertionError as error:  # insightface asserts that the pack has a detector
        raise FaceModelError(
            f"No face detector found in {pack_dir}: it needs the pack's SCRFD detector (e.g. det_10g.onnx in "
            "buffalo_l). Put the complete pack folder there."
        ) from error
    if "recognition" not in analysis.models:
        raise FaceModelError(
            f"No ArcFace recogniser found in {pack_dir}: it needs the pack's recognition model "
            "(e.g. w600k_r50.onnx in buffalo_l). Put the complete pack folder there."
        )
    if not getattr(analysis.det_model, "use_kps", False):
        raise FaceModelError(
            f"The face detector in {pack_dir} gives no facial landmarks, which alignment needs. "
            "Use a pack whose SCRFD detector has keypoints, such as buffalo_l or antelopev2."
        )
    analysis.prepare(ctx_id=0, det_thresh=DET_THRESHOLD, det_size=(DET_SIZES[0], DET_SIZES[0]))
    return FaceAnalyzer(analysis, pack_dir)


def find_model_pack(models_root: str | Path, name: str) -> Path:
    """The folder of pack `name` holding its .onnx files; also accepts the name/name nesting of some zips."""
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"Face model pack name must be a plain folder name; got {shown(name)}.")
    check_name(name, "face model pack")
    base = Path(models_root) / "models"
    folder = base / name
    if not folder.is_dir():
        raise FaceModelError(
            f"Face model pack {name!r} not found: put the {name} folder with its .onnx files in {base} "
            f"(expected {folder}). Nothing is downloaded automatically."
        )
    if not _onnx_files(folder) and _onnx_files(folder / name):
        folder = folder / name
    if not _onnx_files(folder):
        raise FaceModelError(
            f"Face model pack folder {folder} has no .onnx files: put the {name} model files "
            "(its detector and recogniser .onnx) directly in it."
        )
    return folder


def onnx_providers(provider: ExecutionProvider | str) -> list[str]:
    """ONNX Runtime provider list for `provider` (with CPU fallback); a clear error if it is not installed."""
    import onnxruntime

    provider = enum_member(ExecutionProvider, provider, "execution provider", list_names=True)
    available = onnxruntime.get_available_providers()
    if provider.value not in available:
        raise FaceModelError(
            f"The {provider.name} execution provider ({provider.value}) is not available in this ONNX Runtime. "
            f"Available: {', '.join(available)}. Pick one of those, or install the ONNX Runtime build for "
            "your hardware (e.g. onnxruntime-gpu for CUDA)."
        )
    return [provider.value] if provider is ExecutionProvider.CPU else [provider.value, ExecutionProvider.CPU.value]


def left_to_right(boxes: np.ndarray) -> np.ndarray:
    """Indices that order boxes (F, ≥4) by their centre x, ties by centre y."""
    centre_x, centre_y = boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
    return np.lexsort((centre_y, centre_x))


def _largest(boxes: np.ndarray) -> int:
    # The first of equal areas in the detector's order, as the pack has always picked.
    return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))


def _as_face(boxes: np.ndarray, landmarks: np.ndarray, k: int) -> Any:
    from insightface.app.common import Face

    return Face(bbox=boxes[k, :4], kps=landmarks[k], det_score=boxes[k, 4])


def _check_crop_size(crop_size: int) -> None:
    # insightface's alignment template is defined for multiples of 112 or 128.
    if crop_size <= 0 or (crop_size % 112 and crop_size % 128):
        raise ValueError(f"Face crop size must be a positive multiple of 112 or 128 (e.g. 224, 256); got {crop_size}.")


def _onnx_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx")) if folder.is_dir() else []


# --- where insightface 0.7.x and 2.x differ ----------------------------------------------------------------------


def _open_face_analysis(pack_dir: Path, models_root: Path, providers: list[str]) -> Any:
    import insightface
    from insightface.app import FaceAnalysis

    options = {"allowed_modules": list(MODULES), "providers": providers}
    if int(insightface.__version__.split(".")[0]) >= 1:
        # 2.x loads an existing directory as it is; only a bare pack name is looked up and downloaded.
        return FaceAnalysis(name=str(pack_dir), **options)
    # 0.7.x always reads <root>/models/<name> and downloads only when that folder is missing.
    relative = pack_dir.relative_to(models_root / "models").as_posix()
    return FaceAnalysis(name=relative, root=str(models_root), **options)


def _fixed_detector_size(det_model: Any) -> tuple[int, int] | None:
    """(width, height) when the detector's ONNX input has a fixed size, else None."""
    if hasattr(det_model, "static_input_size"):
        # 2.x reads the ONNX graph: a session with a fixed size (CoreML) may still run a dynamic graph at any size.
        size = det_model.static_input_size
        return (int(size[0]), int(size[1])) if size else None
    height, width = det_model.input_shape[2:4]
    return (width, height) if isinstance(height, int) and isinstance(width, int) else None
