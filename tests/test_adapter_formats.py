"""Tier 1: adapter files (IP-Adapter layouts and ours) load, detect and compute as their tensors say."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from adapter_factories import faceid_plus_v2, nested, plain_ip_adapter, plus_ip_adapter
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
from bolid_core.adapter.tokens import (
    ReferenceCombine,
    body_tokens,
    combine_embeddings,
    face_tokens,
    image_tokens,
    side_by_side,
)
from bolid_core.attention import SourceKV, adapter_attention


def write_safetensors(state: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


# --- an independent computation of FaceID-Plus-v2, written from the checkpoint's tensors --------------


def ln(x, state, prefix):
    return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-5)


def perceiver_reference(state, prefix, x, latents, depth):
    x = F.linear(x, state[f"{prefix}proj_in.weight"], state[f"{prefix}proj_in.bias"])
    for layer in range(depth):
        base = f"{prefix}layers.{layer}"
        xn, ln_lat = ln(x, state, f"{base}.0.norm1"), ln(latents, state, f"{base}.0.norm2")
        q = F.linear(ln_lat, state[f"{base}.0.to_q.weight"])
        k, v = F.linear(torch.cat([xn, ln_lat], 1), state[f"{base}.0.to_kv.weight"]).chunk(2, -1)
        heads = q.shape[-1] // 64
        outs = []
        for h in range(heads):
            cols = slice(64 * h, 64 * (h + 1))
            scale = 1 / math.sqrt(math.sqrt(64))  # applied to q and to k, as the original does
            weights = torch.softmax((q[..., cols] * scale) @ (k[..., cols] * scale).transpose(1, 2), -1)
            outs.append(weights @ v[..., cols])
        latents = latents + F.linear(torch.cat(outs, -1), state[f"{base}.0.to_out.weight"])
        hidden = F.gelu(F.linear(ln(latents, state, f"{base}.1.0"), state[f"{base}.1.1.weight"]))
        latents = latents + F.linear(hidden, state[f"{base}.1.3.weight"])
    out = F.linear(latents, state[f"{prefix}proj_out.weight"], state[f"{prefix}proj_out.bias"])
    return ln(out, state, f"{prefix}norm_out")


def faceid_plus_v2_reference(state, face, clip_hidden, context_dim, shortcut_scale, depth):
    hidden = F.gelu(F.linear(face, state["image_proj.proj.0.weight"], state["image_proj.proj.0.bias"]))
    x = F.linear(hidden, state["image_proj.proj.2.weight"], state["image_proj.proj.2.bias"])
    x = ln(x.reshape(face.shape[0], -1, context_dim), state, "image_proj.norm")
    return x + shortcut_scale * perceiver_reference(state, "image_proj.perceiver_resampler.", clip_hidden, x, depth)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_faceid_plus_v2_matches_independent_computation(tmp_path: Path, suffix: str) -> None:
    state = faceid_plus_v2(context_dim=128, widths=(64, 128), clip_dim=96, depth=2)
    path = tmp_path / f"ip-adapter-faceid-plusv2_sdxl{suffix}"
    if suffix == ".bin":
        torch.save(nested(state), path)
    else:
        write_safetensors(state, path)
    adapter = load_adapter(path)
    assert adapter.spec.kind is AdapterKind.FACEID_PLUS and adapter.spec.tokens == {Source.FACE: 4}
    assert adapter.spec.layer_widths == (64, 128) and adapter.spec.clip_dim == 96 and adapter.spec.face_dim == 512

    g = torch.Generator().manual_seed(1)
    face = F.normalize(torch.randn(2, 512, generator=g), dim=-1)
    clip_hidden = torch.randn(2, 9, 96, generator=g)
    tokens_on, tokens_off = face_tokens(adapter, face, clip_hidden, clip_hidden[:1] * 0, shortcut_scale=1.5)
    expected = faceid_plus_v2_reference(state, face, clip_hidden, 128, 1.5, depth=2)
    torch.testing.assert_close(tokens_on, expected, rtol=1e-4, atol=1e-4)
    assert tokens_off.shape == tokens_on.shape

    # One attention layer: the adapter term from our K/V vs. K/V straight from ip_adapter.3.to_k_ip/to_v_ip.
    query = torch.randn(2, 10, 128, generator=g)
    kv = adapter.kv(1, Source.FACE)
    ours = adapter_attention(
        query, [SourceKV(kv.to_k(tokens_on), kv.to_v(tokens_on), torch.tensor([0.8, 0.8]))], heads=2
    )
    k = F.linear(expected, state["ip_adapter.3.to_k_ip.weight"])
    v = F.linear(expected, state["ip_adapter.3.to_v_ip.weight"])
    direct = torch.zeros_like(query)
    for h in range(2):
        cols = slice(64 * h, 64 * (h + 1))
        weights = torch.softmax(query[..., cols] @ k[..., cols].transpose(1, 2) / 8.0, -1)
        direct[..., cols] = 0.8 * weights @ v[..., cols]
    torch.testing.assert_close(ours, direct, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("context_dim", "name", "shortcut"),
    [
        (2048, "ip-adapter-faceid-plus_sdxl.bin", True),  # SDXL: only v2 was published, whatever the name
        (2048, "my-face-adapter.safetensors", True),
        (128, "faceid_plus.safetensors", True),  # a width no v1 was made for
        (768, "ip-adapter-faceid-plus_sd15.bin", False),  # SD1.5's v1 and v2 share their tensors
        (768, "ip-adapter-faceid-plusv2_sd15.bin", True),
    ],
)
def test_faceid_plus_shortcut_is_decided_by_the_tensors(tmp_path: Path, context_dim, name, shortcut) -> None:
    widths = (64, 128) if context_dim == 128 else (128, 128)
    state = faceid_plus_v2(context_dim=context_dim, widths=widths, clip_dim=96, depth=1, tokens=2)
    path = tmp_path / name
    if name.endswith(".bin"):
        torch.save(nested(state), path)
    else:
        write_safetensors(state, path)
    adapter = load_adapter(path)
    g = torch.Generator().manual_seed(2)
    face = F.normalize(torch.randn(1, 512, generator=g), dim=-1)
    clip_hidden = torch.randn(1, 5, 96, generator=g)
    tokens_on, _ = face_tokens(adapter, face, clip_hidden, clip_hidden * 0, shortcut_scale=0.5)
    with_shortcut = faceid_plus_v2_reference(state, face, clip_hidden, context_dim, 0.5, depth=1)
    hidden = F.gelu(F.linear(face, state["image_proj.proj.0.weight"], state["image_proj.proj.0.bias"]))
    arcface_tokens = ln(
        F.linear(hidden, state["image_proj.proj.2.weight"], state["image_proj.proj.2.bias"]).reshape(1, 2, -1),
        state, "image_proj.norm",
    )  # fmt: skip
    refined_only = perceiver_reference(state, "image_proj.perceiver_resampler.", clip_hidden, arcface_tokens, 1)
    torch.testing.assert_close(tokens_on, with_shortcut if shortcut else refined_only, rtol=1e-4, atol=1e-4)


def test_plain_and_plus_layouts_are_detected(tmp_path: Path) -> None:
    plain = load_adapter(
        write_safetensors(plain_ip_adapter(clip_dim=1024), tmp_path / "ip-adapter_sdxl_vit-h.safetensors")
    )
    assert (
        plain.spec.kind is AdapterKind.IP_ADAPTER
        and plain.spec.clip_dim == 1024
        and plain.spec.tokens[Source.IMAGE] == 4
    )
    plus = load_adapter(write_safetensors(plus_ip_adapter(), tmp_path / "ip-adapter-plus_sdxl_vit-h.safetensors"))
    assert plus.spec.kind is AdapterKind.IP_ADAPTER_PLUS and plus.spec.tokens[Source.IMAGE] == 16
    assert plus.spec.clip_input.value == "penultimate_hidden_states" and len(plus.spec.layer_widths) == 11

    # Plain: the tokens are LayerNorm(reshape(W x + b)) straight from the tensors.
    state = plain_ip_adapter(clip_dim=1024)
    embeds = torch.randn(3, 1024, generator=torch.Generator().manual_seed(4))
    on, off = image_tokens(plain, embeds, torch.zeros(1, 1024))
    raw = F.linear(embeds, state["image_proj.proj.weight"], state["image_proj.proj.bias"]).reshape(3, 4, 2048)
    torch.testing.assert_close(on, ln(raw, state, "image_proj.norm"), rtol=1e-4, atol=1e-4)
    # One null per reference (issue 12: matched to the references like the peer's tensor_to_size).
    null = ln(state["image_proj.proj.bias"].reshape(1, 4, 2048), state, "image_proj.norm")
    torch.testing.assert_close(off, null.expand(3, -1, -1), rtol=1e-4, atol=1e-4)


def test_wrong_sizes_and_unknown_layouts_are_clear(tmp_path: Path) -> None:
    plain = load_adapter(write_safetensors(plain_ip_adapter(clip_dim=1280), tmp_path / "a.safetensors"))
    with pytest.raises(AdapterFormatError, match=r"width 1280; got 1664\. Pick the CLIP vision model"):
        image_tokens(plain, torch.zeros(1, 1664), torch.zeros(1, 1664))
    with pytest.raises(AdapterFormatError, match="has no face source"):
        face_tokens(plain, torch.zeros(1, 512), None, None)
    with pytest.raises(AdapterFormatError, match="has no body source"):
        body_tokens(plain, torch.zeros(1, 756))
    broken = {
        "image_proj.something.weight": torch.zeros(2, 2),
        "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 8),
        "ip_adapter.1.to_v_ip.weight": torch.zeros(4, 8),
    }
    with pytest.raises(AdapterFormatError, match="unknown IP-Adapter layout"):
        load_adapter(write_safetensors(broken, tmp_path / "broken.safetensors"))
    with pytest.raises(AdapterFormatError, match="neither a BoLID adapter nor an IP-Adapter"):
        load_adapter(write_safetensors({"weight": torch.zeros(2)}, tmp_path / "lora.safetensors"))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_adapter(tmp_path / "missing.safetensors")


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.bin"
    with open(path, "wb") as file:
        pickle.dump({"image_proj": Payload()}, file, protocol=2)
    with pytest.raises(AdapterFormatError, match="could not be read as plain weights"):
        load_adapter(path)


def test_bolid_adapter_round_trip_and_version_check(tmp_path: Path) -> None:
    spec = AdapterSpec(
        AdapterKind.BOLID, 64, (32, 64), {Source.IMAGE: 4, Source.BODY: 2},
        clip_dim=48, clip_input=ClipInput.EMBEDS, body_dim=20,
    )  # fmt: skip
    adapter = new_bolid_adapter(spec)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_()
    path = save_adapter(adapter, tmp_path / "body.safetensors")
    loaded = load_adapter(path)
    assert loaded.spec == spec
    for (name, a), (_, b) in zip(adapter.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    on, off = body_tokens(loaded, torch.randn(1, 20))
    assert on.shape == (1, 2, 64) and not torch.equal(on, off)
    with pytest.raises(AdapterFormatError, match="body vectors of width 20; got 756"):
        body_tokens(loaded, torch.randn(1, 756))

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        metadata = dict(file.metadata())
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    save_file(tensors, str(tmp_path / "future.safetensors"), metadata={**metadata, "format_version": "9"})
    with pytest.raises(AdapterFormatError, match="format version 9; this pack reads version 1 or 2"):
        load_adapter(tmp_path / "future.safetensors")


def test_reference_combination() -> None:
    # Issue 12: references combine as encoder embeddings before the projection (IPAdapter_plus), no longer as tokens.
    embeds = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    average = combine_embeddings(embeds, ReferenceCombine.AVERAGE)
    torch.testing.assert_close(average, ((embeds[0] + embeds[1]) / 2)[None])
    assert torch.equal(combine_embeddings(embeds, ReferenceCombine.CONCAT), embeds)
    concatenated = side_by_side(embeds)
    assert concatenated.shape == (1, 6, 4)
    torch.testing.assert_close(concatenated[0, 3:], embeds[1])
