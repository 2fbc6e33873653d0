"""Adapter checkpoints: IP-Adapter files as published (plain, plus, FaceID, FaceID-Plus-v2) and ours.

An adapter is a set of sources (reference image, face, body). Each source has a projection model,
from its embeddings to tokens, and per cross-attention layer a K and a V projection of those tokens.
"""

from __future__ import annotations

import enum
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..files import PlainWeightsError, load_plain_weights, save_safetensors_atomic
from .projections import (
    FaceIDPlusProjection,
    HybridIdentityProjection,
    MLPTokenProjection,
    PerceiverResampler,
    TokenProjection,
)

BOLID_FORMAT = "bolid-adapter"
BOLID_FORMAT_VERSION = 2  # 2: the hybrid face source (fusion layer, text prior); version 1 files still load
OLDEST_BOLID_FORMAT_VERSION = 1
BASE_FAMILY_BY_CONTEXT = {768: "SD1.5", 1024: "SD2.x", 2048: "SDXL"}
SD15_CONTEXT_DIM = 768


class AdapterFormatError(ValueError):
    """The file is not an adapter we can read, or does not fit the model it is applied to."""


class AdapterKind(str, enum.Enum):
    IP_ADAPTER = "ip-adapter"  # CLIP image embeds -> tokens
    IP_ADAPTER_PLUS = "ip-adapter-plus"  # resampler over CLIP hidden states
    FACEID = "ip-adapter-faceid"  # ArcFace embedding -> tokens
    FACEID_PLUS = "ip-adapter-faceid-plus"  # ArcFace tokens refined over CLIP hidden states of the face crop
    BOLID = "bolid"  # our format: reference image, hybrid face (FaceStudio fusion) and body sources


class Source(str, enum.Enum):
    IMAGE = "image"
    FACE = "face"
    BODY = "body"


class ClipInput(str, enum.Enum):
    """Which CLIP-vision output a projection reads."""

    EMBEDS = "image_embeds"
    HIDDEN = "penultimate_hidden_states"


@dataclass(frozen=True)
class AdapterSpec:
    kind: AdapterKind
    context_dim: int  # the UNet's cross-attention (text) width the K/V projections read
    layer_widths: tuple[int, ...]  # per attn2 layer, in input -> output -> middle order
    tokens: dict[Source, int]
    clip_dim: int | None = None  # width of the CLIP-vision output it reads
    clip_input: ClipInput | None = None
    face_dim: int | None = None
    body_dim: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
    fusion_dim: int | None = None  # hybrid face source: width of e = fusion(CLIP ‖ ArcFace)
    text_dim: int | None = None  # hybrid face source: pooled CLIP text width its prior reads; None: no prior

    def __post_init__(self) -> None:
        if self.has_fusion:
            required = {"face_dim": self.face_dim, "clip_dim": self.clip_dim, "fusion_dim": self.fusion_dim}
            missing = [name for name, value in required.items() if value is None]
            if missing:
                raise AdapterFormatError(
                    "A BoLID adapter with a face source fuses CLIP-vision image embeds with ArcFace embeddings "
                    f"(FaceStudio); its spec lacks {', '.join(missing)}. Re-export the adapter with them set."
                )
            if self.clip_input is not ClipInput.EMBEDS:
                found = self.clip_input.value if self.clip_input else "nothing"
                raise AdapterFormatError(
                    "A BoLID adapter with a face source reads CLIP-vision image_embeds; its spec names "
                    f"{found}. Re-export it with clip_input {ClipInput.EMBEDS.value}."
                )
        elif self.fusion_dim is not None or self.text_dim is not None:
            sources = ", ".join(source.value for source in self.tokens) or "none"
            raise AdapterFormatError(
                f"This {self.kind.value} adapter has a fusion layer or text prior but no face input to fuse "
                f"(sources: {sources}). Only a BoLID adapter with a face source carries them."
            )
        for name in ("fusion_dim", "text_dim"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise AdapterFormatError(f"The adapter's {name} is {value}; it must be a positive width.")

    @property
    def sources(self) -> tuple[Source, ...]:
        return tuple(self.tokens)

    @property
    def has_fusion(self) -> bool:
        """Whether the face source is FaceStudio's hybrid fusion (our format), not FaceID's ArcFace-only MLP."""
        return self.kind is AdapterKind.BOLID and Source.FACE in self.tokens

    @property
    def base_family(self) -> str:
        return BASE_FAMILY_BY_CONTEXT.get(self.context_dim, f"an unknown model (context width {self.context_dim})")

    def to_metadata(self) -> dict[str, str]:
        fields = asdict(self)
        fields["kind"] = self.kind.value
        fields["tokens"] = {source.value: count for source, count in self.tokens.items()}
        fields["clip_input"] = self.clip_input.value if self.clip_input else None
        return {
            "format": BOLID_FORMAT,
            "format_version": str(BOLID_FORMAT_VERSION),
            "base_family": self.base_family,
            "spec": json.dumps(fields),
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], name: str) -> AdapterSpec:
        written = metadata.get("format_version", "(none)")
        version = int(written) if written.isdigit() else 0
        if not OLDEST_BOLID_FORMAT_VERSION <= version <= BOLID_FORMAT_VERSION:
            raise AdapterFormatError(
                f"{name} is BoLID adapter format version {written}; this pack reads version "
                f"{OLDEST_BOLID_FORMAT_VERSION} or {BOLID_FORMAT_VERSION}. Update the pack, or re-export the adapter."
            )
        fields = json.loads(metadata["spec"])  # version 1 specs have no fusion_dim/text_dim: they default to None
        fields["kind"] = AdapterKind(fields["kind"])
        fields["tokens"] = {Source(source): count for source, count in fields["tokens"].items()}
        fields["clip_input"] = ClipInput(fields["clip_input"]) if fields["clip_input"] else None
        fields["layer_widths"] = tuple(fields["layer_widths"])
        try:
            return cls(**fields)
        except AdapterFormatError as error:
            raise AdapterFormatError(f"{name}: {error}") from error


class LayerKV(nn.Module):
    """One source's K and V projections of its tokens at one cross-attention layer."""

    def __init__(self, context_dim: int, width: int) -> None:
        super().__init__()
        self.to_k = nn.Linear(context_dim, width, bias=False)
        self.to_v = nn.Linear(context_dim, width, bias=False)


class Adapter(nn.Module):
    def __init__(self, spec: AdapterSpec, projections: dict[Source, nn.Module]) -> None:
        super().__init__()
        self.spec = spec
        self.projections = nn.ModuleDict({source.value: module for source, module in projections.items()})
        self.layers = nn.ModuleList(
            nn.ModuleDict({source.value: LayerKV(spec.context_dim, width) for source in spec.sources})
            for width in spec.layer_widths
        )
        # What a host wraps this module in, kept for the module's lifetime (ComfyUI: one ModelPatcher per
        # load device, so model management tracks one entry per loaded adapter).
        self.host_wrappers: dict = {}

    def projection(self, source: Source) -> nn.Module:
        return self.projections[source.value]

    def kv(self, layer: int, source: Source) -> LayerKV:
        return self.layers[layer][source.value]


# --- reading files ------------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a .safetensors file, or of a .bin/.pt file loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Adapter file {path} not found.")
    if path.suffix in (".safetensors", ".sft"):
        with safe_open(str(path), framework="pt") as file:
            return {key: file.get_tensor(key) for key in file.keys()}, dict(file.metadata() or {})
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        try:
            return _flatten(load_plain_weights(path)), {}
        except PlainWeightsError as error:
            raise AdapterFormatError(str(error)) from error
    raise AdapterFormatError(f"{path.name}: unknown file type; adapters are .safetensors or .bin files.")


def _flatten(tree: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            flat[f"{prefix}{key}"] = value
    return flat


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


_IP_KV_KEY = re.compile(r"^ip_adapter\.(\d+)\.to_([kv])_ip\.weight$")


def _ip_adapter_layers(state: dict[str, torch.Tensor], name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _IP_KV_KEY.match(key)
        if match:
            by_index.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if not by_index or any(len(kv) != 2 for kv in by_index.values()):
        raise AdapterFormatError(f"{name} has no complete ip_adapter.N.to_k_ip / to_v_ip weights.")
    return [(by_index[i]["k"], by_index[i]["v"]) for i in sorted(by_index)]


def _detect_ip_adapter(state: dict[str, torch.Tensor], name: str) -> tuple[AdapterSpec, dict[Source, nn.Module]]:
    proj = _sub(state, "image_proj.")
    layers = _ip_adapter_layers(state, name)
    context_dim = layers[0][0].shape[1]
    widths = tuple(k.shape[0] for k, _ in layers)
    if "perceiver_resampler.proj_in.weight" in proj:
        mlp = _mlp_projection(proj, context_dim)
        resampler = PerceiverResampler.from_state_dict(_sub(proj, "perceiver_resampler."))
        module = FaceIDPlusProjection(mlp, resampler, shortcut=_faceid_plus_has_shortcut(context_dim, name))
        spec = AdapterSpec(
            AdapterKind.FACEID_PLUS, context_dim, widths, {Source.FACE: mlp.tokens},
            clip_dim=resampler.proj_in.in_features, clip_input=ClipInput.HIDDEN, face_dim=mlp.proj[0].in_features,
            extra={"shortcut": str(module.shortcut)},
        )  # fmt: skip
        return spec, {Source.FACE: module}
    if "proj.0.weight" in proj:
        mlp = _mlp_projection(proj, context_dim)
        spec = AdapterSpec(
            AdapterKind.FACEID, context_dim, widths, {Source.FACE: mlp.tokens}, face_dim=mlp.proj[0].in_features
        )
        return spec, {Source.FACE: mlp}
    if "latents" in proj:
        resampler = PerceiverResampler.from_state_dict(proj)
        spec = AdapterSpec(
            AdapterKind.IP_ADAPTER_PLUS, context_dim, widths, {Source.IMAGE: resampler.latents.shape[1]},
            clip_dim=resampler.proj_in.in_features, clip_input=ClipInput.HIDDEN,
        )  # fmt: skip
        return spec, {Source.IMAGE: resampler}
    if "proj.weight" in proj and "norm.weight" in proj:
        tokens = proj["proj.weight"].shape[0] // proj["norm.weight"].shape[0]
        module = TokenProjection(proj["proj.weight"].shape[1], proj["norm.weight"].shape[0], tokens)
        spec = AdapterSpec(
            AdapterKind.IP_ADAPTER, context_dim, widths, {Source.IMAGE: tokens},
            clip_dim=module.proj.in_features, clip_input=ClipInput.EMBEDS,
        )  # fmt: skip
        return spec, {Source.IMAGE: module}
    known = ", ".join(sorted(proj)[:6]) or "none"
    raise AdapterFormatError(f"{name}: unknown IP-Adapter layout (image_proj keys: {known}).")


def _faceid_plus_has_shortcut(context_dim: int, name: str) -> bool:
    """Whether a FaceID-Plus file is v2 (ArcFace tokens + shortcut x refined) or v1 (refined only).

    Decided by the tensors wherever they can tell: v1 was published only for SD1.5 (text width 768), so
    any other width, SDXL's 2048 included, is v2 whatever the file is called. SD1.5's v1 and v2 files
    have identical tensors; only there does the published name ("...plusv2...") decide.
    """
    if context_dim != SD15_CONTEXT_DIM:
        return True
    return "v2" in name.lower()


def _mlp_projection(proj: dict[str, torch.Tensor], context_dim: int) -> MLPTokenProjection:
    in_dim, hidden = proj["proj.0.weight"].shape[1], proj["proj.0.weight"].shape[0]
    tokens = proj["proj.2.weight"].shape[0] // context_dim
    return MLPTokenProjection(in_dim, hidden, context_dim, tokens)


def _load_into(adapter: Adapter, tensors: dict[str, torch.Tensor], name: str) -> Adapter:
    missing, unexpected = adapter.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise AdapterFormatError(
            f"{name} does not match its own layout: missing {missing[:4]}, unexpected {unexpected[:4]}."
        )
    return adapter.eval().requires_grad_(False)


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Read an adapter file of any supported layout; the model fit is checked when it is applied."""
    name = Path(path).name
    state, metadata = read_state_dict(path)
    if metadata.get("format") == BOLID_FORMAT:
        spec = AdapterSpec.from_metadata(metadata, name)
        return _load_into(Adapter(spec, bolid_projections(spec)), state, name)
    if not any(key.startswith("ip_adapter.") for key in state):
        raise AdapterFormatError(f"{name} is neither a BoLID adapter nor an IP-Adapter (no ip_adapter.* weights).")
    spec, projections = _detect_ip_adapter(state, name)
    adapter = Adapter(spec, projections)
    tensors = {
        f"projections.{source.value}.{key}": value
        for source in spec.sources
        for key, value in _sub(state, "image_proj.").items()
    }
    for layer, (key, value) in enumerate(_ip_adapter_layers(state, name)):
        source = spec.sources[0].value
        tensors[f"layers.{layer}.{source}.to_k.weight"] = key
        tensors[f"layers.{layer}.{source}.to_v.weight"] = value
    return _load_into(adapter, tensors, name)


# --- our format --------------------------------------------------------------------------------------

BODY_HIDDEN_MULTIPLIER = 2


def bolid_projections(spec: AdapterSpec) -> dict[Source, nn.Module]:
    projections: dict[Source, nn.Module] = {}
    if Source.IMAGE in spec.tokens:
        projections[Source.IMAGE] = TokenProjection(spec.clip_dim, spec.context_dim, spec.tokens[Source.IMAGE])
    if Source.FACE in spec.tokens:
        projections[Source.FACE] = HybridIdentityProjection(
            spec.clip_dim, spec.face_dim, spec.fusion_dim, spec.context_dim, spec.tokens[Source.FACE], spec.text_dim
        )
    if Source.BODY in spec.tokens:
        hidden = spec.body_dim * BODY_HIDDEN_MULTIPLIER
        projections[Source.BODY] = MLPTokenProjection(spec.body_dim, hidden, spec.context_dim, spec.tokens[Source.BODY])
    return projections


def new_bolid_adapter(spec: AdapterSpec) -> Adapter:
    if spec.kind is not AdapterKind.BOLID:
        raise ValueError(f"new_bolid_adapter makes BoLID adapters, not {spec.kind.value}.")
    return Adapter(spec, bolid_projections(spec))


def save_adapter(adapter: Adapter, path: str | os.PathLike) -> Path:
    """Write a BoLID adapter as safetensors with its spec in the metadata, atomically."""
    return save_safetensors_atomic(adapter.state_dict(), path, adapter.spec.to_metadata())
