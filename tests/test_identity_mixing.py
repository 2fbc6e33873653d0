"""Tier 1: identity mixing (FaceStudio's e = Σ β_i·e_i), many photos of one person, and how alike they are.

Every expected value is the formula written plainly: Python loops over identities and faces, or numbers by hand.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx_factories import (
    REC_MEAN,
    REC_POOL,
    REC_SIZE,
    REC_STD,
    build_model_pack,
    face_image,
    recognizer_weight,
    reference_crop,
    reference_landmarks,
)

from bolid_core.body.body_id import BodyID
from bolid_core.identity import (
    DEFAULT_OUTLIER_BELOW,
    FaceEmbeds,
    PhotoCombine,
    combine_photos,
    face_similarity,
    mix_faces,
    mix_identities,
    mixing_ratios,
)


def unit_faces(count: int, seed: int, dim: int = 8, crop: int | None = 4, norms: bool = True) -> FaceEmbeds:
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn((count, dim), generator=generator)
    return FaceEmbeds(
        arcface=raw / raw.norm(dim=-1, keepdim=True),
        crops=torch.rand((count, crop, crop, 3), generator=generator) if crop else None,
        norms=torch.rand((count,), generator=generator) * 20 + 5 if norms else None,
    )


def weighted_faces(faces: FaceEmbeds, weights: list[float]) -> FaceEmbeds:
    return FaceEmbeds(faces.arcface, faces.crops, faces.norms, torch.tensor(weights))


def body(values: list[float], encoder: str = "enc") -> BodyID:
    return BodyID(torch.tensor([values]), 1, encoder)


def plain_sum(weights: list[float], rows: list[torch.Tensor]) -> torch.Tensor:
    total = torch.zeros_like(rows[0], dtype=torch.float64)
    for weight, row in zip(weights, rows, strict=True):
        total = total + weight * row.double()
    return total


# --- FaceEmbeds: norms, weights, mix ---------------------------------------------------------------------------


def test_mix_is_the_weighted_sum_of_the_rows() -> None:
    faces = weighted_faces(unit_faces(3, seed=0), [0.2, 0.3, 0.5])
    features = torch.randn((3, 4, 5), generator=torch.Generator().manual_seed(1))
    expected = sum(w * features[i].double() for i, w in enumerate([0.2, 0.3, 0.5]))
    mixed = faces.mix(features)
    assert mixed.shape == (1, 4, 5)
    torch.testing.assert_close(mixed[0].double(), expected, rtol=0, atol=1e-6)
    assert faces.identities == 1 and faces.faces == 3


def test_mix_leaves_unweighted_faces_as_they_are() -> None:
    faces = unit_faces(3, seed=0)
    features = torch.randn((3, 7))
    assert faces.mix(features) is features
    assert faces.identities == 3


def test_mix_refuses_features_of_another_count() -> None:
    faces = weighted_faces(unit_faces(3, seed=0), [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="one row per face"):
        faces.mix(torch.zeros((2, 7)))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("norms", torch.ones(2), r"one number per face, shaped \(3,\)"),
        ("norms", torch.tensor([1.0, float("nan"), 1.0]), "finite and non-negative"),
        ("weights", torch.tensor([0.5, 0.6, -0.1]), "finite and non-negative"),
        ("weights", torch.tensor([0.5, float("inf"), 0.0]), "finite and non-negative"),
        ("weights", torch.tensor([0.5, 0.5, 0.5]), "must sum to 1"),
        ("weights", torch.ones((3, 1)) / 3, "one number per face"),
    ],
)
def test_face_embeds_refuse_bad_norms_and_weights(field: str, value: torch.Tensor, message: str) -> None:
    faces = unit_faces(3, seed=0, norms=False)
    with pytest.raises(ValueError, match=message):
        FaceEmbeds(faces.arcface, faces.crops, **{field: value})


def test_face_embeds_refuse_non_finite_embeddings() -> None:
    arcface = torch.ones((2, 8))
    arcface[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        FaceEmbeds(arcface)


# --- mixing ratios ---------------------------------------------------------------------------------------------


def test_mixing_ratios_are_the_weights_over_their_sum() -> None:
    assert mixing_ratios([1, 3]) == pytest.approx([0.25, 0.75], rel=1e-15)
    assert mixing_ratios([0.0, 2.0, 0.5]) == pytest.approx([0.0, 0.8, 0.2], rel=1e-15)
    assert mixing_ratios([1e308, 1e308]) == pytest.approx([0.5, 0.5], rel=1e-15)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, -0.5], "cannot be negative; give 0 to leave that identity out"),
        ([1.0, float("nan")], "give a finite number"),
        ([float("inf"), 1.0], "give a finite number"),
        ([0.0, 0.0], "is 0: give at least one of them a weight above 0"),
        ([], "give one weight per identity"),
        ([1.0, "2"], "give a number"),
    ],
)
def test_mixing_ratios_refuse_bad_weights(weights: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mixing_ratios(weights)


# --- mixing identities -----------------------------------------------------------------------------------------


def test_mix_faces_is_the_weighted_sum_over_identities_and_their_faces() -> None:
    two = unit_faces(2, seed=1)  # unweighted: each face 1/2 of its identity
    one = unit_faces(1, seed=2)
    three = weighted_faces(unit_faces(3, seed=3), [0.2, 0.3, 0.5])
    betas = [2.0, 1.0, 1.0]
    mixed = mix_faces([two, one, three], betas)

    within = [[0.5, 0.5], [1.0], [0.2, 0.3, 0.5]]
    identities = [two, one, three]
    expected_weights, rows, crops = [], [], []
    for beta, identity, shares in zip(betas, identities, within, strict=True):
        for j, share in enumerate(shares):
            expected_weights.append(beta / sum(betas) * share)
            rows.append(identity.arcface[j])
            crops.append(identity.crops[j])
    torch.testing.assert_close(mixed.weights.double(), torch.tensor(expected_weights, dtype=torch.float64))
    assert expected_weights == pytest.approx([0.25, 0.25, 0.25, 0.05, 0.075, 0.125])
    torch.testing.assert_close(
        mixed.mix(mixed.arcface)[0].double(), plain_sum(expected_weights, rows), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        mixed.mix(mixed.crops)[0].double(), plain_sum(expected_weights, crops), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(mixed.norms, torch.cat([two.norms, one.norms, three.norms]))
    assert mixed.identities == 1 and mixed.faces == 6


def test_an_identity_of_weight_zero_is_left_out() -> None:
    kept, left_out = unit_faces(2, seed=1), unit_faces(1, seed=2, crop=8)
    mixed = mix_faces([kept, left_out], [1.0, 0.0])
    torch.testing.assert_close(mixed.arcface, kept.arcface)
    torch.testing.assert_close(mixed.weights, torch.tensor([0.5, 0.5]))
    assert mixed.crops.shape == (2, 4, 4, 3)  # the other crop size did not matter: that face is not used


def test_mixed_crop_sizes_are_refused_and_missing_crops_drop_all() -> None:
    with pytest.raises(ValueError, match=r"cropped at different sizes \(4×4×3, 8×8×3\).*one crop_size"):
        mix_faces([unit_faces(1, seed=1, crop=4), unit_faces(1, seed=2, crop=8)], [1.0, 1.0])
    mixed = mix_faces([unit_faces(1, seed=1), unit_faces(1, seed=2, crop=None, norms=False)], [1.0, 1.0])
    assert mixed.crops is None and mixed.norms is None


def test_mix_faces_refuses_other_embedding_sizes_and_counts() -> None:
    with pytest.raises(ValueError, match="different sizes"):
        mix_faces([unit_faces(1, seed=1, dim=8), unit_faces(1, seed=2, dim=16)], [1.0, 1.0])
    with pytest.raises(ValueError, match="one weight per identity"):
        mix_faces([unit_faces(1, seed=1)], [1.0, 1.0])


def test_mix_identities_blends_faces_and_bodies_over_their_own_identities() -> None:
    face_0, face_1 = unit_faces(1, seed=10), unit_faces(2, seed=11)
    body_0, body_2 = body([1.0, 2.0, 4.0]), body([-3.0, 0.5, 8.0])
    weights = [1.0, 2.0, 3.0, 5.0]  # slot 3 has neither a face nor a body: skipped
    face, blended = mix_identities([face_0, face_1, None, None], [body_0, None, body_2, None], weights)

    face_rows = [face_0.arcface[0], face_1.arcface[0], face_1.arcface[1]]
    face_weights = [1.0 / 3, 2.0 / 3 * 0.5, 2.0 / 3 * 0.5]
    torch.testing.assert_close(
        face.mix(face.arcface)[0].double(), plain_sum(face_weights, face_rows), atol=1e-6, rtol=0
    )
    expected_body = [(1.0 * a + 3.0 * b) / 4.0 for a, b in zip([1.0, 2.0, 4.0], [-3.0, 0.5, 8.0], strict=True)]
    assert blended.c_body[0].tolist() == pytest.approx(expected_body)
    assert expected_body == pytest.approx([-2.0, 0.875, 7.0])


def test_mix_identities_gives_none_for_a_kind_no_slot_has() -> None:
    face, blended = mix_identities([None, None], [body([1.0]), body([3.0])], [1.0, 3.0])
    assert face is None and blended.c_body.tolist() == [[2.5]]
    face, blended = mix_identities([unit_faces(1, seed=1), None], [None, None], [1.0, 3.0])
    assert blended is None and face.weights.tolist() == [1.0]


@pytest.mark.parametrize(
    ("faces", "bodies", "weights", "message"),
    [
        ([None, None], [None, None], [1.0, 1.0], "No identity to mix: connect a face"),
        ([True, None], [None, None], [1.0, -1.0], "Weight 1 is -1.0: weights cannot be negative"),
        ([True, None], [None, None], [1.0, float("nan")], "Weight 1 is nan: give a finite number"),
        ([True, None], [None, True], [0.0, 1.0], "Every weight of the identities with a face is 0"),
        ([None, True], [True, None], [0.0, 1.0], "Every weight of the identities with a body ID is 0"),
        ([True], [None, None], [1.0, 1.0], "one weight per identity"),
    ],
)
def test_mix_identities_refuses(faces: list, bodies: list, weights: list, message: str) -> None:
    faces = [unit_faces(1, seed=i) if f else None for i, f in enumerate(faces)]
    bodies = [body([1.0, 2.0]) if b else None for b in bodies]
    with pytest.raises(ValueError, match=message):
        mix_identities(faces, bodies, weights)


def test_bodies_of_other_encoders_are_refused_by_the_blend() -> None:
    with pytest.raises(ValueError, match="different body encoders"):
        mix_identities([None, None], [body([1.0], "a"), body([2.0], "b")], [1.0, 1.0])


# --- many photos of one person ---------------------------------------------------------------------------------


def test_average_weighs_every_kept_photo_equally() -> None:
    faces = unit_faces(4, seed=5)
    combined = combine_photos(faces, PhotoCombine.AVERAGE)
    assert combined.weights.tolist() == [0.25] * 4
    mean = sum(faces.arcface[i].double() for i in range(4)) / 4
    torch.testing.assert_close(combined.mix(combined.arcface)[0].double(), mean, atol=1e-6, rtol=0)

    without_1 = combine_photos(faces, "average", drop=[1])
    torch.testing.assert_close(without_1.arcface, faces.arcface[[0, 2, 3]])
    torch.testing.assert_close(without_1.crops, faces.crops[[0, 2, 3]])
    torch.testing.assert_close(without_1.norms, faces.norms[[0, 2, 3]])
    assert without_1.weights.tolist() == pytest.approx([1 / 3] * 3)


def test_norm_weighted_weighs_each_photo_by_its_raw_arcface_norm() -> None:
    faces = FaceEmbeds(unit_faces(3, seed=6).arcface, norms=torch.tensor([10.0, 20.0, 30.0]))
    combined = combine_photos(faces, PhotoCombine.NORM_WEIGHTED)
    assert combined.weights.tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    expected = (10 * faces.arcface[0].double() + 20 * faces.arcface[1] + 30 * faces.arcface[2]) / 60
    torch.testing.assert_close(combined.mix(combined.arcface)[0].double(), expected, atol=1e-6, rtol=0)
    dropped = combine_photos(faces, "norm_weighted", drop=(2,))
    assert dropped.weights.tolist() == pytest.approx([1 / 3, 2 / 3])


@pytest.mark.parametrize(
    ("faces", "mode", "drop", "message"),
    [
        (FaceEmbeds(torch.eye(2)), "norm_weighted", (), "needs each face's ArcFace norm.*BoLID Face Embed"),
        (FaceEmbeds(torch.eye(2), norms=torch.zeros(2)), "norm_weighted", (), "norm of 0"),
        (FaceEmbeds(torch.eye(2)), "average", (0, 1), "Every face was dropped"),
        (FaceEmbeds(torch.eye(2)), "average", (2,), "not one of the 2 faces"),
        (FaceEmbeds(torch.eye(2)), "median", (), "Unknown way to combine photos 'median'"),
        (FaceEmbeds(torch.eye(2), weights=torch.tensor([0.5, 0.5])), "average", (), "already one mixed identity"),
    ],
)
def test_combine_photos_refuses(faces: FaceEmbeds, mode: str, drop: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        combine_photos(faces, mode, drop=drop)


# --- how alike the photos are ----------------------------------------------------------------------------------


def test_cosine_matrix_matches_a_plain_loop() -> None:
    generator = torch.Generator().manual_seed(7)
    arcface = torch.randn((5, 16), generator=generator) * torch.tensor([[1.0], [2.0], [0.5], [3.0], [1.0]])
    report = face_similarity(FaceEmbeds(arcface))
    rows = arcface.double().tolist()
    for i in range(5):
        for j in range(5):
            dot = sum(a * b for a, b in zip(rows[i], rows[j], strict=True))
            expected = dot / (math.sqrt(sum(a * a for a in rows[i])) * math.sqrt(sum(b * b for b in rows[j])))
            assert report.cosine[i, j].item() == pytest.approx(expected, abs=1e-6)
        others = [report.cosine[i, j].item() for j in range(5) if j != i]
        assert report.mean_to_others[i].item() == pytest.approx(sum(others) / 4, abs=1e-6)


def test_the_one_different_face_is_flagged() -> None:
    same = torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.99, -0.1, 0.0]])
    other = torch.tensor([[0.0, 0.0, 1.0]])
    faces = FaceEmbeds(torch.cat([same, other]) / torch.cat([same, other]).norm(dim=-1, keepdim=True))
    report = face_similarity(faces)
    assert report.outliers == (3,)
    assert report.mean_to_others[3].item() == pytest.approx(0.0, abs=1e-7)
    assert report.mean_to_others[:3].min().item() > 0.6
    text = report.text()
    assert "Face 3 looks like a different person (mean cosine 0.00 to the others)." in text
    assert "Face 0 looks" not in text and "Face 1 looks" not in text and "Face 2 looks" not in text
    assert "4 faces" in text and "lowest: 0.00" in text


def test_a_single_face_has_no_outlier() -> None:
    report = face_similarity(unit_faces(1, seed=1))
    assert report.outliers == ()
    assert report.cosine.shape == (1, 1) and report.cosine[0, 0].item() == pytest.approx(1.0)
    assert "1 face: no other photo to compare it with." in report.text()


def test_two_strangers_are_both_flagged_and_the_report_says_so() -> None:
    report = face_similarity(FaceEmbeds(torch.eye(2)))
    assert report.outliers == (0, 1)
    assert "No two of these faces look alike" in report.text()


def test_the_report_names_what_was_left_out_and_the_weights() -> None:
    faces = FaceEmbeds(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), norms=torch.tensor([1.0, 3.0, 5.0]))
    report = face_similarity(faces, outlier_below=0.5)
    combined = combine_photos(faces, PhotoCombine.NORM_WEIGHTED, drop=report.outliers)
    text = report.text(dropped=report.outliers, weights=combined.weights)
    assert "Left out: face 2." in text and "Weights: face 0: 0.25, face 1: 0.75." in text


def test_the_default_threshold_sits_between_strangers_and_one_person() -> None:
    assert 0.0 < DEFAULT_OUTLIER_BELOW < 0.4


@pytest.mark.parametrize("threshold", [float("nan"), 1.5, -2.0, "0.3"])
def test_outlier_threshold_must_be_a_cosine(threshold) -> None:
    with pytest.raises(ValueError, match="outlier_below"):
        face_similarity(unit_faces(2, seed=1), threshold)


# --- the raw ArcFace norm from the face analyser ---------------------------------------------------------------


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory: pytest.TempPathFactory):
    import insightface.utils.storage

    from bolid_core.identity.face import ExecutionProvider, load_face_analysis

    def refuse(*args, **kwargs):
        raise AssertionError("network or download attempted")

    root = tmp_path_factory.mktemp("insightface")
    build_model_pack(root, "buffalo_l")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(insightface.utils.storage, "download_file", refuse)
        yield load_face_analysis(Path(root), "buffalo_l", ExecutionProvider.CPU)


def raw_arcface(crop_bgr_112: np.ndarray) -> np.ndarray:
    """The synthetic recogniser's output before any normalisation: pooled, standardised pixels times its weight."""
    rgb = crop_bgr_112[..., ::-1].astype(np.float64)
    blob = ((rgb - REC_MEAN) / REC_STD).transpose(2, 0, 1)
    side = REC_SIZE // REC_POOL
    pooled = blob.reshape(3, side, REC_POOL, side, REC_POOL).mean(axis=(2, 4))
    return pooled.reshape(-1) @ recognizer_weight(0).astype(np.float64)


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")
def test_face_embed_keeps_the_raw_arcface_norms(analyzer) -> None:
    anchors = [(256, 320), (288, 352)]
    images = [face_image(640, 512, [(256, 320, 40)]), face_image(640, 512, [(288, 352, 36)], value=(255, 235, 205))]
    embeds = analyzer.embed(torch.from_numpy(np.stack(images)).float() / 255)
    assert embeds.norms is not None and embeds.norms.shape == (2,)
    for index, (image, anchor) in enumerate(zip(images, anchors, strict=True)):
        bgr = np.ascontiguousarray(image[..., ::-1])
        raw = raw_arcface(reference_crop(bgr, reference_landmarks(bgr, 640, anchor), 112))
        assert embeds.norms[index].item() == pytest.approx(np.linalg.norm(raw), rel=2e-3)
        np.testing.assert_allclose(
            (embeds.arcface[index] * embeds.norms[index]).numpy(), raw, atol=2e-3 * np.abs(raw).max()
        )
    assert abs(embeds.norms[0].item() - embeds.norms[1].item()) > 1e-3  # two different faces, two norms
