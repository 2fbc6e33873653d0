"""IP-Adapter presets: which adapter, CLIP vision model and FaceID LoRA each preset needs, found by file name.

The files are the ones h94 published (h94/IP-Adapter, h94/IP-Adapter-FaceID), under the names IPAdapter_plus's
unified loader expects, so a user's existing models folder works as it is. A name matches when it ends with the
preset's distinguishing part (every separator in it matches any one character, case is ignored), in any subfolder.
A missing file is an error naming the exact file, the folder it goes in and where to get it.

Pure: the caller lists the folders (ComfyUI's folder_paths in bolid_core/comfy/unified_loader.py).
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .checkpoint import AdapterFormatError, AdapterKind, AdapterSpec, ClipInput


class Preset(str, enum.Enum):
    LIGHT = "light"
    STANDARD = "standard"
    VIT_G = "vit-g"
    PLUS = "plus"
    PLUS_FACE = "plus face"
    FULL_FACE = "full face"
    FACEID = "faceid"
    FACEID_PLUS_V2 = "faceid plus v2"
    PORTRAIT = "portrait"


class ModelFamily(str, enum.Enum):
    SD15 = "SD1.5"
    SDXL = "SDXL"


FAMILY_BY_CONTEXT_DIM = {768: ModelFamily.SD15, 2048: ModelFamily.SDXL}


def model_family(context_dim: int | None) -> ModelFamily:
    """The family a model belongs to, from its cross-attention (text) width."""
    if context_dim not in FAMILY_BY_CONTEXT_DIM:
        raise ValueError(
            f"This model's text width is {context_dim}; IP-Adapter presets exist for SD1.5 (768) and SDXL (2048). "
            "Load the adapter with BoLID Adapter Loader instead, picking a file made for this model."
        )
    return FAMILY_BY_CONTEXT_DIM[context_dim]


class ModelFolder(str, enum.Enum):
    """ComfyUI model folders (folder_paths names) the presets read."""

    IPADAPTER = "ipadapter"
    CLIP_VISION = "clip_vision"
    LORAS = "loras"


class ClipVision(enum.Enum):
    """The two CLIP vision encoders IP-Adapters read, with their output widths (image embeds, hidden states)."""

    VIT_H = ("ViT-H", 1024, 1280)
    VIT_BIGG = ("ViT-bigG", 1280, 1664)

    def __init__(self, label: str, embeds_dim: int, hidden_dim: int) -> None:
        self.label = label
        self.embeds_dim = embeds_dim
        self.hidden_dim = hidden_dim

    def width(self, which: ClipInput) -> int:
        return self.embeds_dim if which is ClipInput.EMBEDS else self.hidden_dim


_SUFFIXES = (".safetensors", ".bin")
_HF = "https://huggingface.co"


@dataclass(frozen=True)
class ExpectedFile:
    """One model file a preset needs.

    name: the published name (the one to give the file). keys: the name parts that identify it, most preferred
    first; the first key that matches any listed file decides (older versions come later). In a key, a run of
    letters and digits is literal, any other character matches one character, and '*' matches any run.
    """

    folder: ModelFolder
    name: str
    description: str
    source: str
    keys: tuple[str, ...]
    suffixes: tuple[str, ...] = _SUFFIXES

    def patterns(self) -> tuple[re.Pattern, ...]:
        suffix = "|".join(re.escape(s) for s in self.suffixes)
        return tuple(re.compile(f"{_key_regex(key)}(?:{suffix})$", re.IGNORECASE) for key in self.keys)

    def matches(self, listed_name: str) -> bool:
        return any(p.search(_basename(listed_name)) for p in self.patterns())


def _key_regex(key: str) -> str:
    parts = []
    for piece in re.findall(r"[A-Za-z0-9]+|\*|.", key):
        if piece == "*":
            parts.append(".*")
        elif piece.isalnum():
            parts.append(re.escape(piece))
        else:
            parts.append(".")
    return "".join(parts)


def _basename(listed_name: str) -> str:
    return re.split(r"[\\/]", listed_name)[-1]


def _h94(family: ModelFamily, name: str) -> str:
    folder = "models" if family is ModelFamily.SD15 else "sdxl_models"
    return f"{_HF}/h94/IP-Adapter/resolve/main/{folder}/{name}"


def _h94_faceid(name: str) -> str:
    return f"{_HF}/h94/IP-Adapter-FaceID/resolve/main/{name}"


CLIP_VISION_FILES = {
    ClipVision.VIT_H: ExpectedFile(
        ModelFolder.CLIP_VISION,
        "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
        "the ViT-H CLIP vision encoder (OpenCLIP ViT-H-14, laion2B-s32B-b79K)",
        f"{_HF}/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors (download, then rename it; the "
        f"same encoder as {_HF}/laion/CLIP-ViT-H-14-laion2B-s32B-b79K)",
        ("ViT-H-14*s32B-b79K", "ipadapter*sd15", "sd15*model", "sd1-5*model"),
    ),
    ClipVision.VIT_BIGG: ExpectedFile(
        ModelFolder.CLIP_VISION,
        "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
        "the ViT-bigG CLIP vision encoder (OpenCLIP ViT-bigG-14, laion2B-39B-b160k)",
        f"{_HF}/h94/IP-Adapter/resolve/main/sdxl_models/image_encoder/model.safetensors (download, then rename "
        f"it; the same encoder as {_HF}/laion/CLIP-ViT-bigG-14-laion2B-39B-b160k)",
        ("ViT-bigG-14*39B-b160k", "ipadapter*sdxl", "sdxl*model"),
    ),
}


@dataclass(frozen=True)
class _AdapterFiles:
    """Per family: (published name, keys), for one preset."""

    sd15: tuple[str, tuple[str, ...]] | None
    sdxl: tuple[str, tuple[str, ...]] | None
    clip: ClipVision
    kind: AdapterKind | None  # None: a layout load_adapter does not read (full face)
    tokens: int | None = None  # FaceID and portrait share a kind; their token counts tell them apart
    lora: bool = False
    faceid_hub: bool = False
    clip_required: bool = True


_PRESETS: dict[Preset, _AdapterFiles] = {
    Preset.LIGHT: _AdapterFiles(
        ("ip-adapter_sd15_light_v11.bin", ("sd15_light_v11", "sd15_light")), None, ClipVision.VIT_H,
        AdapterKind.IP_ADAPTER,
    ),
    Preset.STANDARD: _AdapterFiles(
        ("ip-adapter_sd15.safetensors", ("ip-adapter_sd15",)),
        ("ip-adapter_sdxl_vit-h.safetensors", ("ip-adapter_sdxl_vit-h",)), ClipVision.VIT_H, AdapterKind.IP_ADAPTER,
    ),
    Preset.VIT_G: _AdapterFiles(
        ("ip-adapter_sd15_vit-G.safetensors", ("sd15_vit-G",)),
        ("ip-adapter_sdxl.safetensors", ("ip-adapter_sdxl",)), ClipVision.VIT_BIGG, AdapterKind.IP_ADAPTER,
    ),
    Preset.PLUS: _AdapterFiles(
        ("ip-adapter-plus_sd15.safetensors", ("ip-adapter-plus_sd15",)),
        ("ip-adapter-plus_sdxl_vit-h.safetensors", ("plus_sdxl_vit-h",)), ClipVision.VIT_H,
        AdapterKind.IP_ADAPTER_PLUS,
    ),
    Preset.PLUS_FACE: _AdapterFiles(
        ("ip-adapter-plus-face_sd15.safetensors", ("plus-face_sd15",)),
        ("ip-adapter-plus-face_sdxl_vit-h.safetensors", ("plus-face_sdxl_vit-h",)), ClipVision.VIT_H,
        AdapterKind.IP_ADAPTER_PLUS,
    ),
    Preset.FULL_FACE: _AdapterFiles(
        ("ip-adapter-full-face_sd15.safetensors", ("full-face_sd15",)), None, ClipVision.VIT_H, None,
    ),
    Preset.FACEID: _AdapterFiles(
        ("ip-adapter-faceid_sd15.bin", ("faceid_sd15",)), ("ip-adapter-faceid_sdxl.bin", ("faceid_sdxl",)),
        ClipVision.VIT_H, AdapterKind.FACEID, tokens=4, lora=True, faceid_hub=True, clip_required=False,
    ),
    Preset.FACEID_PLUS_V2: _AdapterFiles(
        ("ip-adapter-faceid-plusv2_sd15.bin", ("faceid-plusv2_sd15",)),
        ("ip-adapter-faceid-plusv2_sdxl.bin", ("faceid-plusv2_sdxl",)), ClipVision.VIT_H, AdapterKind.FACEID_PLUS,
        lora=True, faceid_hub=True,
    ),
    Preset.PORTRAIT: _AdapterFiles(
        ("ip-adapter-faceid-portrait-v11_sd15.bin", ("portrait-v11_sd15", "portrait_sd15")),
        ("ip-adapter-faceid-portrait_sdxl.bin", ("portrait_sdxl",)), ClipVision.VIT_H, AdapterKind.FACEID,
        tokens=16, faceid_hub=True, clip_required=False,
    ),
}  # fmt: skip

# What to use on SDXL instead of an SD1.5-only preset.
SDXL_ALTERNATIVES = {Preset.LIGHT: Preset.STANDARD, Preset.FULL_FACE: Preset.PLUS_FACE}


class PresetUnavailableError(ValueError):
    """The preset has no adapter for this model family."""


@dataclass(frozen=True)
class PresetFiles:
    preset: Preset
    family: ModelFamily
    adapter: ExpectedFile
    clip_vision: ExpectedFile
    clip_required: bool  # FaceID and portrait adapters read no CLIP features: the encoder is loaded when present
    lora: ExpectedFile | None


def preset_files(preset: Preset, family: ModelFamily) -> PresetFiles:
    """The files `preset` needs on a model of `family`."""
    files = _PRESETS[Preset(preset)]
    published = files.sd15 if family is ModelFamily.SD15 else files.sdxl
    if published is None:
        alternative = SDXL_ALTERNATIVES[preset]
        raise PresetUnavailableError(
            f"The '{preset.value}' preset exists only for SD1.5 (h94 published no SDXL version); this model is "
            f"{family.value}. Use the '{alternative.value}' preset ({preset_files(alternative, family).adapter.name})."
        )
    name, keys = published
    source = _h94_faceid(name) if files.faceid_hub else _h94(family, name)
    adapter = ExpectedFile(
        ModelFolder.IPADAPTER, name, f"the '{preset.value}' IP-Adapter for {family.value}", source, keys
    )
    lora = None
    if files.lora:
        stem = name.rsplit(".", 1)[0]
        lora_name = f"{stem}_lora.safetensors"
        lora = ExpectedFile(
            ModelFolder.LORAS, lora_name, f"the LoRA paired with {name}", _h94_faceid(lora_name),
            tuple(f"{key}_lora" for key in keys),
        )  # fmt: skip
    return PresetFiles(preset, family, adapter, CLIP_VISION_FILES[files.clip], files.clip_required, lora)


def preset_file_names(preset: Preset | str, family: ModelFamily | str) -> dict[str, str]:
    """ComfyUI model folder -> published file name, for each file `preset` requires on `family` (the LoRA included,
    the optional CLIP vision of FaceID/portrait left out): what a converter lists, or a test writes."""
    files = preset_files(Preset(preset), ModelFamily(family))
    names = {files.adapter.folder.value: files.adapter.name}
    if files.clip_required:
        names[files.clip_vision.folder.value] = files.clip_vision.name
    if files.lora is not None:
        names[files.lora.folder.value] = files.lora.name
    return names


def _all_expected() -> list[ExpectedFile]:
    known = list(CLIP_VISION_FILES.values())
    for preset in Preset:
        for family in ModelFamily:
            try:
                files = preset_files(preset, family)
            except PresetUnavailableError:
                continue
            known += [files.adapter] + ([files.lora] if files.lora else [])
    return known


# --- finding files -----------------------------------------------------------------------------------------------


def _preference(expected: ExpectedFile, listed_name: str) -> tuple:
    base = _basename(listed_name)
    parts = len(re.split(r"[\\/]", listed_name))
    suffix_rank = next((i for i, s in enumerate(expected.suffixes) if base.lower().endswith(s)), len(expected.suffixes))
    return (base.lower() != expected.name.lower(), suffix_rank, parts, listed_name.lower())


def pick_file(expected: ExpectedFile, listed: Sequence[str]) -> str | None:
    """The listed name (relative to its folder) that `expected` picks, or None."""
    for pattern in expected.patterns():
        found = [name for name in listed if pattern.search(_basename(name))]
        if found:
            return min(found, key=lambda name: _preference(expected, name))
    return None


def near_misses(expected: ExpectedFile, listed: Sequence[str], limit: int = 5) -> list[str]:
    """Listed names that look like `expected` but do not match it, each said for what it is when it is another
    preset's file."""
    target = expected.name.lower()
    scored = []
    for name in listed:
        base = _basename(name).lower()
        stem_target, stem = target.rsplit(".", 1)[0], base.rsplit(".", 1)[0]
        ratio = max(difflib.SequenceMatcher(None, base, target).ratio(), float(stem == stem_target))
        if ratio >= 0.6:
            scored.append((-ratio, name))
    shown = []
    known = _all_expected()
    for _, name in sorted(scored)[:limit]:
        other = next((file for file in known if file is not expected and file.matches(name)), None)
        shown.append(f"{name} ({other.description})" if other is not None else name)
    return shown


@dataclass(frozen=True)
class MissingFile:
    expected: ExpectedFile
    places: tuple[str, ...]
    near: tuple[str, ...]

    def describe(self) -> str:
        folder = self.expected.folder.value
        places = ", ".join(self.places) if self.places else "no folder is registered for it"
        kinds = " or ".join(self.expected.suffixes)
        text = (
            f"- {self.expected.name} ({self.expected.description}) goes in models/{folder} ({places}); "
            f"subfolders are fine, {kinds}. Get it from {self.expected.source}."
        )
        if self.near:
            text += f" Seen there, not matching: {', '.join(self.near)}."
        return text


class PresetFilesMissing(FileNotFoundError):
    """Files a preset needs are not in their folders; the message names each one, where it goes and its source."""

    def __init__(self, preset: Preset, family: ModelFamily, missing: Sequence[MissingFile]) -> None:
        self.preset, self.family, self.missing = preset, family, tuple(missing)
        count = "a file" if len(self.missing) == 1 else f"{len(self.missing)} files"
        lines = [f"The '{preset.value}' preset on an {family.value} model needs {count} not found:"]
        lines += [item.describe() for item in self.missing]
        lines.append("Name each file exactly so (case and - or _ do not matter), then queue the prompt again.")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class PresetPicks:
    """Listed names (relative to their folder) of the files picked; None where not needed or optional and absent."""

    files: PresetFiles
    adapter: str
    clip_vision: str | None
    lora: str | None


def find_preset_files(
    preset: Preset | str,
    family: ModelFamily,
    listed: Callable[[str], Sequence[str]],
    places: Callable[[str], Sequence[str]],
    *,
    with_lora: bool = True,
) -> PresetPicks:
    """Pick each file `preset` needs from the names `listed(folder)` returns; raise PresetFilesMissing naming every
    missing one, with the folder paths `places(folder)` returns. with_lora=False: the LoRA is not needed (strength 0).
    """
    files = preset_files(Preset(preset), family)
    wanted = [(files.adapter, True), (files.clip_vision, files.clip_required)]
    if files.lora is not None and with_lora:
        wanted.append((files.lora, True))
    picked: dict[ModelFolder, str | None] = {}
    missing = []
    for expected, required in wanted:
        names = list(listed(expected.folder.value))
        picked[expected.folder] = pick_file(expected, names)
        if picked[expected.folder] is None and required:
            near = tuple(near_misses(expected, names))
            missing.append(MissingFile(expected, tuple(places(expected.folder.value)), near))
    if missing:
        raise PresetFilesMissing(files.preset, family, missing)
    return PresetPicks(
        files, picked[ModelFolder.IPADAPTER], picked[ModelFolder.CLIP_VISION], picked.get(ModelFolder.LORAS)
    )


# --- checking what was loaded ------------------------------------------------------------------------------------

_KIND_WORDS = {
    AdapterKind.IP_ADAPTER: "a plain IP-Adapter",
    AdapterKind.IP_ADAPTER_PLUS: "an IP-Adapter Plus",
    AdapterKind.FACEID: "a FaceID adapter",
    AdapterKind.FACEID_PLUS: "a FaceID-Plus adapter",
    AdapterKind.BOLID: "a BoLID adapter",
}


def _fits(preset: Preset, spec: AdapterSpec) -> bool:
    files = _PRESETS[preset]
    if files.kind is None or spec.kind is not files.kind:
        return False
    if files.tokens is not None and sum(spec.tokens.values()) != files.tokens:
        return False
    if spec.clip_input is not None and spec.clip_dim != files.clip.width(spec.clip_input):
        return False
    return True


def unsupported_layout(preset: Preset) -> str | None:
    """Why the preset's adapter cannot be loaded by this pack, or None when it can."""
    if _PRESETS[preset].kind is not None:
        return None
    return (
        f"The '{preset.value}' adapter (an MLP over CLIP hidden states) is a layout this pack does not load yet; "
        f"use the '{Preset.PLUS_FACE.value}' preset, or IPAdapter_plus for this one."
    )


def check_adapter(preset: Preset | str, family: ModelFamily, spec: AdapterSpec, file_name: str) -> None:
    """Raise AdapterFormatError when the loaded adapter is not what `preset` names (e.g. a plus file saved under the
    standard name), saying which presets it would fit."""
    preset = Preset(preset)
    expected = preset_files(preset, family).adapter.name
    context = {ModelFamily.SD15: 768, ModelFamily.SDXL: 2048}[family]
    if spec.context_dim != context:
        raise AdapterFormatError(
            f"{file_name} was made for {spec.base_family} (text width {spec.context_dim}), but the model is "
            f"{family.value}: the file is misnamed. Put the {family.value} file {expected} in its place."
        )
    if _fits(preset, spec):
        return
    files = _PRESETS[preset]
    if files.kind is None:
        raise AdapterFormatError(unsupported_layout(preset))
    found = f"{_KIND_WORDS[spec.kind]} ({sum(spec.tokens.values())} tokens"
    if spec.clip_input is not None:
        found += f", reading {spec.clip_dim}-wide CLIP {spec.clip_input.value}"
    fitting = [other.value for other in Preset if other is not preset and _fits(other, spec)]
    hint = f" It fits the preset(s) {', '.join(repr(p) for p in fitting)}." if fitting else ""
    wanted = _KIND_WORDS[files.kind] + (f" with {files.tokens} tokens" if files.tokens else "")
    wanted += f" reading {files.clip.label} CLIP vision" if files.clip_required else ""
    raise AdapterFormatError(
        f"{file_name} is {found}), not the '{preset.value}' preset's {expected} ({wanted}). The file is misnamed: "
        f"give it its published name.{hint}"
    )


def check_clip_vision(preset: Preset | str, spec: AdapterSpec, clip_file: str, widths: tuple[int, int]) -> None:
    """Raise ValueError when the loaded CLIP vision (image embeds width, hidden width) is not the one the adapter
    reads (e.g. ViT-bigG saved under the ViT-H name)."""
    if spec.clip_input is None or spec.clip_dim is None:
        return
    embeds_dim, hidden_dim = widths
    width = embeds_dim if spec.clip_input is ClipInput.EMBEDS else hidden_dim
    if width == spec.clip_dim:
        return
    wanted = CLIP_VISION_FILES[_PRESETS[Preset(preset)].clip]
    raise ValueError(
        f"{clip_file} gives {width}-wide CLIP {spec.clip_input.value}, but the '{Preset(preset).value}' adapter "
        f"reads {spec.clip_dim}-wide ones: the file is not {wanted.description}. Put {wanted.name} in "
        f"models/{wanted.folder.value} (from {wanted.source})."
    )
