"""Renderer keypoints: a dataset image's <stem>.keypoints.json (17 [x, y, confidence], fractions of the image) read by
the scan, mapped onto the encoders' centre crop instead of running a pose model, part of the cache key, and enough
for the CLI's body targets without a pose model."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import train_cli_factories as factories
from PIL import Image

from bolid_core.body.vae import load_body_vae
from bolid_core.train import cli
from bolid_core.train.dataset import (
    DatasetError,
    Encoder,
    build_cache,
    images_without_keypoints,
    scan_dataset,
)
from bolid_core.train.encoders import KEYPOINT_FILES_ONLY, keypoints_in_crop, pose_encoder, resize_cover

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RED = (255, 0, 0)


def points_with(nose: tuple[float, float, float], rest: float = 0.0) -> list[list[float]]:
    """17 keypoints: the nose as given, the others at (0.5, 0.5) with confidence `rest`."""
    return [list(nose)] + [[0.5, 0.5, rest] for _ in range(16)]


def write_image(path: Path, width: int, height: int, marker: tuple[int, int] | None = None) -> Path:
    """Grey, with one red pixel at marker = (row, column)."""
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    if marker is not None:
        pixels[marker] = RED
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_keypoints(image: Path, points) -> Path:
    path = image.with_name(f"{image.stem}.keypoints.json")
    path.write_text(json.dumps(points), encoding="utf-8")
    return path


# --- the scan -------------------------------------------------------------------------------------------------------


def test_the_scan_reads_each_images_keypoints_file(tmp_path):
    front = write_image(tmp_path / "ann" / "front.png", 32, 32)
    write_image(tmp_path / "ann" / "side.png", 32, 32)
    points = points_with((0.25, 0.75, 1.0), rest=0.5)
    file = write_keypoints(front, points)
    write_keypoints(tmp_path / "ann" / "gone.png", points_with((0.1, 0.1, 1.0)))  # no gone.png: a note
    index = scan_dataset(tmp_path, min_side=16)
    front_image, side_image = index.images
    assert front_image.keypoints == tuple(tuple(point) for point in points)
    assert front_image.keypoints_sha256 == hashlib.sha256(file.read_bytes()).hexdigest()
    assert side_image.keypoints is None and side_image.keypoints_sha256 is None
    assert images_without_keypoints(index) == ["ann/side.png"]
    assert any("gone.keypoints.json" in note and "not used" in note for note in index.notes)


BAD_FILES = [
    ("{not json", "not valid JSON"),
    (json.dumps(points_with((0.5, 0.5, 1.0))[:16]), "a list of 16 items, not 17 keypoints"),
    (json.dumps({"keypoints": []}), "a JSON dict, not 17 keypoints"),
    (json.dumps([[0.5, 0.5]] * 17), r"keypoint 0 \(nose\) is \[0.5, 0.5\], not an \[x, y, confidence\] triple"),
    (json.dumps(points_with((1.5, 0.5, 1.0))), r"keypoint 0 \(nose\): x is 1.5, outside \[0, 1\]"),
    (json.dumps(points_with((0.5, -0.1, 1.0))), r"keypoint 0 \(nose\): y is -0.1, outside \[0, 1\]"),
    (json.dumps(points_with((0.5, 0.5, 1.2))), r"keypoint 0 \(nose\): confidence is 1.2, outside \[0, 1\]"),
    (json.dumps(points_with((0.5, 0.5, 1.0))).replace("1.0", "NaN", 1), r"x is nan|confidence is nan"),
    ("[" + ", ".join(["[0.5, 0.5, 1]"] * 16) + ', [0.5, "0.5", 1]]', r"keypoint 16 \(right_ankle\): y is \"0.5\""),
    ("[" + ", ".join(["[0.5, 0.5, 1]"] * 16) + ", [true, 0.5, 1]]", r"keypoint 16 \(right_ankle\): x is true"),
    ("[" + ", ".join(["[0.5, 0.5, 1]"] * 16) + ", [0.5, 0.5, Infinity]]", "confidence is inf, not a finite number"),
]


@pytest.mark.parametrize(("text", "problem"), BAD_FILES)
def test_a_bad_keypoints_file_is_a_dataset_error_naming_it_and_the_format(tmp_path, text, problem):
    front = write_image(tmp_path / "ann" / "front.png", 32, 32)
    front.with_name("front.keypoints.json").write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        scan_dataset(tmp_path, min_side=16)
    (message,) = [line for line in caught.value.problems if "front.keypoints.json" in line]
    assert message.startswith("'ann/front.keypoints.json': ")
    assert re.search(problem, message), message
    assert "write a JSON list of 17 [x, y, confidence] triples in COCO-17 order" in message


# --- the crop -------------------------------------------------------------------------------------------------------


def test_keypoints_map_onto_the_centre_crop_exactly():
    # 96 wide, 64 high: the crop is columns 16..80, all rows. x' = (96·x − 16) / 64, y' = y.
    points = torch.zeros(17, 3)
    points[0] = torch.tensor([0.5, 0.25, 0.9])  # the centre column: 48 → 32/64
    points[1] = torch.tensor([0.75, 0.5, 1.0])  # column 72 → 56/64 = 0.875
    points[2] = torch.tensor([0.1, 0.5, 1.0])  # column 9.6, left of the crop: invisible
    points[3] = torch.tensor([1.0, 1.0, 0.5])  # column 96, right of it: invisible
    points[4] = torch.tensor([16 / 96, 0.0, 0.7])  # the crop's left edge and top: kept, (0, 0)
    points[5] = torch.tensor([0.5, 0.5, 0.0])  # confidence 0: invisible, whatever its place
    mapped = keypoints_in_crop(points, 64, 96)
    expected = torch.zeros(17, 3)
    expected[0] = torch.tensor([0.5, 0.25, 0.9])
    expected[1] = torch.tensor([0.875, 0.5, 1.0])
    expected[4] = torch.tensor([0.0, 0.0, 0.7])
    torch.testing.assert_close(mapped, expected, rtol=0, atol=1e-7)

    # 64 wide, 130 high: top = 33. y' = (130·y − 33) / 64.
    tall = torch.zeros(17, 3)
    tall[0] = torch.tensor([0.25, 0.5, 1.0])  # row 65 → 32/64
    tall[1] = torch.tensor([0.5, 0.2, 1.0])  # row 26 < 33: invisible
    tall[2] = torch.tensor([0.5, 97 / 130, 1.0])  # row 97 → 64/64, the bottom edge: kept
    mapped = keypoints_in_crop(tall, 130, 64)
    expected = torch.zeros(17, 3)
    expected[0] = torch.tensor([0.25, 0.5, 1.0])
    expected[2] = torch.tensor([0.5, 1.0, 1.0])
    torch.testing.assert_close(mapped, expected, rtol=0, atol=1e-6)


class RefusingPoseModel:
    """A pose model that must not be asked: the keypoints file wins."""

    def __getattr__(self, name):
        raise AssertionError(f"the pose model was used ({name})")


def pose_only(model=None, resolution: int = 64) -> dict[str, Encoder]:
    return {"pose": pose_encoder(model, KEYPOINT_FILES_ONLY, resolution)}


@pytest.mark.parametrize("resolution", [64, 32])
def test_a_point_on_a_known_pixel_lands_on_that_pixel_of_the_crop(tmp_path, resolution):
    # Red pixel at row 16, column 72 of a 96×64 image; its centre is at fractions (72.5/96, 16.5/64). The crop drops
    # 16 columns on the left, so at 64 px the point is pixel (16, 56), at 32 px pixel (8, 28).
    image = write_image(tmp_path / "data" / "ann" / "front.png", 96, 64, marker=(16, 72))
    write_keypoints(image, points_with((72.5 / 96, 16.5 / 64, 1.0)))
    write_image(tmp_path / "data" / "ann" / "side.png", 96, 64)
    write_keypoints(tmp_path / "data" / "ann" / "side.png", points_with((0.5, 0.5, 1.0)))
    index = scan_dataset(tmp_path / "data", min_side=16)
    cached = build_cache(index, tmp_path / "cache", pose_only(RefusingPoseModel(), resolution))
    nose = cached[0].tensors["pose"]["keypoints"][0]
    torch.testing.assert_close(nose, torch.tensor([56.5 / 64, 16.5 / 64, 1.0]), rtol=0, atol=1e-7)

    pixels = torch.from_numpy(np.asarray(Image.open(image), dtype=np.float32) / 255)[None]
    crop = resize_cover(pixels, resolution)[0]
    row, column = int(nose[1] * resolution), int(nose[0] * resolution)
    assert (row, column) == ((16, 56) if resolution == 64 else (8, 28))
    redness = crop[..., 0] - crop[..., 1]
    assert divmod(int(redness.flatten().argmax()), resolution) == (row, column)


def test_without_a_file_or_a_pose_model_the_image_is_named(tmp_path):
    write_image(tmp_path / "data" / "ann" / "front.png", 32, 32)
    index = scan_dataset(tmp_path / "data", min_side=16, min_views=1)
    with pytest.raises(RuntimeError, match=r"ann/front.png has no keypoints file \(front.keypoints.json\)"):
        build_cache(index, tmp_path / "cache", pose_only(resolution=32))


def test_the_cache_key_holds_the_keypoints_files_content(tmp_path):
    data = tmp_path / "data"
    front = write_image(data / "ann" / "front.png", 32, 32)
    side = write_image(data / "ann" / "side.png", 32, 32, marker=(3, 3))
    write_keypoints(front, points_with((0.25, 0.25, 1.0)))
    write_keypoints(side, points_with((0.5, 0.5, 1.0)))
    calls = []

    def recording(name, function):
        def encode(item):
            calls.append((name, item.name))
            return function(item)

        return encode

    pose = pose_encoder(None, KEYPOINT_FILES_ONLY, 32)
    encoders = {
        "pose": Encoder(recording("pose", pose.function), pose.fingerprint, reads_keypoints=True),
        "mean": Encoder(recording("mean", lambda item: {"rgb": item.pixels.mean(dim=(0, 1, 2))}), "mean-v1"),
        "after_pose": Encoder(
            recording("after_pose", lambda item: {"x": item.earlier["pose"]["keypoints"][:, 0].clone()}),
            "after-v1", uses=("pose",),
        ),
    }  # fmt: skip
    build_cache(scan_dataset(data, min_side=16), tmp_path / "cache", encoders)
    assert len(calls) == 6
    calls.clear()
    build_cache(scan_dataset(data, min_side=16), tmp_path / "cache", encoders)
    assert calls == [], "nothing changed, nothing is encoded again"

    write_keypoints(front, points_with((0.75, 0.25, 1.0)))  # new content, same image
    rebuilt = build_cache(scan_dataset(data, min_side=16), tmp_path / "cache", encoders)
    assert sorted(calls) == [("after_pose", "front.png"), ("pose", "front.png")]
    assert rebuilt[0].tensors["pose"]["keypoints"][0, 0].item() == pytest.approx(0.75)
    assert rebuilt[0].tensors["after_pose"]["x"][0].item() == pytest.approx(0.75)

    calls.clear()
    write_keypoints(front, points_with((0.25, 0.25, 1.0)))  # back to the first content: its entries are reused
    build_cache(scan_dataset(data, min_side=16), tmp_path / "cache", encoders)
    assert calls == []


# --- the command line -----------------------------------------------------------------------------------------------


def keypoints_for_people(dataset: Path, skip: tuple[str, ...] = ()) -> None:
    rng = np.random.default_rng(5)
    for image in sorted(dataset.glob("*/*.png")):
        if f"{image.parent.name}/{image.name}" in skip:
            continue
        points = rng.uniform(0.1, 0.9, size=(17, 3)).round(4)
        points[:, 2] = 1.0
        write_keypoints(image, points.tolist())


def body_vae_config(root: Path, dataset: Path, models, output: str) -> dict:
    config = factories.run_config(
        root, dataset, models, max_steps=2, target="body_vae", body={"views": 2, "latent_dim": 6, "image_size": 32}
    )
    config["paths"]["output"] = str(root / output)
    config["paths"]["cache"] = str(root / f"{output}_cache")
    return config


def test_cli_trains_a_body_vae_from_keypoint_files_without_a_pose_model(tmp_path, capsys):
    dataset = factories.write_people(tmp_path / "people")
    keypoints_for_people(dataset)
    models = factories.write_models(tmp_path / "models")
    path = factories.write_config(tmp_path / "run.toml", body_vae_config(tmp_path, dataset, models, "run"))
    assert cli.main(["--config", str(path)]) == 0
    written = tmp_path / "run" / "tiny_body_vae.safetensors"
    assert f"Wrote {written}" in capsys.readouterr().out
    assert load_body_vae(written).vae.config.image_size == 32  # body.image_size reached the new VAE

    # A mixed dataset without a pose model: refused, naming the images without keypoints, before any work.
    mixed = factories.write_people(tmp_path / "mixed")
    keypoints_for_people(mixed, skip=("ada/view1.png", "cyd/view0.png"))
    config = body_vae_config(tmp_path, mixed, models, "mixed_run")
    path = factories.write_config(tmp_path / "mixed.toml", config)
    assert cli.main(["--config", str(path)]) == cli.EXIT_USAGE
    error = capsys.readouterr().err
    assert "paths.pose_model is missing" in error and "2 image(s)" in error
    assert "ada/view1.png, cyd/view0.png" in error and "keypoints.json" in error
    assert not (tmp_path / "mixed_run_cache").exists() and not (tmp_path / "mixed_run").exists()
