"""Tier 1: condition dropout (rates, exact resume, independence, null inputs) and FaceStudio's reconstruction inputs."""

from __future__ import annotations

import math

import pytest
import torch

from bolid_core.train.dropout import (
    RECONSTRUCTION_FILL,
    ConditionDropout,
    ConditionSource,
    drop_conditions,
    faceid_reconstruction_inputs,
)

IMAGE, FACE, BODY, TEXT = ConditionSource.IMAGE, ConditionSource.FACE, ConditionSource.BODY, ConditionSource.TEXT


def test_defaults_are_facestudio_rates() -> None:
    dropout = ConditionDropout()
    assert dropout.rate(IMAGE) == 0.64  # FaceStudio §4.1, style image
    assert dropout.rate(FACE) == 0.1  # FaceStudio §4.1, face


def test_empirical_rates_match_configured_rates() -> None:
    rates = {"image": 0.64, "face": 0.1, "body": 0.3, "text": 0.0}
    dropout = ConditionDropout(**rates)
    draws = 40_000
    dropped = dropout.draw(draws, torch.Generator().manual_seed(11))
    for source in ConditionSource:
        p = rates[source.value]
        tolerance = 5 * math.sqrt(p * (1 - p) / draws) + 1e-9  # five standard errors
        assert abs(dropped[source].float().mean().item() - p) <= tolerance, source
    always = ConditionDropout(image=1.0, face=1.0, body=1.0, text=1.0).draw(100, torch.Generator().manual_seed(0))
    assert all(mask.all() for mask in always.values())


def test_sources_and_samples_are_independent() -> None:
    dropout = ConditionDropout(image=0.5, face=0.3, body=0.4, text=0.2)
    draws = 40_000
    dropped = dropout.draw(draws, torch.Generator().manual_seed(12))
    sources = list(ConditionSource)
    for i, a in enumerate(sources):
        for b in sources[i + 1 :]:
            joint = (dropped[a] & dropped[b]).float().mean().item()
            expected = dropout.rate(a) * dropout.rate(b)
            assert abs(joint - expected) <= 5 * math.sqrt(expected * (1 - expected) / draws), (a, b)
    image = dropped[IMAGE]
    neighbours = (image[:-1] & image[1:]).float().mean().item()  # consecutive samples
    assert abs(neighbours - 0.25) <= 5 * math.sqrt(0.25 * 0.75 / draws)


def test_one_rate_does_not_move_the_others_draws() -> None:
    first = ConditionDropout(image=0.64, face=0.1).draw(500, torch.Generator().manual_seed(13))
    second = ConditionDropout(image=0.2, face=0.1).draw(500, torch.Generator().manual_seed(13))
    assert not torch.equal(first[IMAGE], second[IMAGE])
    for source in (FACE, BODY, TEXT):
        assert torch.equal(first[source], second[source])


def test_draws_resume_exactly_from_generator_state() -> None:
    dropout = ConditionDropout()
    generator = torch.Generator().manual_seed(14)
    dropout.draw(8, generator)
    saved = generator.get_state()
    continued = [dropout.draw(8, generator) for _ in range(3)]
    resumed_generator = torch.Generator()
    resumed_generator.set_state(saved)
    resumed = [dropout.draw(8, resumed_generator) for _ in range(3)]
    for a, b in zip(continued, resumed, strict=True):
        assert all(torch.equal(a[s], b[s]) for s in ConditionSource)
    assert not all(torch.equal(continued[0][s], continued[1][s]) for s in ConditionSource)


def test_null_inputs_substituted_exactly() -> None:
    generator = torch.Generator().manual_seed(15)
    image = torch.randn((4, 16, 8), generator=generator)
    face = torch.randn((4, 32), generator=generator)
    hidden, pooled = torch.randn((4, 5, 6), generator=generator), torch.randn((4, 3), generator=generator)
    empty_hidden, empty_pooled = torch.randn((5, 6), generator=generator), torch.randn((1, 3), generator=generator)
    dropped = {
        IMAGE: torch.tensor([True, False, True, False]),
        FACE: torch.tensor([False, False, False, True]),
        TEXT: torch.tensor([False, True, True, False]),
    }
    result = drop_conditions(
        {IMAGE: image, FACE: face, TEXT: (hidden, pooled)}, dropped, {TEXT: (empty_hidden, empty_pooled)}
    )
    for b in range(4):
        assert torch.equal(result[IMAGE][b], torch.zeros(16, 8) if dropped[IMAGE][b] else image[b])
        assert torch.equal(result[FACE][b], torch.zeros(32) if dropped[FACE][b] else face[b])
        assert torch.equal(result[TEXT][0][b], empty_hidden if dropped[TEXT][b] else hidden[b])
        assert torch.equal(result[TEXT][1][b], empty_pooled[0] if dropped[TEXT][b] else pooled[b])
    custom = drop_conditions({IMAGE: image}, {IMAGE: dropped[IMAGE]}, {IMAGE: torch.full((16, 8), 3.0)})
    assert torch.equal(custom[IMAGE][0], torch.full((16, 8), 3.0)) and torch.equal(custom[IMAGE][1], image[1])


def test_calling_dropout_draws_and_applies() -> None:
    face = torch.randn((64, 4))
    body = torch.randn((64, 6))
    dropout = ConditionDropout(face=0.5, body=0.5)
    result, dropped = dropout({FACE: face, BODY: body}, torch.Generator().manual_seed(16))
    expected = dropout.draw(64, torch.Generator().manual_seed(16))
    for source, value in ((FACE, face), (BODY, body)):
        assert torch.equal(dropped[source], expected[source])
        assert torch.equal(result[source], torch.where(expected[source][:, None], torch.zeros(()), value))


def test_dropout_errors() -> None:
    with pytest.raises(ValueError, match="empty prompt"):
        drop_conditions({TEXT: torch.zeros((2, 3))}, {TEXT: torch.tensor([True, False])})
    with pytest.raises(ValueError, match="null input is shaped"):
        drop_conditions({FACE: torch.zeros((2, 3))}, {FACE: torch.tensor([True, False])}, {FACE: torch.zeros(4)})
    with pytest.raises(ValueError, match="mask must be"):
        drop_conditions({FACE: torch.zeros((2, 3))}, {FACE: torch.tensor([True, False, True])})
    with pytest.raises(ValueError, match="disagree"):
        ConditionDropout()({FACE: torch.zeros((2, 3)), BODY: torch.zeros((3, 3))}, torch.Generator())
    for bad in (float("nan"), 1.5, -0.1):
        with pytest.raises(ValueError, match="face condition"):
            ConditionDropout(face=bad)


def plain_box_region(box, height, width):
    """Pixel (row, col) covers [col, col+1) x [row, row+1); it is in the region if that square overlaps the box."""
    x0, y0, x1, y1 = box
    return [
        [(col + 1 > x0 and col < x1 and row + 1 > y0 and row < y1) for col in range(width)] for row in range(height)
    ]


@pytest.mark.parametrize(
    "box", [(3.0, 2.0, 9.0, 7.0), (2.4, 1.6, 8.2, 6.9), (-5.0, -1.0, 4.5, 3.0), (10.0, 8.0, 40, 40)]
)
def test_reconstruction_inputs_from_a_box(box) -> None:
    image = torch.rand((11, 13, 3), generator=torch.Generator().manual_seed(17))
    result = faceid_reconstruction_inputs(image, face_box=box)
    inside = torch.tensor(plain_box_region(box, 11, 13))
    assert torch.equal(result.face_region, inside)
    assert (result.style_image[inside] == RECONSTRUCTION_FILL).all()
    assert torch.equal(result.style_image[~inside], image[~inside])
    rows, cols = inside.any(dim=1).nonzero().flatten(), inside.any(dim=0).nonzero().flatten()
    expected_crop = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    assert torch.equal(result.face_crop, expected_crop)
    assert result.crop_box == (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def test_reconstruction_box_expansion_and_fill() -> None:
    image = torch.rand((20, 20, 3), generator=torch.Generator().manual_seed(18))
    result = faceid_reconstruction_inputs(image, face_box=(8, 8, 12, 12), expand=0.5, fill=0.0)
    inside = torch.tensor(plain_box_region((6, 6, 14, 14), 20, 20))
    assert torch.equal(result.face_region, inside)
    assert (result.style_image[inside] == 0.0).all()
    assert torch.equal(result.face_crop, image[6:14, 6:14])


def test_reconstruction_inputs_from_a_mask() -> None:
    image = torch.rand((12, 10, 3), generator=torch.Generator().manual_seed(19))
    mask = torch.zeros((12, 10))
    mask[3:6, 2:5] = 1.0
    mask[6, 7] = 0.8
    mask[1, 1] = 0.4  # at or below 0.5: not face
    original = image.clone()
    result = faceid_reconstruction_inputs(image, face_mask=mask)
    inside = mask > 0.5
    assert torch.equal(result.face_region, inside)
    assert (result.style_image[inside] == RECONSTRUCTION_FILL).all()
    assert torch.equal(result.style_image[~inside], image[~inside])
    assert torch.equal(result.face_crop, image[3:7, 2:8])
    assert result.crop_box == (2, 3, 8, 7)
    assert torch.equal(image, original)  # the input image is not modified in place


def test_reconstruction_errors() -> None:
    image = torch.rand((8, 8, 3))
    with pytest.raises(ValueError, match="exactly one"):
        faceid_reconstruction_inputs(image)
    with pytest.raises(ValueError, match="exactly one"):
        faceid_reconstruction_inputs(image, face_box=(1, 1, 3, 3), face_mask=torch.ones((8, 8)))
    with pytest.raises(ValueError, match="outside"):
        faceid_reconstruction_inputs(image, face_box=(20, 20, 30, 30))
    with pytest.raises(ValueError, match="x1 > x0"):
        faceid_reconstruction_inputs(image, face_box=(5, 1, 3, 3))
    with pytest.raises(ValueError, match="4 finite numbers"):
        faceid_reconstruction_inputs(image, face_box=(1, float("nan"), 3, 3))
    with pytest.raises(ValueError, match="mask is empty"):
        faceid_reconstruction_inputs(image, face_mask=torch.zeros((8, 8)))
    with pytest.raises(ValueError, match="shaped like the image"):
        faceid_reconstruction_inputs(image, face_mask=torch.ones((4, 8)))
    with pytest.raises(ValueError, match="fill value"):
        faceid_reconstruction_inputs(image, face_box=(1, 1, 3, 3), fill=2.0)
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        faceid_reconstruction_inputs(image[None], face_box=(1, 1, 3, 3))
