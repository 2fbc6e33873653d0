"""Tier 1: several references combine as encoder embeddings before the projection (IPAdapter_plus's combine_embeds).

Each mode is checked against its formula written out per component, then through each adapter kind's token
builder: the on tokens are the projection of the combined embeddings, the off tokens the projection of the null (or
negative) input's first row; concat projects each reference and lines the tokens up; no combining (unfold) keeps one
set per reference, the null input matched to them (the last row repeats, extra rows are dropped).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from adapter_factories import faceid_ip_adapter, faceid_plus_v2, plain_ip_adapter
from hybrid_factories import hybrid_adapter
from safetensors.torch import save_file

from bolid_core.adapter import Source, load_adapter
from bolid_core.adapter.tokens import (
    ReferenceCombine,
    body_tokens,
    combine_embeddings,
    face_tokens,
    hybrid_face_tokens,
    image_tokens,
    match_references,
)

COMBINED = [ReferenceCombine.ADD, ReferenceCombine.SUBTRACT, ReferenceCombine.AVERAGE, ReferenceCombine.NORM_AVERAGE]


def by_hand(rows: list[torch.Tensor], mode: ReferenceCombine) -> torch.Tensor:
    """The combination of `rows` written out component by component."""
    n = len(rows)
    flat = [row.reshape(-1).tolist() for row in rows]
    out = []
    for j in range(len(flat[0])):
        values = [flat[i][j] for i in range(n)]
        if mode is ReferenceCombine.ADD:
            out.append(sum(values))
        elif mode is ReferenceCombine.SUBTRACT:
            out.append(values[0] - sum(values[1:]) / (n - 1))
        elif mode is ReferenceCombine.AVERAGE:
            out.append(sum(values) / n)
        else:
            norm = math.sqrt(sum(v * v for v in values))
            out.append(sum(v / norm for v in values) / n)
    return torch.tensor(out, dtype=torch.float64).reshape(1, *rows[0].shape)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", COMBINED)
def test_each_mode_is_its_formula(mode: ReferenceCombine) -> None:
    embeds = randn(3, 5, 7, seed=0)
    combined = combine_embeddings(embeds, mode)
    assert combined.shape == (1, 5, 7)
    torch.testing.assert_close(combined.double(), by_hand(list(embeds), mode), rtol=1e-5, atol=1e-6)
    # One reference: nothing to combine, whatever the mode (IPAdapter_plus combines only from two).
    assert torch.equal(combine_embeddings(embeds[:1], mode), embeds[:1])


def test_concat_keeps_the_references_and_norm_average_keeps_all_zero_components_at_zero() -> None:
    embeds = randn(3, 4, seed=1)
    assert torch.equal(combine_embeddings(embeds, ReferenceCombine.CONCAT), embeds)
    embeds[:, 2] = 0.0
    combined = combine_embeddings(embeds, ReferenceCombine.NORM_AVERAGE)
    assert bool(torch.isfinite(combined).all()) and combined[0, 2] == 0.0


def test_match_references_repeats_the_last_row_and_drops_extra_rows() -> None:
    rows = torch.arange(6.0).reshape(3, 2)
    assert match_references(rows, 5).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert match_references(rows, 2).tolist() == [[0, 1], [2, 3]]


def write(state: dict, path: Path):
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return load_adapter(path)


def plain_projection(state: dict, embeds: torch.Tensor) -> torch.Tensor:
    """Plain IP-Adapter tokens from the checkpoint's tensors: LayerNorm(reshape(W x + b))."""
    x = F.linear(embeds.float(), state["image_proj.proj.weight"], state["image_proj.proj.bias"])
    x = x.reshape(embeds.shape[0], 4, -1)
    return F.layer_norm(x, x.shape[-1:], state["image_proj.norm.weight"], state["image_proj.norm.bias"], eps=1e-5)


@pytest.mark.parametrize("mode", COMBINED)
def test_image_tokens_combine_the_clip_embeds_before_the_projection(tmp_path: Path, mode) -> None:
    state = plain_ip_adapter(clip_dim=64, seed=3)
    adapter = write(state, tmp_path / "ip-adapter_sdxl.safetensors")
    references, negatives = randn(3, 64, seed=4), randn(2, 64, seed=5)
    on, off = image_tokens(adapter, references, negatives, mode)
    expected_on = plain_projection(state, by_hand(list(references), mode).float())
    torch.testing.assert_close(on, expected_on, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(off, plain_projection(state, negatives[:1]), rtol=1e-4, atol=1e-4)
    # Not the old behaviour, which averaged the projected tokens.
    assert not torch.allclose(on, plain_projection(state, references).mean(0, keepdim=True), atol=1e-3)


def test_image_tokens_concat_and_per_reference(tmp_path: Path) -> None:
    state = plain_ip_adapter(clip_dim=64, seed=3)
    adapter = write(state, tmp_path / "ip-adapter_sdxl.safetensors")
    references, negatives = randn(3, 64, seed=4), randn(2, 64, seed=5)
    per_reference = [plain_projection(state, references[i : i + 1])[0] for i in range(3)]
    negative_rows = [negatives[0], negatives[1], negatives[1]]  # the last negative repeats for the third reference
    null = [plain_projection(state, row[None])[0] for row in negative_rows]

    on, off = image_tokens(adapter, references, negatives, ReferenceCombine.CONCAT)
    assert on.shape == off.shape == (1, 12, 2048)
    torch.testing.assert_close(on[0], torch.cat(per_reference), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(off[0], torch.cat(null), rtol=1e-4, atol=1e-4)

    on, off = image_tokens(adapter, references, negatives)  # unfold: no combining
    assert on.shape == off.shape == (3, 4, 2048)
    torch.testing.assert_close(on, torch.stack(per_reference), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(off, torch.stack(null), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", [*COMBINED, ReferenceCombine.CONCAT])
def test_faceid_combines_the_arcface_rows(tmp_path: Path, mode) -> None:
    adapter = write(faceid_ip_adapter(seed=6), tmp_path / "ip-adapter-faceid_sdxl.safetensors")
    project = adapter.projection(Source.FACE)
    faces = F.normalize(randn(3, 512, seed=7), dim=-1)
    on, off = face_tokens(adapter, faces, None, None, combine=mode)
    null = project(torch.zeros(1, 512))
    if mode is ReferenceCombine.CONCAT:
        expected_on = torch.cat([project(faces[i : i + 1])[0] for i in range(3)])[None]
        expected_off = null[0].repeat(3, 1)[None]
    else:
        expected_on, expected_off = project(by_hand(list(faces), mode).float()), null
    torch.testing.assert_close(on, expected_on, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(off, expected_off, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", COMBINED)
def test_faceid_plus_combines_arcface_and_the_crops_clip_features(tmp_path: Path, mode) -> None:
    state = faceid_plus_v2(context_dim=128, widths=(64, 128), clip_dim=96, depth=1)
    adapter = write(state, tmp_path / "ip-adapter-faceid-plusv2_sdxl.safetensors")
    project = adapter.projection(Source.FACE)
    faces, crops = F.normalize(randn(3, 512, seed=8), dim=-1), randn(3, 9, 96, seed=9)
    negative = randn(1, 9, 96, seed=10)
    on, off = face_tokens(adapter, faces, crops, negative, shortcut_scale=0.7, combine=mode)
    face, clip = by_hand(list(faces), mode).float(), by_hand(list(crops), mode).float()
    torch.testing.assert_close(on, project(face, clip, 0.7), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(off, project(torch.zeros(1, 512), negative, 0.7), rtol=1e-4, atol=1e-4)
    if mode is not ReferenceCombine.AVERAGE:  # averaging the crops alone would give other tokens: both combine
        assert not torch.allclose(on, project(face, crops.mean(0, keepdim=True), 0.7), atol=1e-4)


def test_faceid_plus_per_reference_matches_the_negative_to_each_face(tmp_path: Path) -> None:
    state = faceid_plus_v2(context_dim=128, widths=(64, 128), clip_dim=96, depth=1)
    adapter = write(state, tmp_path / "ip-adapter-faceid-plusv2_sdxl.safetensors")
    project = adapter.projection(Source.FACE)
    faces, crops, negatives = (
        F.normalize(randn(2, 512, seed=8), dim=-1),
        randn(2, 9, 96, seed=9),
        randn(3, 9, 96, seed=1),
    )
    on, off = face_tokens(adapter, faces, crops, negatives)
    torch.testing.assert_close(on, project(faces, crops, 1.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(off, project(torch.zeros(2, 512), negatives[:2], 1.0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", COMBINED)
def test_body_rows_combine(mode) -> None:
    adapter = hybrid_adapter(seed=1)
    bodies = randn(2, 756, seed=11)
    on, off = body_tokens(adapter, bodies, mode)
    project = adapter.projection(Source.BODY)
    torch.testing.assert_close(on, project(by_hand(list(bodies), mode).float()), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(off, project(torch.zeros(1, 756)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", COMBINED)
def test_hybrid_face_combines_arcface_and_keeps_one_shared_style_row(mode) -> None:
    adapter = hybrid_adapter(seed=2)
    project = adapter.projection(Source.FACE)
    faces, style = F.normalize(randn(2, 512, seed=12), dim=-1), randn(1, 1024, seed=13)
    on, off = hybrid_face_tokens(adapter, faces, style, None, 1.0, mode)
    face = by_hand(list(faces), mode).float()
    torch.testing.assert_close(on, project(project.embed_image(style, face)), rtol=1e-4, atol=1e-4)
    null = project(project.embed_image(torch.zeros(1, 1024), torch.zeros(1, 512)))
    torch.testing.assert_close(off, null, rtol=1e-4, atol=1e-4)
    # One style row per face: the style rows combine with the faces.
    styles = randn(2, 1024, seed=14)
    on, _ = hybrid_face_tokens(adapter, faces, styles, None, 1.0, mode)
    expected = project(project.embed_image(by_hand(list(styles), mode).float(), face))
    torch.testing.assert_close(on, expected, rtol=1e-4, atol=1e-4)


def test_hybrid_face_concat_lines_up_each_face() -> None:
    adapter = hybrid_adapter(seed=2)
    project = adapter.projection(Source.FACE)
    faces, style = F.normalize(randn(2, 512, seed=12), dim=-1), randn(1, 1024, seed=13)
    on, off = hybrid_face_tokens(adapter, faces, style, None, 1.0, ReferenceCombine.CONCAT)
    each = [project(project.embed_image(style, faces[i : i + 1]))[0] for i in range(2)]
    torch.testing.assert_close(on, torch.cat(each)[None], rtol=1e-4, atol=1e-4)
    assert off.shape == on.shape
