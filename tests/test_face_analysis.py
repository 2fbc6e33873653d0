"""Tier 1: face embeddings through insightface's real loader, SCRFD and ArcFace classes, on synthetic ONNX packs.

The packs come from onnx_factories; expected landmarks, crops and embeddings are computed there in numpy from the
models' design, independently of bolid_core.identity.face.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from onnx_factories import (
    build_model_pack,
    face_image,
    recognizer_weight,
    reference_crop,
    reference_embedding,
    reference_landmarks,
)

from bolid_core.identity import FaceEmbeds
from bolid_core.identity.face import (
    DET_SIZES,
    ExecutionProvider,
    FaceChoice,
    FaceModelError,
    ImageFaces,
    NoFaceError,
    left_to_right,
    load_face_analysis,
)
from bolid_core.identity.face_preview import CHOSEN_BOX_COLOUR, FACE_BOX_COLOUR, draw_face_preview

# insightface's alignment calls a scikit-image method that is deprecated but works.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


class DownloadAttempted(AssertionError):
    pass


def _refuse(*args, **kwargs):
    raise DownloadAttempted(f"network or download attempted: {args[:2]}")


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Any connection, or insightface's own download helper, fails the test."""
    import insightface.utils.storage

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _refuse)
        patch.setattr(socket.socket, "connect_ex", _refuse)
        patch.setattr(insightface.utils.storage, "download_file", _refuse)
        yield


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("insightface")
    build_model_pack(root, "buffalo_l")
    return root


@pytest.fixture(scope="module")
def analyzer(models_root: Path):
    return load_face_analysis(models_root, "buffalo_l", ExecutionProvider.CPU)


@pytest.fixture()
def detector_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Input shapes of every ONNX Runtime run, as they reach the runtime."""
    shapes: list[tuple[int, ...]] = []
    real_run = onnxruntime.InferenceSession.run

    def run(self, output_names, input_feed, *args, **kwargs):
        shapes.extend(tuple(value.shape) for value in input_feed.values())
        return real_run(self, output_names, input_feed, *args, **kwargs)

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", run)
    return shapes


def as_image_tensor(*images_rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images_rgb)).float() / 255


def expected(image_rgb: np.ndarray, det_size: int, anchor: tuple[int, int], crop_size: int = 256):
    """(embedding (512,), crop (S, S, 3) RGB in [0, 1]) for the face the detector finds at `anchor`."""
    bgr = np.ascontiguousarray(image_rgb[..., ::-1])
    landmarks = reference_landmarks(bgr, det_size, anchor)
    embedding = reference_embedding(reference_crop(bgr, landmarks, 112), recognizer_weight(0))
    crop = reference_crop(bgr, landmarks, crop_size)[..., ::-1] / 255
    return embedding, crop


def assert_face(embeds: FaceEmbeds, index: int, reference: tuple[np.ndarray, np.ndarray]) -> None:
    embedding, crop = reference
    assert torch.linalg.vector_norm(embeds.arcface[index]).item() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(embeds.arcface[index].numpy(), embedding, atol=2e-3)
    # The detector's landmarks carry float32 error (~1e-3 px), which moves OpenCV's fixed-point interpolation
    # at the face's edges by a step or two.
    difference = np.abs(embeds.crops[index].numpy() - crop)
    assert difference.max() <= 2 / 255 + 1e-6
    assert (difference > 0.5 / 255).mean() < 0.05


def detections(shapes: list[tuple[int, ...]]) -> list[int]:
    """Detector input sizes among recorded runs (the recogniser's runs are 112×112)."""
    return [shape[2] for shape in shapes if shape[2:] != (112, 112)]


# --- loading ---------------------------------------------------------------------------------------------------


def test_loader_finds_the_pack_with_detector_and_recogniser(models_root: Path, analyzer) -> None:
    assert analyzer.pack_dir == models_root / "models" / "buffalo_l"
    assert set(analyzer.analysis.models) == {"detection", "recognition"}
    assert type(analyzer.analysis.det_model).__name__ == "SCRFD"
    assert type(analyzer.analysis.models["recognition"]).__name__ == "ArcFaceONNX"
    assert analyzer.detection_sizes == tuple((s, s) for s in (640, 576, 512, 448, 384, 320))
    assert DET_SIZES == (640, 576, 512, 448, 384, 320)


def test_offline_guard_catches_an_insightface_download(tmp_path: Path) -> None:
    from insightface.app import FaceAnalysis

    # A bare pack name that is not on disk makes insightface download it: the guard must stop that.
    with pytest.raises(DownloadAttempted):
        FaceAnalysis(name="not_here", root=str(tmp_path), providers=["CPUExecutionProvider"])


def test_double_nested_pack_uses_the_inner_folder(tmp_path: Path) -> None:
    inner = build_model_pack(tmp_path, "antelopev2", nested=True)
    loaded = load_face_analysis(tmp_path, "antelopev2")
    assert loaded.pack_dir == inner == tmp_path / "models" / "antelopev2" / "antelopev2"
    assert set(loaded.analysis.models) == {"detection", "recognition"}


def test_missing_pack_names_the_folder_to_fill(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    with pytest.raises(FaceModelError) as error:
        load_face_analysis(tmp_path, "buffalo_l")
    message = str(error.value)
    assert "put the buffalo_l folder with its .onnx files in" in message
    assert str(tmp_path / "models") in message
    assert not (tmp_path / "models" / "buffalo_l").exists()


def test_pack_folder_without_onnx_files_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    (folder / "readme.txt").write_text("models go here")
    with pytest.raises(FaceModelError, match=r"has no \.onnx files") as error:
        load_face_analysis(tmp_path, "buffalo_l")
    assert str(folder) in str(error.value)


def test_pack_without_recogniser_is_a_clear_error(tmp_path: Path) -> None:
    folder = build_model_pack(tmp_path, "det_only")
    (folder / "rec_synthetic.onnx").unlink()
    with pytest.raises(FaceModelError, match="No ArcFace recogniser found"):
        load_face_analysis(tmp_path, "det_only")


@pytest.mark.parametrize("name", ["", "..", "../buffalo_l", "a/b", "/abs"])
def test_pack_name_must_be_a_plain_folder_name(models_root: Path, name: str) -> None:
    with pytest.raises(ValueError, match="plain folder name"):
        load_face_analysis(models_root, name)


def test_unavailable_provider_lists_the_available_ones(models_root: Path) -> None:
    available = onnxruntime.get_available_providers()
    missing = next(p for p in ExecutionProvider if p.value not in available)
    with pytest.raises(FaceModelError) as error:
        load_face_analysis(models_root, "buffalo_l", missing)
    message = str(error.value)
    assert missing.value in message
    assert all(name in message for name in available)


def test_provider_by_name(models_root: Path) -> None:
    assert load_face_analysis(models_root, "buffalo_l", "CPU").analysis.det_model.session.get_providers() == [
        "CPUExecutionProvider"
    ]
    with pytest.raises(ValueError, match="Unknown execution provider"):
        load_face_analysis(models_root, "buffalo_l", "TPU")


def test_insightface_07_call_form_loads_without_download(
    models_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # insightface 0.7.x is not installed here: run 2.x's FaceAnalysis with the (root, relative name) call
    # the 0.7.x branch makes, from a working directory that holds no pack.
    import insightface

    monkeypatch.setattr(insightface, "__version__", "0.7.3")
    monkeypatch.chdir(tmp_path)
    loaded = load_face_analysis(models_root, "buffalo_l")
    assert Path(loaded.analysis.model_dir) == models_root / "models" / "buffalo_l"
    assert set(loaded.analysis.models) == {"detection", "recognition"}


def test_fixed_size_detector_runs_at_its_own_size_only(tmp_path: Path, detector_runs) -> None:
    build_model_pack(tmp_path, "fixed", fixed_size=512)
    loaded = load_face_analysis(tmp_path, "fixed")
    assert loaded.detection_sizes == ((512, 512),)
    with pytest.raises(NoFaceError, match="No face detected in image 0"):
        loaded.embed(as_image_tensor(np.zeros((64, 64, 3), dtype=np.uint8)))
    assert detections(detector_runs) == [512]


# --- embedding -------------------------------------------------------------------------------------------------


def test_embed_matches_an_independent_reference(analyzer, detector_runs) -> None:
    image = face_image(640, 512, [(256, 320, 40)], value=(255, 235, 205))  # coloured: catches RGB/BGR mix-ups
    embeds = analyzer.embed(as_image_tensor(image))
    assert isinstance(embeds, FaceEmbeds)
    assert embeds.arcface.shape == (1, 512) and embeds.arcface.dtype == torch.float32
    assert embeds.crops.shape == (1, 256, 256, 3) and embeds.crops.dtype == torch.float32
    assert_face(embeds, 0, expected(image, 640, (256, 320)))
    # The face is found at the first size; the recogniser runs once, on the largest face only.
    assert detections(detector_runs) == [640]
    assert detector_runs.count((1, 3, 112, 112)) == 1
    # The crop shows the bright face in its middle and black beyond it.
    np.testing.assert_allclose(embeds.crops[0, 96:160, 96:160].mean((0, 1)), [1.0, 235 / 255, 205 / 255], atol=0.01)
    assert embeds.crops[0, :16, :16].max() < 0.1


def test_crop_size_is_honoured(analyzer) -> None:
    image = face_image(640, 512, [(256, 320, 40)])
    embeds = analyzer.embed(as_image_tensor(image), crop_size=224)
    assert embeds.crops.shape == (1, 224, 224, 3)
    assert_face(embeds, 0, expected(image, 640, (256, 320), crop_size=224))
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        analyzer.embed(as_image_tensor(image), crop_size=200)


def test_a_face_too_large_at_640_is_found_at_a_smaller_size(analyzer, detector_runs) -> None:
    image = face_image(640, 640, [(320, 320, 80)])
    bgr = np.ascontiguousarray(image[..., ::-1])
    # insightface alone: no face at 640, one at 384, at the anchor the image centre maps to.
    assert len(analyzer.analysis.det_model.detect(bgr, input_size=(640, 640))[0]) == 0
    boxes, _ = analyzer.analysis.det_model.detect(bgr, input_size=(384, 384))
    np.testing.assert_allclose(boxes[:, :4], [[280, 280, 360, 360]], atol=0.01)
    detector_runs.clear()

    embeds = analyzer.embed(as_image_tensor(image))
    assert detections(detector_runs) == [640, 576, 512, 448, 384]
    assert_face(embeds, 0, expected(image, 384, (192, 192)))


def test_the_largest_face_is_embedded(analyzer) -> None:
    # The smaller face comes first in the detector's output (same score, earlier anchor).
    image = face_image(640, 640, [(160, 160, 32), (448, 448, 44)])
    embeds = analyzer.embed(as_image_tensor(image))
    assert_face(embeds, 0, expected(image, 640, (448, 448)))


def test_batch_gives_one_embedding_per_image_and_they_differ(analyzer) -> None:
    first = face_image(640, 640, [(320, 320, 40)])
    second = face_image(640, 640, [(320, 320, 80)])
    embeds = analyzer.embed(as_image_tensor(first, second))
    assert embeds.arcface.shape == (2, 512) and embeds.crops.shape == (2, 256, 256, 3)
    assert_face(embeds, 0, expected(first, 640, (320, 320)))
    assert_face(embeds, 1, expected(second, 384, (192, 192)))


def test_no_face_in_the_second_image_names_it(analyzer, detector_runs) -> None:
    face = face_image(640, 640, [(320, 320, 40)])
    black = np.zeros_like(face)
    with pytest.raises(NoFaceError) as error:
        analyzer.embed(as_image_tensor(face, black))
    message = str(error.value)
    assert message.startswith("No face detected in image 1")
    assert "larger, frontal face" in message and "crop" in message
    # Every size was tried on the black image before giving up.
    assert detections(detector_runs) == [640, *DET_SIZES]


def test_progress_and_interrupt_are_called_once_per_image(analyzer) -> None:
    images = as_image_tensor(*[face_image(640, 640, [(320, 320, 40)])] * 3)
    calls: list = []
    analyzer.embed(images, progress=lambda i, n: calls.append((i, n)), check_interrupt=lambda: calls.append("check"))
    assert calls == ["check", (1, 3), "check", (2, 3), "check", (3, 3)]

    class Interrupted(Exception):
        pass

    def interrupt_second() -> None:
        calls.append("check")
        if calls.count("check") == 2:
            raise Interrupted

    calls.clear()
    with pytest.raises(Interrupted):
        analyzer.embed(images, progress=lambda i, n: calls.append((i, n)), check_interrupt=interrupt_second)
    assert calls == ["check", (1, 3), "check"]


def test_grayscale_and_rgba_images(analyzer) -> None:
    image = face_image(640, 512, [(256, 320, 40)], value=230)
    reference = expected(image, 640, (256, 320))
    grey = torch.from_numpy(image[..., :1]).float()[None] / 255
    assert_face(analyzer.embed(grey), 0, reference)
    alpha = np.random.default_rng(0).integers(0, 256, (*image.shape[:2], 1), dtype=np.uint8)
    rgba = torch.from_numpy(np.concatenate([image, alpha], axis=-1)).float()[None] / 255
    assert_face(analyzer.embed(rgba), 0, reference)


@pytest.mark.parametrize("shape", [(640, 512, 3), (1, 640, 512, 2), (1, 3, 640, 512), (0, 64, 64, 3)])
def test_wrong_image_shapes_are_clear_errors(analyzer, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"shaped \(N, H, W, 3\)|batch is empty"):
        analyzer.embed(torch.zeros(shape))
    with pytest.raises(ValueError, match="IMAGE tensor"):
        analyzer.embed(np.zeros((1, 64, 64, 3)))


@pytest.mark.parametrize(
    ("name", "message"),
    [("buff\x00alo_l", "NUL byte or control character"), ("x" * 10_000, "too long"), ("a" * 256, "too long")],
)
def test_hostile_pack_names_are_clear_errors(models_root: Path, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        load_face_analysis(models_root, name)
    assert len(str(error.value)) < 400, "the message must not repeat a 10,000-character name"


# --- picking one face of a group photo -------------------------------------------------------------------------

# (centre x, centre y, side, colour) on 640 × 640: centres on stride-32 anchors, so the detector finds each at 640.
# Left to right: medium (x 128), largest (x 320), small (x 512); the detector orders them otherwise. The colours
# differ so that each face has its own embedding (a plain square aligns to the same crop whatever its size).
GROUP = [(320, 160, 48, (255, 255, 255)), (512, 320, 36, (205, 235, 255)), (128, 448, 40, (255, 235, 205))]
LEFT_TO_RIGHT = sorted(GROUP)


def group_photo() -> np.ndarray:
    return np.max([face_image(640, 640, [(x, y, side)], value=colour) for x, y, side, colour in GROUP], axis=0)


def reference_box(image_rgb: np.ndarray, x: int, y: int) -> list[float]:
    """The synthetic detector's box at scale 1: the centre ± half the side measured as sqrt(brightness sum)."""
    window = image_rgb[max(y - 48, 0) : y + 48, max(x - 48, 0) : x + 48].astype(np.float64) / 255
    half = np.sqrt(window.mean(axis=2).sum()) / 2
    return [x - half, y - half, x + half, y + half]


def test_detection_finds_every_face_of_the_group(analyzer) -> None:
    bgr = np.ascontiguousarray(group_photo()[..., ::-1])
    boxes, landmarks = analyzer.detect_faces(bgr)
    assert boxes.shape == (3, 5) and landmarks.shape == (3, 5, 2)
    expected_boxes = [reference_box(group_photo(), x, y) for x, y, _, _ in LEFT_TO_RIGHT]
    np.testing.assert_allclose(boxes[np.argsort(boxes[:, 0]), :4], expected_boxes, atol=0.01)
    assert boxes[:, 0].tolist() != sorted(boxes[:, 0].tolist()), "the detector's own order is not left to right"


def test_largest_is_still_the_default_in_a_group(analyzer) -> None:
    image = group_photo()
    for embeds in (analyzer.embed(as_image_tensor(image)), analyzer.embed(as_image_tensor(image), choice="largest")):
        assert_face(embeds, 0, expected(image, 640, (320, 160)))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_by_index_picks_the_ith_face_from_the_left(analyzer, index: int) -> None:
    image = group_photo()
    x, y, _, _ = LEFT_TO_RIGHT[index]
    embeds, found = analyzer.embed_and_locate(as_image_tensor(image), choice=FaceChoice.BY_INDEX, face_index=index)
    assert_face(embeds, 0, expected(image, 640, (x, y)))
    # The other faces' embeddings are far outside assert_face's tolerance (2e-3): the check tells faces apart.
    for other_x, other_y, _, _ in LEFT_TO_RIGHT:
        if (other_x, other_y) != (x, y):
            assert np.abs(embeds.arcface[0].numpy() - expected(image, 640, (other_x, other_y))[0]).max() > 0.02
    assert found[0].chosen == index
    np.testing.assert_allclose(found[0].boxes[:, 0] + found[0].boxes[:, 2], [2 * x for x, _, _, _ in LEFT_TO_RIGHT])


def test_by_index_orders_equal_centres_top_to_bottom() -> None:
    boxes = np.array([[300, 400, 340, 440], [500, 0, 540, 40], [300, 100, 340, 140], [0, 500, 60, 560]], float)
    np.testing.assert_array_equal(left_to_right(boxes), [3, 2, 0, 1])


def test_index_past_the_faces_names_the_image_and_its_count(analyzer) -> None:
    images = as_image_tensor(group_photo(), face_image(640, 640, [(320, 320, 40)]))
    analyzer.embed(images, choice=FaceChoice.BY_INDEX, face_index=0)
    with pytest.raises(ValueError, match=r"Face index 1 is past the faces found: image 1 has 1 face \(") as error:
        analyzer.embed(images, choice=FaceChoice.BY_INDEX, face_index=1)
    assert "largest" in str(error.value)
    with pytest.raises(ValueError, match="image 0 has 3 faces"):
        analyzer.embed(images, choice=FaceChoice.BY_INDEX, face_index=3)
    with pytest.raises(ValueError, match="whole number from 0"):
        analyzer.embed(images, choice=FaceChoice.BY_INDEX, face_index=-1)
    with pytest.raises(ValueError, match="Unknown face choice 'smallest'"):
        analyzer.embed(images, choice="smallest")


def test_by_index_uses_the_first_size_that_finds_faces(analyzer, detector_runs) -> None:
    image = face_image(640, 640, [(320, 320, 80)])  # found at 384 only, as in the largest-face test
    embeds = analyzer.embed(as_image_tensor(image), choice=FaceChoice.BY_INDEX, face_index=0)
    assert detections(detector_runs) == [640, 576, 512, 448, 384]
    assert_face(embeds, 0, expected(image, 384, (192, 192)))


@pytest.mark.parametrize("index", [0, 1])
def test_preview_boxes_every_face_and_highlights_the_chosen_one(analyzer, index: int) -> None:
    image = group_photo()
    _, found = analyzer.embed_and_locate(as_image_tensor(image), choice=FaceChoice.BY_INDEX, face_index=index)
    preview = draw_face_preview(as_image_tensor(image), found)
    assert preview.shape == (1, 512, 512, 3) and preview.dtype == torch.float32
    pixels = (preview[0].numpy() * 255).round().astype(int)
    scale = 512 / 640
    for number, (x, y, _, _) in enumerate(LEFT_TO_RIGHT):
        x0, y0, x1, y1 = (round(v * scale) for v in reference_box(image, x, y))
        colour = CHOSEN_BOX_COLOUR if number == index else FACE_BOX_COLOUR
        for corner in ((y0, x0), (y0, x1), (y1, x0), (y1, x1)):
            np.testing.assert_array_equal(pixels[corner], colour)
        # The chosen box is thicker: one pixel inside its corner is still box, not face.
        inside = pixels[y0 + 1, x0 + 1]
        assert (tuple(inside) == CHOSEN_BOX_COLOUR) == (number == index)
    assert CHOSEN_BOX_COLOUR != FACE_BOX_COLOUR
    assert pixels[5, 5].tolist() == [0, 0, 0], "the photo itself stays visible and unchanged away from the boxes"


def test_preview_keeps_the_aspect_at_most_512_and_small_images_as_they_are(analyzer) -> None:
    # 600 × 800: the detector sees it at 0.8, so a face centred on (400, 280) sits on anchor (320, 224).
    wide = as_image_tensor(face_image(600, 800, [(400, 280, 45)]))
    _, found = analyzer.embed_and_locate(wide)
    np.testing.assert_allclose(found[0].boxes, [[377.5, 257.5, 422.5, 302.5]], atol=0.05)
    assert draw_face_preview(wide, found).shape == (1, 384, 512, 3)
    small = torch.zeros((2, 100, 60, 1))
    empty = ImageFaces(boxes=np.zeros((0, 4)), chosen=0)
    assert draw_face_preview(small, [empty, empty]).shape == (2, 100, 60, 3)
    with pytest.raises(ValueError, match="2 images, 1 found"):
        draw_face_preview(small, [empty])
