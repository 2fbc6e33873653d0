"""Tier 1: the host-independent cache encoders, on synthetic images, the synthetic insightface pack and a random
YOLO11-pose, checked against plain computations of what each should give."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx_factories import (
    build_model_pack,
    face_image,
    recognizer_weight,
    reference_crop,
    reference_embedding,
    reference_landmarks,
)
from PIL import Image
from pose_factories import build_varied_pose_model

from bolid_core.body.pipeline import WeightingParams
from bolid_core.body.pose import load_pose_model
from bolid_core.body.vae import letterbox
from bolid_core.identity.face import ExecutionProvider, load_face_analysis
from bolid_core.train.adapter_task import AdapterCollate, CacheKeys
from bolid_core.train.dataset import EncoderInput, build_cache, scan_dataset
from bolid_core.train.encoders import (
    body_view_encoder,
    caption_clip_encoder,
    face_encoder,
    latents_encoder,
    pose_encoder,
    resize_cover,
    style_encoder,
    text_encoder,
)

os.environ["YOLO_OFFLINE"] = "true"


def _refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args[:2]}")


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _refuse)
        yield


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("insightface")
    build_model_pack(root, "buffalo_l")
    return load_face_analysis(root, "buffalo_l", ExecutionProvider.CPU)


@pytest.fixture(scope="module")
def pose_model(tmp_path_factory: pytest.TempPathFactory):
    return load_pose_model(build_varied_pose_model(tmp_path_factory.mktemp("ultralytics") / "yolo11n-pose.pt"))


def item(pixels: torch.Tensor, caption: str = "", earlier: dict | None = None) -> EncoderInput:
    image = Image.fromarray((pixels[0].numpy() * 255).round().astype(np.uint8))
    return EncoderInput(image, pixels, caption, "alice", 0, "front.png", earlier or {})


def noise(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((1, height, width, 3), generator=torch.Generator().manual_seed(seed))


# --- resize_cover ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "top", "left"), [(300, 200, 50, 0), (201, 300, 0, 49), (64, 64, 0, 0)])
def test_resize_cover_at_the_short_side_is_the_centred_square(height: int, width: int, top: int, left: int) -> None:
    pixels = noise(height, width)
    side = min(height, width)
    expected = pixels[:, top : top + side, left : left + side]
    assert torch.equal(resize_cover(pixels, side), expected)


@pytest.mark.parametrize("resolution", [64, 150, 320])
def test_resize_cover_scales_the_square_as_pil_does(resolution: int) -> None:
    pixels = noise(300, 200, seed=1)
    square = pixels[0, 50:250].numpy()
    # PIL's bilinear filter (antialiased when shrinking), per channel in float: an independent resampler.
    channels = [
        Image.fromarray(square[..., c], mode="F").resize((resolution, resolution), Image.BILINEAR) for c in range(3)
    ]
    expected = np.clip(np.stack([np.asarray(channel) for channel in channels], axis=-1), 0, 1)
    result = resize_cover(pixels, resolution)
    assert result.shape == (1, resolution, resolution, 3) and result.dtype == torch.float32
    np.testing.assert_allclose(result[0].numpy(), expected, atol=2e-5)


def test_resize_cover_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(1, H, W, 3\)"):
        resize_cover(torch.rand(2, 8, 8, 3), 4)
    with pytest.raises(ValueError, match="resolution"):
        resize_cover(torch.rand(1, 8, 8, 3), 0)


# --- latents, text, caption CLIP ------------------------------------------------------------------------------------


def test_latents_text_and_caption_encoders_pass_the_crop_and_caption_through() -> None:
    pixels = noise(96, 64, seed=2)
    seen = []

    def encode(crop: torch.Tensor) -> torch.Tensor:
        seen.append(crop)
        return crop.permute(0, 3, 1, 2)[:, :, ::8, ::8].double() * 2  # stands in for a VAE: (1, 3, 8, 8)

    out = latents_encoder(encode, "vae-a", 64).function(item(pixels))
    assert torch.equal(seen[0], pixels[:, 16:80])
    assert set(out) == {"latents"} and out["latents"].dtype == torch.float32
    assert torch.equal(out["latents"], (pixels[0, 16:80].permute(2, 0, 1)[:, ::8, ::8] * 2).float())

    def encode_text(caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        value = float(len(caption))
        return torch.full((1, 7, 5), value), torch.full((1, 3), -value)

    out = text_encoder(encode_text, "clip-l+g").function(item(pixels, "a red coat"))
    assert torch.equal(out["context"], torch.full((7, 5), 10.0)) and torch.equal(out["pooled"], torch.full((3,), -10.0))

    out = caption_clip_encoder(lambda caption: torch.ones(1, 4) * len(caption), "clip").function(item(pixels, "ab"))
    assert torch.equal(out["text_embeds"], torch.full((4,), 2.0))
    assert text_encoder(encode_text, "x").reads_caption and caption_clip_encoder(encode_text, "x").reads_caption


def test_wrongly_shaped_model_outputs_are_named() -> None:
    with pytest.raises(RuntimeError, match=r"The VAE's latents must be a tensor shaped \(1, n, n, n\)"):
        latents_encoder(lambda crop: torch.zeros(4, 8, 8), "vae", 32).function(item(noise(32, 32)))
    with pytest.raises(RuntimeError, match="must return"):
        text_encoder(lambda caption: torch.zeros(1, 7, 5), "clip").function(item(noise(32, 32)))


def test_fingerprints_fold_in_every_parameter(analyzer, pose_model) -> None:
    weighting = WeightingParams(0.08, 0.25)
    variants = [
        latents_encoder(lambda x: x, "vae", 512), latents_encoder(lambda x: x, "vae", 640),
        latents_encoder(lambda x: x, "other-vae", 512),
        face_encoder(analyzer, "buffalo_l", 512), face_encoder(analyzer, "buffalo_l", 640),
        style_encoder(lambda x: x, "clip-vit-h", 512), style_encoder(lambda x: x, "clip-vit-h", 640),
        style_encoder(lambda x: x, "clip-vit-h", 512, fill=0.0),
        style_encoder(lambda x: x, "clip-vit-h", 512, expand=0.2),
        pose_encoder(pose_model, "yolo", 512), pose_encoder(pose_model, "yolo", 640),
        pose_encoder(pose_model, "yolo", 512, conf=0.5), pose_encoder(pose_model, "yolo", 512, keypoint_conf=0.3),
        pose_encoder(pose_model, "yolo", 512, imgsz=320),
        body_view_encoder("bv", 128, 32, weighting), body_view_encoder("bv", 96, 32, weighting),
        body_view_encoder("bv", 128, 16, weighting), body_view_encoder("bv", 128, 32, WeightingParams(0.1, 0.25)),
        body_view_encoder("bv", 128, 32, WeightingParams(0.08, 0.5)),
    ]  # fmt: skip
    fingerprints = [encoder.fingerprint for encoder in variants]
    assert len(set(fingerprints)) == len(fingerprints)
    assert latents_encoder(lambda x: x, "vae", 512).fingerprint == fingerprints[0]  # and stable
    assert style_encoder(lambda x: x, "c", 512).uses == (CacheKeys.FACE,)
    assert body_view_encoder("bv", 128, 32, weighting).uses == (CacheKeys.POSE,)


# --- face and style -------------------------------------------------------------------------------------------------

# A bright 40 px square centred on (320, 160) of a 640 × 640 crop: an anchor of the synthetic detector's stride-32
# grid, found at detection size 640, where the detector's box is the centre ± half of sqrt(brightness) = 20 px.
FACE_X, FACE_Y, FACE_SIDE, CROP = 320, 160, 40, 640


def face_photo() -> torch.Tensor:
    """800 × 640 (portrait): the 640 crop starts 80 rows down."""
    image = face_image(800, 640, [(FACE_X, FACE_Y + 80, FACE_SIDE)])
    return torch.from_numpy(image).float()[None] / 255


def test_face_encoder_embeds_the_face_of_the_crop(analyzer) -> None:
    out = face_encoder(analyzer, "buffalo_l", CROP).function(item(face_photo()))
    assert float(out["found"]) == 1.0
    half = FACE_SIDE / 2
    np.testing.assert_allclose(
        out["box"].numpy(), [FACE_X - half, FACE_Y - half, FACE_X + half, FACE_Y + half], atol=1e-3
    )
    crop_bgr = np.ascontiguousarray(face_image(640, 640, [(FACE_X, FACE_Y, FACE_SIDE)])[..., ::-1])
    landmarks = reference_landmarks(crop_bgr, 640, (FACE_X, FACE_Y))
    embedding = reference_embedding(reference_crop(crop_bgr, landmarks, 112), recognizer_weight(0))
    assert out["arcface"].shape == (512,) and out["arcface"].dtype == torch.float32
    np.testing.assert_allclose(out["arcface"].numpy(), embedding, atol=2e-3)


def test_no_face_is_found_zero_not_an_error(analyzer) -> None:
    out = face_encoder(analyzer, "buffalo_l", 256).function(item(torch.zeros(1, 300, 256, 3)))
    assert float(out["found"]) == 0.0 and out["found"].shape == ()
    assert torch.equal(out["arcface"], torch.zeros(512)) and torch.equal(out["box"], torch.zeros(4))


def test_style_encoder_hides_exactly_the_face_box() -> None:
    pixels = noise(40, 30, seed=4)
    seen = []

    def clip_image(image: torch.Tensor) -> torch.Tensor:
        seen.append(image)
        return image.mean(dim=(1, 2))  # (1, 3)

    encoder = style_encoder(clip_image, "clip", 30)
    box = torch.tensor([4.5, 10.2, 11.0, 17.9])
    face = {"found": torch.ones(()), "box": box, "arcface": torch.zeros(512)}
    out = encoder.function(item(pixels, earlier={CacheKeys.FACE: face}))
    expected = pixels[0, 5:35].clone()
    for row in range(30):
        for column in range(30):
            # pixel (row, column) covers [column, column + 1) × [row, row + 1); the box touches it if they overlap
            if column + 1 > 4.5 and column < 11.0 and row + 1 > 10.2 and row < 17.9:
                expected[row, column] = 0.5
    assert torch.equal(seen[0][0], expected)
    assert int((seen[0][0] != pixels[0, 5:35]).any(dim=-1).sum()) == 7 * 8  # columns 4..10, rows 10..17
    assert torch.equal(out["image_embeds"], expected.mean(dim=(0, 1)))

    no_face = {"found": torch.zeros(()), "box": torch.zeros(4), "arcface": torch.zeros(512)}
    encoder.function(item(pixels, earlier={CacheKeys.FACE: no_face}))
    assert torch.equal(seen[1][0], pixels[0, 5:35])


def test_style_encoder_without_a_face_source_embeds_the_whole_crop_and_needs_no_face_encoder() -> None:
    pixels = noise(40, 30, seed=5)
    seen = []

    def clip_image(image: torch.Tensor) -> torch.Tensor:
        seen.append(image)
        return image.mean(dim=(1, 2))

    whole = style_encoder(clip_image, "clip", 30, hide_face=False)
    assert whole.uses == ()
    out = whole.function(item(pixels, earlier={}))
    assert torch.equal(seen[0][0], pixels[0, 5:35])
    assert torch.equal(out["image_embeds"], pixels[0, 5:35].mean(dim=(0, 1)))
    assert whole.fingerprint != style_encoder(clip_image, "clip", 30).fingerprint


# --- pose and body view ---------------------------------------------------------------------------------------------


def test_pose_encoder_keeps_the_largest_most_confident_person_of_the_crop(pose_model) -> None:
    pixels = (noise(200, 160, seed=5) * 255).round() / 255
    out = pose_encoder(pose_model, "yolo", 160, conf=0.05, imgsz=160).function(item(pixels))
    crop = pixels[0, 20:180]
    bgr = np.ascontiguousarray((crop.numpy() * 255).round().astype(np.uint8)[..., ::-1])
    (result,) = pose_model.predict([bgr], conf=0.05, imgsz=160)
    assert len(result.boxes) > 1
    best, best_score = 0, -1.0
    for person in range(len(result.boxes)):
        _, _, width, height = result.boxes.xywhn[person].tolist()
        score = width * height * float(result.boxes.conf[person])
        if score > best_score:
            best, best_score = person, score
    expected = torch.cat([result.keypoints.xyn[best], result.keypoints.conf[best][:, None]], dim=1).float()
    expected[expected[:, 2] < 0.5] = 0.0
    assert out["keypoints"].shape == (17, 3)
    torch.testing.assert_close(out["keypoints"], expected, rtol=0, atol=1e-5)
    nobody = pose_encoder(pose_model, "yolo", 160, conf=0.99, imgsz=160).function(item(pixels))
    assert torch.equal(nobody["keypoints"], torch.zeros(17, 3))


def plain_weighted_view(crop: torch.Tensor, keypoints: torch.Tensor, sigma: float, alpha: float):
    """BoLID eqs. 11-13 written out: per pixel centre, the Gaussian of its nearest visible keypoint, normalised."""
    size = crop.shape[0]
    sigma_px = sigma * size
    weight = torch.zeros(size, size, dtype=torch.float64)
    for row in range(size):
        for column in range(size):
            best = 0.0
            for x, y, confidence in keypoints.tolist():
                if confidence > 0:
                    distance = (column + 0.5 - x * size) ** 2 + (row + 0.5 - y * size) ** 2
                    best = max(best, math.exp(-distance / (2 * sigma_px**2)))
            weight[row, column] = best
    weight = weight / weight.max()
    return crop.double() * (alpha + (1 - alpha) * weight)[..., None], weight


def test_body_view_is_the_weighted_crop_letterboxed() -> None:
    pixels = noise(48, 64, seed=6)
    keypoints = torch.zeros(17, 3)
    keypoints[0] = torch.tensor([0.25, 0.3, 0.9])
    keypoints[5] = torch.tensor([0.7, 0.6, 0.7])
    keypoints[9] = torch.tensor([0.5, 0.5, 0.0])  # invisible: no Gaussian
    weighting = WeightingParams(0.1, 0.25)
    encoder = body_view_encoder("bv", 24, 12, weighting)
    out = encoder.function(item(pixels, earlier={CacheKeys.POSE: {"keypoints": keypoints}}))
    weighted, weight = plain_weighted_view(pixels[0, :, 8:56], keypoints, 0.1, 0.25)
    # 48 → 24: BodyVAE's letterbox of the weighted crop (an exact half, no padding)
    expected_view = letterbox(weighted.float()[None], 24)[0].permute(1, 2, 0)
    assert out["weighted"].shape == (24, 24, 3)
    torch.testing.assert_close(out["weighted"], expected_view, rtol=0, atol=1e-5)
    # feeding the cached view back through encode_views' letterbox changes nothing
    torch.testing.assert_close(
        letterbox(out["weighted"][None], 24)[0].permute(1, 2, 0), out["weighted"], rtol=0, atol=1e-6
    )
    expected_map = weight.reshape(12, 4, 12, 4).mean(dim=(1, 3)).float()  # area: 4 × 4 means
    torch.testing.assert_close(out["weight_map"], expected_map, rtol=0, atol=1e-5)
    assert torch.equal(out["keypoints"], keypoints)
    assert float(out["confidence"]) == pytest.approx((0.9 + 0.7) / 2) and out["confidence"].shape == ()

    nobody = encoder.function(item(pixels, earlier={CacheKeys.POSE: {"keypoints": torch.zeros(17, 3)}}))
    assert float(nobody["confidence"]) == 0.0
    assert torch.equal(nobody["weight_map"], torch.ones(12, 12))  # nothing to emphasise: the view unweighted
    expected_plain = F.interpolate(
        pixels[0, :, 8:56].permute(2, 0, 1)[None], size=(24, 24), mode="bilinear", antialias=True
    )[0].permute(1, 2, 0)
    torch.testing.assert_close(nobody["weighted"], expected_plain, rtol=0, atol=1e-5)


# --- the whole cache ------------------------------------------------------------------------------------------------


def write_dataset(root: Path) -> None:
    for person, shift in (("alice", 0), ("bob", 64)):
        for view in range(2):
            folder = root / person
            folder.mkdir(parents=True, exist_ok=True)
            image = face_image(320, 256, [(96 + shift, 160 + 32 * view, 36)])
            Image.fromarray(image).save(folder / f"view{view}.png")
        (root / person / "caption.txt").write_text(f"a photo of {person}")


def test_build_cache_with_every_encoder(tmp_path: Path, analyzer, pose_model) -> None:
    write_dataset(tmp_path / "data")
    index = scan_dataset(tmp_path / "data", min_side=256)
    calls = {"vae": 0}

    def encode_latents(crop: torch.Tensor) -> torch.Tensor:
        calls["vae"] += 1
        return F.avg_pool2d(crop.permute(0, 3, 1, 2), 8).repeat(1, 2, 1, 1)[:, :4]

    def encoders(resolution: int) -> dict:
        return {
            CacheKeys.LATENTS: latents_encoder(encode_latents, "vae", resolution),
            CacheKeys.TEXT: text_encoder(lambda c: (torch.ones(1, 5, 6) * len(c), torch.ones(1, 3)), "text"),
            CacheKeys.FACE: face_encoder(analyzer, "buffalo_l", 256),
            CacheKeys.STYLE: style_encoder(lambda image: image.mean(dim=(1, 2)), "clip", 256),
            CacheKeys.POSE: pose_encoder(pose_model, "yolo", 256, conf=0.05, imgsz=160),
            CacheKeys.BODY_VIEW: body_view_encoder("body", 32, 8, WeightingParams(0.08, 0.25)),
            CacheKeys.CAPTION_CLIP: caption_clip_encoder(lambda c: torch.ones(1, 4), "clip-text"),
        }

    dataset = build_cache(index, tmp_path / "cache", encoders(256))
    assert calls["vae"] == 4 and len(dataset) == 4 and dataset.persons == ("alice", "bob")
    example = dataset[0]
    shapes = {
        name: {key: tuple(value.shape) for key, value in tensors.items()} for name, tensors in example.tensors.items()
    }
    assert shapes == {
        "latents": {"latents": (4, 32, 32)},
        "text": {"context": (5, 6), "pooled": (3,)},
        "face": {"arcface": (512,), "found": (), "box": (4,)},
        "style": {"image_embeds": (3,)},
        "pose": {"keypoints": (17, 3)},
        "body_view": {"weighted": (32, 32, 3), "keypoints": (17, 3), "confidence": (), "weight_map": (8, 8)},
        "caption_clip": {"text_embeds": (4,)},
    }
    assert float(example.tensors["face"]["found"]) == 1.0
    # The box is in pixels of the 256 crop, where alice's first face is centred on (96, 160 − 32), not (96, 160) as
    # in the file; the synthetic detector puts a box's centre on its anchor grid, 12.8 crop pixels apart here.
    box = example.tensors["face"]["box"]
    centre_x, centre_y = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    assert abs(centre_x - 96) <= 12.8 and abs(centre_y - 128) <= 12.8
    assert torch.equal(example.tensors["body_view"]["keypoints"], example.tensors["pose"]["keypoints"])
    batch = AdapterCollate()([dataset[i] for i in range(4)])
    assert batch.latents.shape == (4, 4, 32, 32) and batch.arcface.shape == (4, 512)
    assert batch.keypoints.shape == (4, 17, 3) and batch.style.shape == (4, 3)

    build_cache(index, tmp_path / "cache", encoders(256))
    assert calls["vae"] == 4  # nothing changed: nothing re-encoded
    changed = build_cache(index, tmp_path / "cache", encoders(128))
    assert calls["vae"] == 8  # a new resolution re-encodes the latents
    assert changed[0].tensors["latents"]["latents"].shape == (4, 16, 16)
