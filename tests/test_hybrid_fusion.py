"""Tier 1: FaceStudio's hybrid identity fusion and text prior in our adapter format, against plain formulas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hybrid_factories import hybrid_adapter, hybrid_spec
from safetensors import safe_open
from safetensors.torch import save_file

from bolid_core.adapter import (
    AdapterFormatError,
    AdapterKind,
    AdapterSpec,
    ClipInput,
    Source,
    load_adapter,
    new_bolid_adapter,
    save_adapter,
)
from bolid_core.adapter.tokens import face_tokens, hybrid_face_tokens

CLIP, FACE, TEXT, FUSION, TOKENS, CONTEXT = 1024, 512, 1280, 64, 4, 2048


@pytest.fixture(scope="module")
def adapter():
    return hybrid_adapter(seed=3, image=False, body=False)


def face_state(adapter) -> dict[str, torch.Tensor]:
    prefix = "projections.face."
    return {key[len(prefix) :]: value for key, value in adapter.state_dict().items() if key.startswith(prefix)}


# --- the formulas written plainly from the tensors -------------------------------------------------------------


def fuse_plain(state, clip_part: torch.Tensor, arcface: torch.Tensor) -> torch.Tensor:
    """fusion(c ‖ f) = W[:, :clip_dim] c + W[:, clip_dim:] f + b."""
    weight, bias = state["fusion.weight"], state["fusion.bias"]
    return clip_part @ weight[:, :CLIP].T + arcface @ weight[:, CLIP:].T + bias


def prior_plain(state, text: torch.Tensor) -> torch.Tensor:
    mean = text.mean(-1, keepdim=True)
    var = ((text - mean) ** 2).mean(-1, keepdim=True)
    normed = (text - mean) / torch.sqrt(var + 1e-5) * state["prior.net.0.weight"] + state["prior.net.0.bias"]
    hidden = normed @ state["prior.net.1.weight"].T + state["prior.net.1.bias"]
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / 2**0.5))  # exact GELU
    return hidden @ state["prior.net.3.weight"].T + state["prior.net.3.bias"]


def tokens_plain(state, identity: torch.Tensor) -> torch.Tensor:
    flat = identity @ state["to_tokens.proj.weight"].T + state["to_tokens.proj.bias"]
    tokens = flat.reshape(identity.shape[0], TOKENS, CONTEXT)
    mean = tokens.mean(-1, keepdim=True)
    var = ((tokens - mean) ** 2).mean(-1, keepdim=True)
    return (tokens - mean) / torch.sqrt(var + 1e-5) * state["to_tokens.norm.weight"] + state["to_tokens.norm.bias"]


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --- fusion ---------------------------------------------------------------------------------------------------


def test_swapping_the_face_changes_only_what_the_arcface_part_feeds(adapter) -> None:
    projection, state = adapter.projection(Source.FACE), face_state(adapter)
    weight, bias = state["fusion.weight"], state["fusion.bias"]
    style = randn(1, CLIP, seed=1)
    face_1, face_2 = randn(1, FACE, seed=2), randn(1, FACE, seed=3)
    e_1, e_2 = projection.embed_image(style, face_1), projection.embed_image(style, face_2)

    torch.testing.assert_close(e_1 - e_2, (face_1 - face_2) @ weight[:, CLIP:].T)
    style_part = style @ weight[:, :CLIP].T + bias
    torch.testing.assert_close(e_1 - face_1 @ weight[:, CLIP:].T, style_part)
    torch.testing.assert_close(e_2 - face_2 @ weight[:, CLIP:].T, style_part)
    torch.testing.assert_close(e_1, fuse_plain(state, style, face_1))
    assert (e_1 - e_2).abs().max() > 1e-2  # the face does move the embedding


def test_text_and_image_branches_share_one_fusion_tensor(adapter, tmp_path: Path) -> None:
    projection, state = adapter.projection(Source.FACE), face_state(adapter)
    fusion_weights = [name for name, _ in adapter.named_parameters() if "fusion" in name and name.endswith("weight")]
    assert fusion_weights == ["projections.face.fusion.weight"]

    seen = []
    hook = projection.fusion.register_forward_hook(lambda module, args, out: seen.append(module.weight.data_ptr()))
    style, text, face = randn(1, CLIP, seed=4), randn(1, TEXT, seed=5), randn(1, FACE, seed=6)
    try:
        e_i, e_t = projection.embed_image(style, face), projection.embed_text(text, face)
    finally:
        hook.remove()
    assert seen == [projection.fusion.weight.data_ptr()] * 2
    torch.testing.assert_close(e_t, fuse_plain(state, prior_plain(state, text), face))

    path = save_adapter(adapter, tmp_path / "hybrid.safetensors")
    with safe_open(str(path), framework="pt") as file:
        assert [key for key in file.keys() if "fusion" in key and key.endswith("weight")] == fusion_weights

    changed = hybrid_adapter(seed=3, image=False, body=False)
    changed_projection = changed.projection(Source.FACE)
    delta = randn(FUSION, CLIP + FACE, seed=7) * 0.01
    with torch.no_grad():
        changed_projection.fusion.weight.add_(delta)
    prior_out = prior_plain(state, text)
    torch.testing.assert_close(
        changed_projection.embed_image(style, face) - e_i, style @ delta[:, :CLIP].T + face @ delta[:, CLIP:].T
    )
    torch.testing.assert_close(
        changed_projection.embed_text(text, face) - e_t, prior_out @ delta[:, :CLIP].T + face @ delta[:, CLIP:].T
    )


@pytest.mark.parametrize("image_share", [0.0, 0.3, 1.0])
def test_blend_through_hybrid_face_tokens_is_the_weighted_sum(adapter, image_share: float) -> None:
    state = face_state(adapter)
    faces = randn(2, FACE, seed=8)
    style, text = randn(1, CLIP, seed=9), randn(1, TEXT, seed=10)
    on, off = hybrid_face_tokens(adapter, faces, style, text, image_share)

    e_i = fuse_plain(state, style.expand(2, -1), faces)
    e_t = fuse_plain(state, prior_plain(state, text).expand(2, -1), faces)
    expected_on = tokens_plain(state, image_share * e_i + (1 - image_share) * e_t)
    null_e_i = fuse_plain(state, torch.zeros(2, CLIP), torch.zeros(2, FACE))
    null_e_t = fuse_plain(state, prior_plain(state, torch.zeros(2, TEXT)), torch.zeros(2, FACE))
    expected_off = tokens_plain(state, image_share * null_e_i + (1 - image_share) * null_e_t)
    assert on.shape == off.shape == (2, TOKENS, CONTEXT)
    torch.testing.assert_close(on, expected_on)
    torch.testing.assert_close(off, expected_off)


def test_one_style_alone_is_its_branch(adapter) -> None:
    state = face_state(adapter)
    faces = randn(3, FACE, seed=11)
    style, text = randn(3, CLIP, seed=12), randn(1, TEXT, seed=13)
    image_on, image_off = hybrid_face_tokens(adapter, faces, style, None, 0.2)
    text_on, text_off = hybrid_face_tokens(adapter, faces, None, text, 0.9)
    torch.testing.assert_close(image_on, tokens_plain(state, fuse_plain(state, style, faces)))
    torch.testing.assert_close(image_off, tokens_plain(state, fuse_plain(state, torch.zeros(3, CLIP), faces * 0)))
    expected_text = fuse_plain(state, prior_plain(state, text).expand(3, -1), faces)
    torch.testing.assert_close(text_on, tokens_plain(state, expected_text))
    expected_null_text = fuse_plain(state, prior_plain(state, torch.zeros(3, TEXT)), faces * 0)
    torch.testing.assert_close(text_off, tokens_plain(state, expected_null_text))
    assert (image_on - text_on).abs().max() > 1e-3


# --- the file format ------------------------------------------------------------------------------------------


def test_version_2_round_trip_is_bit_exact(tmp_path: Path) -> None:
    adapter = hybrid_adapter(seed=4)
    path = save_adapter(adapter, tmp_path / "hybrid.safetensors")
    with safe_open(str(path), framework="pt") as file:
        assert file.metadata()["format_version"] == "2"
    loaded = load_adapter(path)
    assert loaded.spec == adapter.spec == hybrid_spec()
    assert loaded.spec.has_fusion and loaded.spec.fusion_dim == FUSION and loaded.spec.text_dim == TEXT
    original, reloaded = adapter.state_dict(), loaded.state_dict()
    assert list(original) == list(reloaded)
    for key in original:
        assert torch.equal(original[key], reloaded[key]), key
    faces, style, text = randn(2, FACE, seed=14), randn(1, CLIP, seed=15), randn(1, TEXT, seed=16)
    saved_on, saved_off = hybrid_face_tokens(adapter, faces, style, text, 0.5)
    loaded_on, loaded_off = hybrid_face_tokens(loaded, faces, style, text, 0.5)
    assert torch.equal(saved_on, loaded_on) and torch.equal(saved_off, loaded_off)


def test_prior_is_optional() -> None:
    adapter = hybrid_adapter(seed=5, image=False, body=False, text_prior=False)
    assert adapter.projection(Source.FACE).prior is None
    assert not any("prior" in key for key in adapter.state_dict())
    with pytest.raises(AdapterFormatError, match=r"no text prior.*connect a style image"):
        hybrid_face_tokens(adapter, randn(1, FACE, seed=0), None, randn(1, TEXT, seed=1), 0.0)


def v1_metadata() -> dict[str, str]:
    """Exactly what version 1 of the pack wrote for an image + body adapter."""
    spec = {
        "kind": "bolid", "context_dim": 64, "layer_widths": [32, 64], "tokens": {"image": 4, "body": 2},
        "clip_dim": 48, "clip_input": "image_embeds", "face_dim": None, "body_dim": 20, "extra": {},
    }  # fmt: skip
    return {"format": "bolid-adapter", "format_version": "1", "base_family": "SD1.5", "spec": json.dumps(spec)}


def test_version_1_file_loads(tmp_path: Path) -> None:
    spec = AdapterSpec(
        AdapterKind.BOLID, 64, (32, 64), {Source.IMAGE: 4, Source.BODY: 2},
        clip_dim=48, clip_input=ClipInput.EMBEDS, body_dim=20,
    )  # fmt: skip
    tensors = {key: torch.randn(value.shape) for key, value in new_bolid_adapter(spec).state_dict().items()}
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata=v1_metadata())
    loaded = load_adapter(tmp_path / "v1.safetensors")
    assert loaded.spec == spec and loaded.spec.fusion_dim is None and not loaded.spec.has_fusion
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, tensors[key]), key


def test_newer_version_is_refused(tmp_path: Path) -> None:
    adapter = hybrid_adapter(seed=6, image=False, body=False, text_prior=False)
    metadata = {**adapter.spec.to_metadata(), "format_version": "3"}
    save_file(adapter.state_dict(), str(tmp_path / "v3.safetensors"), metadata=metadata)
    refusal = r"v3\.safetensors is BoLID adapter format version 3; this pack reads version 1 or 2\."
    with pytest.raises(AdapterFormatError, match=refusal):
        load_adapter(tmp_path / "v3.safetensors")


def test_face_spec_without_fusion_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AdapterFormatError, match=r"face source fuses .* lacks fusion_dim"):
        AdapterSpec(
            AdapterKind.BOLID, 2048, (64,), {Source.FACE: 4},
            clip_dim=1024, clip_input=ClipInput.EMBEDS, face_dim=512,
        )  # fmt: skip
    with pytest.raises(AdapterFormatError, match="reads CLIP-vision image_embeds"):
        AdapterSpec(
            AdapterKind.BOLID, 2048, (64,), {Source.FACE: 4},
            clip_dim=1280, clip_input=ClipInput.HIDDEN, face_dim=512, fusion_dim=64,
        )  # fmt: skip
    with pytest.raises(AdapterFormatError, match="no face input to fuse"):
        AdapterSpec(AdapterKind.BOLID, 2048, (64,), {Source.BODY: 4}, body_dim=756, fusion_dim=64)

    adapter = hybrid_adapter(seed=7, image=False, body=False, text_prior=False)
    metadata = adapter.spec.to_metadata()
    fields = json.loads(metadata["spec"])
    del fields["fusion_dim"]
    save_file(adapter.state_dict(), str(tmp_path / "nofusion.safetensors"), {**metadata, "spec": json.dumps(fields)})
    with pytest.raises(AdapterFormatError, match=r"nofusion\.safetensors: .*lacks fusion_dim"):
        load_adapter(tmp_path / "nofusion.safetensors")


# --- clear errors ---------------------------------------------------------------------------------------------


def test_face_tokens_on_a_hybrid_adapter_points_at_hybrid_face_tokens(adapter) -> None:
    with pytest.raises(AdapterFormatError, match="hybrid_face_tokens"):
        face_tokens(adapter, randn(1, FACE, seed=0), None, None)


def test_hybrid_face_tokens_errors(adapter) -> None:
    face = randn(2, FACE, seed=0)
    style, text = randn(1, CLIP, seed=1), randn(1, TEXT, seed=2)
    with pytest.raises(ValueError, match=r"connect a style image \(clip_vision \+ image\) or a style prompt"):
        hybrid_face_tokens(adapter, face, None, None, 0.5)
    for share in (float("nan"), float("inf"), -0.1, 1.5):
        with pytest.raises(ValueError, match="image share"):
            hybrid_face_tokens(adapter, face, style, text, share)
    with pytest.raises(AdapterFormatError, match="CLIP-vision image_embeds of width 1024; got 1280"):
        hybrid_face_tokens(adapter, face, randn(1, 1280, seed=3), None, 1.0)
    with pytest.raises(AdapterFormatError, match="face embeddings of width 512; got 128"):
        hybrid_face_tokens(adapter, randn(2, 128, seed=4), style, None, 1.0)
    with pytest.raises(AdapterFormatError, match="pooled CLIP text embeddings of width 1280; got 768"):
        hybrid_face_tokens(adapter, face, None, randn(1, 768, seed=5), 0.0)
    with pytest.raises(ValueError, match="one row per face"):
        hybrid_face_tokens(adapter, face, randn(3, CLIP, seed=6), None, 1.0)
    plain = new_bolid_adapter(AdapterSpec(AdapterKind.BOLID, 64, (32,), {Source.BODY: 2}, body_dim=20))
    with pytest.raises(AdapterFormatError, match="no hybrid face source"):
        hybrid_face_tokens(plain, face, style, None, 1.0)
