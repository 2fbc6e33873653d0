"""Host-independent cache encoders: each wraps what a host gives (a VAE, text and CLIP encoders, the face analyser,
the pose model) into a `dataset.Encoder` that makes the tensors `adapter_task.CacheKeys` names, for one image.

Every image-based encoder reads the same square crop of the image (`resize_cover`: the centred square of side
min(H, W), resized to the encoder's resolution), so the latents, the face box, the pose keypoints and the weighted
body view describe the same pixels. Keypoints are fractions of that crop and do not depend on its resolution; the
face box is in pixels of the face encoder's crop. An image's keypoints file (fractions of the whole image) is mapped
onto the same crop (`keypoints_in_crop`).

Each encoder's fingerprint is the host's (which model) with the encoder's own parameters folded in, so changing a
resolution or a threshold re-encodes. Outputs are float32 CPU tensors without a batch axis.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..body.keypoints import NUM_KEYPOINTS, PoseKeypoints
from ..body.pipeline import WeightingParams
from ..body.pose import PoseModel, detect_poses
from ..body.vae import letterbox
from ..body.weighting import weight_views
from ..identity.face import FaceAnalyzer, FaceChoice, NoFaceError
from .adapter_task import CacheKeys
from .dataset import Encoder, EncoderInput
from .dropout import RECONSTRUCTION_FILL, faceid_reconstruction_inputs

ENCODERS_VERSION = 1  # bump when an encoder's output changes for the same model and parameters
DEFAULT_DETECTION_CONFIDENCE = 0.25  # detect_poses' default, as the Body ID node uses it
DEFAULT_KEYPOINT_CONFIDENCE = 0.5  # the Body ID node's default: keypoints below it are zeroed
DEFAULT_POSE_IMAGE_SIZE = 640  # detect_poses' default network input side
DEFAULT_ARCFACE_DIM = 512
KEYPOINT_FILES_ONLY = "keypoint-files"  # the pose encoder's host fingerprint when it has no pose model


def _fingerprint(host: str, encoder: str, **parameters: object) -> str:
    if not isinstance(host, str) or not host:
        raise ValueError(f"The {encoder} encoder needs a non-empty fingerprint of the host's model; got {host!r}.")
    return json.dumps(
        {"model": host, "encoder": encoder, "version": ENCODERS_VERSION, "parameters": parameters}, sort_keys=True
    )


def _check_size(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number of at least {minimum}; got {value!r}.")
    return value


def _check_fraction(value: object, name: str, low_open: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (0 < value <= 1 if low_open else 0 <= value <= 1):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be a number in {interval}; got {value!r}.")
    return float(value)


def _single_image(pixels: torch.Tensor) -> None:
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[0] != 1 or pixels.shape[-1] != 3:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"Expected one RGB image shaped (1, H, W, 3); got {shape}.")


def resize_cover(pixels: torch.Tensor, resolution: int) -> torch.Tensor:
    """(1, H, W, 3) → (1, R, R, 3) float32: the centred square of side min(H, W) (offsets rounded down), resized
    to R × R (bilinear, antialiased when shrinking; untouched when it is already R), i.e. scaled so the short side is
    R and centre-cropped."""
    _single_image(pixels)
    _check_size(resolution, "resolution")
    height, width = pixels.shape[1:3]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[:, top : top + side, left : left + side].float()
    if side == resolution:
        return square.contiguous()
    resized = F.interpolate(
        square.permute(0, 3, 1, 2), size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def _output(value: object, what: str, shape: tuple[int | None, ...]) -> torch.Tensor:
    """value checked to be a tensor of `shape` (None: any size), as float32 on the CPU."""
    ok = isinstance(value, torch.Tensor) and value.ndim == len(shape)
    ok = ok and all(want is None or have == want for have, want in zip(value.shape, shape, strict=True))
    if not ok:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        wanted = "(" + ", ".join("n" if size is None else str(size) for size in shape) + ")"
        raise RuntimeError(f"{what} must be a tensor shaped {wanted}; got {got}. Check the host's model.")
    return value.detach().to(device="cpu", dtype=torch.float32).contiguous()


def latents_encoder(encode: Callable[[torch.Tensor], torch.Tensor], fingerprint: str, resolution: int) -> Encoder:
    """ "latents": (C, h, w): `encode` ((1, R, R, 3) in [0, 1] → (1, C, h, w) latents, scaled as the UNet reads them)
    of the image's R × R crop."""
    _check_size(resolution, "resolution", 8)

    def function(item: EncoderInput) -> dict[str, torch.Tensor]:
        latents = encode(resize_cover(item.pixels, resolution))
        return {"latents": _output(latents, "The VAE's latents", (1, None, None, None))[0]}

    return Encoder(function, _fingerprint(fingerprint, CacheKeys.LATENTS, resolution=resolution))


def text_encoder(encode: Callable[[str], tuple[torch.Tensor, torch.Tensor]], fingerprint: str) -> Encoder:
    """ "context": (T, D), "pooled": (P,): `encode(caption)` → (context (1, T, D), pooled (1, P))."""

    def function(item: EncoderInput) -> dict[str, torch.Tensor]:
        encoded = encode(item.caption)
        if not isinstance(encoded, (tuple, list)) or len(encoded) != 2:
            raise RuntimeError("The text encoder must return (context (1, T, D), pooled (1, P)).")
        context = _output(encoded[0], "The text encoder's context", (1, None, None))[0]
        pooled = _output(encoded[1], "The text encoder's pooled embedding", (1, None))[0]
        return {"context": context, "pooled": pooled}

    return Encoder(function, _fingerprint(fingerprint, CacheKeys.TEXT), reads_caption=True)


def _arcface_dim(analyzer: FaceAnalyzer) -> int:
    shape = getattr(analyzer.analysis.models.get("recognition"), "output_shape", None)
    size = shape[-1] if shape else None
    return size if isinstance(size, int) and size > 0 else DEFAULT_ARCFACE_DIM


def face_encoder(analyzer: FaceAnalyzer, fingerprint: str, resolution: int, *, face_dim: int | None = None) -> Encoder:
    """ "arcface": (face_dim,) L2-normalised ArcFace embedding of the largest face of the R × R crop, "found": () 1.0
    or 0.0, "box": (4,) its detector box x0, y0, x1, y1 in pixels of the crop (zeros without a face).

    No face is not an error: found 0 and zeros, which is the face source's null input (its dropout value).
    `face_dim` defaults to the recogniser's output width (512 for insightface's packs)."""
    _check_size(resolution, "resolution", 32)
    width = _arcface_dim(analyzer) if face_dim is None else _check_size(face_dim, "face_dim")

    def function(item: EncoderInput) -> dict[str, torch.Tensor]:
        crop = resize_cover(item.pixels, resolution)
        try:
            embeds, located = analyzer.embed_and_locate(crop, choice=FaceChoice.LARGEST)
        except NoFaceError:
            return {"arcface": torch.zeros(width), "found": torch.zeros(()), "box": torch.zeros(4)}
        faces = located[0]
        box = torch.as_tensor(faces.boxes[faces.chosen][:4], dtype=torch.float32)
        arcface = _output(embeds.arcface, "The face analyser's ArcFace embedding", (1, width))[0]
        return {"arcface": arcface, "found": torch.ones(()), "box": box.contiguous()}

    return Encoder(function, _fingerprint(fingerprint, CacheKeys.FACE, resolution=resolution, face_dim=width))


def style_encoder(
    clip_image: Callable[[torch.Tensor], torch.Tensor],
    fingerprint: str,
    resolution: int,
    *,
    fill: float = RECONSTRUCTION_FILL,
    expand: float = 0.0,
    hide_face: bool = True,
) -> Encoder:
    """ "image_embeds": (clip_dim,): `clip_image` ((1, H, W, 3) in [0, 1] → (1, clip_dim) CLIP-vision image embeds)
    of the R × R crop with the face box from the "face" encoder (made at the same R) set to `fill`, FaceStudio's
    reconstruction input (§3.3); of the whole crop when no face was found, or without `hide_face` (an adapter with
    no face source: then no face encoder is needed)."""
    _check_size(resolution, "resolution")
    _check_fraction(fill, "fill", low_open=False)
    if not isinstance(expand, (int, float)) or not math.isfinite(expand) or expand < 0:
        raise ValueError(f"expand must be a number ≥ 0; got {expand!r}.")

    def function(item: EncoderInput) -> dict[str, torch.Tensor]:
        crop = resize_cover(item.pixels, resolution)
        face = item.earlier[CacheKeys.FACE] if hide_face else None
        if face is not None and float(face["found"]) > 0:
            hidden = faceid_reconstruction_inputs(crop[0], face_box=face["box"], fill=fill, expand=expand)
            crop = hidden.style_image[None]
        embeds = _output(clip_image(crop), "The CLIP vision encoder's image embeds", (1, None))
        return {"image_embeds": embeds[0]}

    return Encoder(
        function,
        _fingerprint(
            fingerprint, CacheKeys.STYLE, resolution=resolution, fill=float(fill), expand=float(expand),
            hide_face=bool(hide_face),
        ),
        uses=(CacheKeys.FACE,) if hide_face else (),
    )  # fmt: skip


def keypoints_in_crop(keypoints: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(17, 3) keypoints with x, y as fractions of a `height` × `width` image → the same points as fractions of the
    image's `resize_cover` crop (the centred square of side s = min(H, W), offsets rounded down):
    x' = (x·W − left) / s, y' = (y·H − top) / s. A point outside the crop, or with confidence 0, becomes (0, 0, 0):
    invisible, as the pose model reports a point it cannot see."""
    points = _output(keypoints, "The keypoints", (NUM_KEYPOINTS, 3))
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    x = (points[:, 0] * width - left) / side
    y = (points[:, 1] * height - top) / side
    inside = (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1) & (points[:, 2] > 0)
    mapped = torch.stack([x, y, points[:, 2]], dim=1)
    return torch.where(inside[:, None], mapped, torch.zeros_like(mapped)).contiguous()


def pose_encoder(
    pose_model: PoseModel | None,
    fingerprint: str,
    resolution: int,
    conf: float = DEFAULT_DETECTION_CONFIDENCE,
    *,
    keypoint_conf: float = DEFAULT_KEYPOINT_CONFIDENCE,
    imgsz: int = DEFAULT_POSE_IMAGE_SIZE,
) -> Encoder:
    """ "keypoints": (17, 3), x and y as fractions of the R × R crop, and the keypoint confidence: the image's
    keypoints file when it has one, mapped onto the crop (`keypoints_in_crop`; taken as they are, confidences
    included); else the main person the pose model finds in the crop, as the Body ID node picks one
    (`detect_poses`: the largest box area × box confidence among those with confidence ≥ `conf`), keypoints below
    `keypoint_conf` zeroed, all zeros when nobody is found. Without a pose model (None; fingerprint e.g.
    KEYPOINT_FILES_ONLY) every image must have its keypoints file."""
    _check_size(resolution, "resolution", 32)
    _check_fraction(conf, "conf", low_open=True)
    _check_fraction(keypoint_conf, "keypoint_conf", low_open=False)
    _check_size(imgsz, "imgsz", 32)

    def function(item: EncoderInput) -> dict[str, torch.Tensor]:
        if item.keypoints is not None:
            _single_image(item.pixels)
            height, width = item.pixels.shape[1:3]
            return {"keypoints": keypoints_in_crop(item.keypoints, height, width)}
        if pose_model is None:
            raise RuntimeError(
                f"{item.person}/{item.name} has no keypoints file ({Path(item.name).stem}.keypoints.json) and no "
                "pose model was given: write the file, or give a pose model."
            )
        crop = resize_cover(item.pixels, resolution)
        poses = detect_poses(
            pose_model, crop, detection_confidence=conf, keypoint_confidence=keypoint_conf, image_size=imgsz
        )
        return {"keypoints": poses.keypoints.points[0].float().contiguous()}

    parameters = {"resolution": resolution, "conf": float(conf), "keypoint_conf": float(keypoint_conf), "imgsz": imgsz}
    return Encoder(function, _fingerprint(fingerprint, CacheKeys.POSE, **parameters), reads_keypoints=True)


def body_view_encoder(fingerprint: str, image_size: int, map_size: int, weighting: WeightingParams) -> Encoder:
    """The body VAE's input and reconstruction target, from the "pose" encoder's keypoints:

    - "weighted": (S, S, 3), S = image_size: BoLID eq. 13 applied to the square crop at its own resolution (the
      centred min(H, W) square, so the keypoints' fractions fit it), σ = weighting.sigma × its side, as the Body ID
      node weights a view; then letterboxed to S as `BodyVAE.encode_views` does (which leaves an S × S view as it is);
    - "keypoints": (17, 3), the pose encoder's; "confidence": () the mean confidence of the visible keypoints (0 with
      nobody), the view's weight in BoLID's aggregation;
    - "weight_map": (m, m), m = map_size: eq. 12's W_norm over the crop, area-resized.
    """
    _check_size(image_size, "image_size", 16)
    _check_size(map_size, "map_size")
    if not isinstance(weighting, WeightingParams):
        raise ValueError(f"weighting must be WeightingParams(sigma, alpha); got {type(weighting).__name__}.")

    def function(item: EncoderInput) -> dict[str, torch.Tensor]:
        pixels = item.pixels
        _single_image(pixels)
        side = min(pixels.shape[1:3])
        crop = resize_cover(pixels, side)
        keypoints = _output(item.earlier[CacheKeys.POSE]["keypoints"], "The pose keypoints", (NUM_KEYPOINTS, 3))
        weighted = weight_views(crop, PoseKeypoints(keypoints[None]), weighting.sigma * side, weighting.alpha)
        view = letterbox(weighted.images, image_size)[0].permute(1, 2, 0)
        weight_map = F.interpolate(weighted.weight_maps[:, None], size=(map_size, map_size), mode="area")[0, 0]
        visible = keypoints[:, 2] > 0
        confidence = keypoints[visible, 2].mean() if bool(visible.any()) else torch.zeros(())
        return {
            "weighted": view.contiguous(),
            "keypoints": keypoints,
            "confidence": confidence.float(),
            "weight_map": weight_map.contiguous(),
        }

    parameters = {"image_size": image_size, "map_size": map_size, "sigma": weighting.sigma, "alpha": weighting.alpha}
    return Encoder(function, _fingerprint(fingerprint, CacheKeys.BODY_VIEW, **parameters), uses=(CacheKeys.POSE,))


def caption_clip_encoder(encode_text: Callable[[str], torch.Tensor], fingerprint: str) -> Encoder:
    """ "text_embeds": (d,): `encode_text(caption)` → (1, d), the caption in the shared CLIP space (for L_CLIP)."""

    def function(item: EncoderInput) -> dict[str, torch.Tensor]:
        embeds = _output(encode_text(item.caption), "The CLIP text encoder's embeds", (1, None))
        return {"text_embeds": embeds[0]}

    return Encoder(function, _fingerprint(fingerprint, CacheKeys.CAPTION_CLIP), reads_caption=True)
