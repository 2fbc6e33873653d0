"""Unit: the unified loader's presets pick h94's published files by name, and say exactly what is missing."""

from __future__ import annotations

import re

import pytest

from bolid_core.adapter import AdapterFormatError, AdapterKind, AdapterSpec, ClipInput, Source
from bolid_core.adapter.presets import (
    ModelFamily,
    Preset,
    PresetFilesMissing,
    PresetUnavailableError,
    check_adapter,
    check_clip_vision,
    find_preset_files,
    model_family,
    preset_file_names,
)

VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
VIT_G = "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"
SD15, SDXL = ModelFamily.SD15, ModelFamily.SDXL

# (preset, family) -> (adapter, CLIP vision, LoRA): h94's published names (h94/IP-Adapter, h94/IP-Adapter-FaceID), as
# IPAdapter_plus's README lists them for its unified loader.
PUBLISHED = {
    (Preset.LIGHT, SD15): ("ip-adapter_sd15_light_v11.bin", VIT_H, None),
    (Preset.STANDARD, SD15): ("ip-adapter_sd15.safetensors", VIT_H, None),
    (Preset.STANDARD, SDXL): ("ip-adapter_sdxl_vit-h.safetensors", VIT_H, None),
    (Preset.VIT_G, SD15): ("ip-adapter_sd15_vit-G.safetensors", VIT_G, None),
    (Preset.VIT_G, SDXL): ("ip-adapter_sdxl.safetensors", VIT_G, None),
    (Preset.PLUS, SD15): ("ip-adapter-plus_sd15.safetensors", VIT_H, None),
    (Preset.PLUS, SDXL): ("ip-adapter-plus_sdxl_vit-h.safetensors", VIT_H, None),
    (Preset.PLUS_FACE, SD15): ("ip-adapter-plus-face_sd15.safetensors", VIT_H, None),
    (Preset.PLUS_FACE, SDXL): ("ip-adapter-plus-face_sdxl_vit-h.safetensors", VIT_H, None),
    (Preset.FULL_FACE, SD15): ("ip-adapter-full-face_sd15.safetensors", VIT_H, None),
    (Preset.FACEID, SD15): ("ip-adapter-faceid_sd15.bin", VIT_H, "ip-adapter-faceid_sd15_lora.safetensors"),
    (Preset.FACEID, SDXL): ("ip-adapter-faceid_sdxl.bin", VIT_H, "ip-adapter-faceid_sdxl_lora.safetensors"),
    (Preset.FACEID_PLUS_V2, SD15): (
        "ip-adapter-faceid-plusv2_sd15.bin", VIT_H, "ip-adapter-faceid-plusv2_sd15_lora.safetensors",
    ),
    (Preset.FACEID_PLUS_V2, SDXL): (
        "ip-adapter-faceid-plusv2_sdxl.bin", VIT_H, "ip-adapter-faceid-plusv2_sdxl_lora.safetensors",
    ),
    (Preset.PORTRAIT, SD15): ("ip-adapter-faceid-portrait-v11_sd15.bin", VIT_H, None),
    (Preset.PORTRAIT, SDXL): ("ip-adapter-faceid-portrait_sdxl.bin", VIT_H, None),
}  # fmt: skip
SD15_ONLY = {Preset.LIGHT: Preset.STANDARD, Preset.FULL_FACE: Preset.PLUS_FACE}

EVERY_ADAPTER = sorted({adapter for adapter, _, _ in PUBLISHED.values()} | {
    "ip-adapter_sd15_light.safetensors", "ip-adapter-faceid-portrait_sd15.bin",
    "ip-adapter-faceid-portrait_sdxl_unnorm.bin", "ip-adapter-faceid-plus_sd15.bin",
})  # fmt: skip
EVERY_LORA = sorted(
    {lora for _, _, lora in PUBLISHED.values() if lora} | {"ip-adapter-faceid-plus_sd15_lora.safetensors"}
)
EVERY_CLIP = [VIT_H, VIT_G, "clip-vit-large-patch14-336.bin"]
PLACES = {"ipadapter": ["/m/ipadapter"], "clip_vision": ["/m/clip_vision", "/extra/clip"], "loras": ["/m/loras"]}


def folders(ipadapter=(), clip_vision=(), loras=()):
    listing = {"ipadapter": list(ipadapter), "clip_vision": list(clip_vision), "loras": list(loras)}
    return listing.__getitem__, PLACES.__getitem__


def test_model_family_from_context_width() -> None:
    assert model_family(2048) is SDXL and model_family(768) is SD15
    with pytest.raises(ValueError, match="text width is 1024"):
        model_family(1024)


@pytest.mark.parametrize(("preset", "family"), list(PUBLISHED))
def test_each_preset_picks_its_published_files_from_all_of_them(preset, family) -> None:
    adapter, clip, lora = PUBLISHED[(preset, family)]
    listed, places = folders(EVERY_ADAPTER, EVERY_CLIP, EVERY_LORA)
    picks = find_preset_files(preset, family, listed, places)
    assert (picks.adapter, picks.clip_vision, picks.lora) == (adapter, clip, lora)


@pytest.mark.parametrize("preset", list(SD15_ONLY))
def test_sd15_only_presets_on_sdxl_name_the_alternative(preset) -> None:
    listed, places = folders(EVERY_ADAPTER, EVERY_CLIP, EVERY_LORA)
    alternative = SD15_ONLY[preset]
    with pytest.raises(PresetUnavailableError) as error:
        find_preset_files(preset, SDXL, listed, places)
    message = str(error.value)
    assert f"'{preset.value}' preset exists only for SD1.5" in message and "this model is SDXL" in message
    assert f"'{alternative.value}' preset ({PUBLISHED[(alternative, SDXL)][0]})" in message


@pytest.mark.parametrize(
    ("preset", "family", "listed", "expected"),
    [
        # Case, separators and subfolders do not matter; .safetensors wins over .bin; the published name wins.
        (Preset.PLUS, SDXL, ["sdxl/IP_Adapter_Plus_SDXL_ViT_H.bin"], "sdxl/IP_Adapter_Plus_SDXL_ViT_H.bin"),
        (Preset.PLUS, SDXL, ["a/ip-adapter-plus_sdxl_vit-h.bin", "b/ip-adapter-plus_sdxl_vit-h.safetensors"],
         "b/ip-adapter-plus_sdxl_vit-h.safetensors"),
        (Preset.STANDARD, SDXL, ["ip_adapter_sdxl_vit_h.safetensors", "ip-adapter_sdxl_vit-h.safetensors"],
         "ip-adapter_sdxl_vit-h.safetensors"),
        (Preset.STANDARD, SDXL, ["deep/er/ip-adapter_sdxl_vit-h.bin"], "deep/er/ip-adapter_sdxl_vit-h.bin"),
        # Only the tail names the file, as in IPAdapter_plus: a prefix is fine.
        (Preset.PLUS, SDXL, ["my-ip-adapter-plus_sdxl_vit-h.safetensors"], "my-ip-adapter-plus_sdxl_vit-h.safetensors"),
        # Older versions when the current one is absent; the current one when both are there.
        (Preset.LIGHT, SD15, ["ip-adapter_sd15_light.safetensors"], "ip-adapter_sd15_light.safetensors"),
        (Preset.LIGHT, SD15, ["ip-adapter_sd15_light.safetensors", "ip-adapter_sd15_light_v11.bin"],
         "ip-adapter_sd15_light_v11.bin"),
        (Preset.PORTRAIT, SD15, ["ip-adapter-faceid-portrait_sd15.bin"], "ip-adapter-faceid-portrait_sd15.bin"),
    ],
)  # fmt: skip
def test_name_variants(preset, family, listed, expected) -> None:
    clip = VIT_G if preset is Preset.VIT_G else VIT_H
    names, places = folders(listed, [clip], EVERY_LORA)
    assert find_preset_files(preset, family, names, places).adapter == expected


@pytest.mark.parametrize(
    ("family", "listed", "expected"),
    [
        (SDXL, ["clip_vision_g.safetensors", "models/CLIP-ViT-bigG-14-laion2B-39B-b160k.bin"],
         "models/CLIP-ViT-bigG-14-laion2B-39B-b160k.bin"),
        (SDXL, ["open_clip_vit-bigg-14-laion2b-39b-b160k.safetensors"],
         "open_clip_vit-bigg-14-laion2b-39b-b160k.safetensors"),
        (SDXL, ["IPAdapter_image_encoder_sdxl.safetensors"], "IPAdapter_image_encoder_sdxl.safetensors"),
        (SDXL, ["sdxl_image_encoder_model.safetensors"], "sdxl_image_encoder_model.safetensors"),
    ],
)  # fmt: skip
def test_vit_g_clip_vision_variants(family, listed, expected) -> None:
    names, places = folders(["ip-adapter_sdxl.safetensors"], listed)
    assert find_preset_files(Preset.VIT_G, family, names, places).clip_vision == expected


@pytest.mark.parametrize(
    "listed",
    [["CLIP-ViT-H-14-laion2B-s32B-b79K.bin"], ["ipadapter_image_encoder_sd15.safetensors"], ["SD1.5_model.bin"]],
)
def test_vit_h_clip_vision_variants(listed) -> None:
    names, places = folders(["ip-adapter-plus_sdxl_vit-h.safetensors"], listed)
    assert find_preset_files(Preset.PLUS, SDXL, names, places).clip_vision == listed[0]


def test_missing_files_are_named_with_their_folders_and_sources() -> None:
    """The peer's most repeated complaint: "ClipVision model not found" with no name and no folder."""
    names, places = folders(
        ["ip-adapter-plus_sd15.safetensors", "ip-adapter-plus_sdxl_vit-h.pth"], ["clip_vision_g.safetensors"]
    )
    with pytest.raises(PresetFilesMissing) as error:
        find_preset_files(Preset.PLUS, SDXL, names, places)
    message = str(error.value)
    assert message.startswith("The 'plus' preset on an SDXL model needs 2 files not found:")
    assert (
        "- ip-adapter-plus_sdxl_vit-h.safetensors (the 'plus' IP-Adapter for SDXL) goes in models/ipadapter "
        "(/m/ipadapter); subfolders are fine, .safetensors or .bin. Get it from "
        "https://huggingface.co/h94/IP-Adapter/resolve/main/sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors."
    ) in message
    # Near misses, each said for what it is when it is another preset's file.
    assert (
        "Seen there, not matching: ip-adapter-plus_sdxl_vit-h.pth, ip-adapter-plus_sd15.safetensors "
        "(the 'plus' IP-Adapter for SD1.5)."
    ) in message
    assert "- CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (the ViT-H CLIP vision encoder" in message
    assert "goes in models/clip_vision (/m/clip_vision, /extra/clip)" in message
    assert "https://huggingface.co/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors" in message
    assert "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in message
    assert [item.expected.name for item in error.value.missing] == [
        "ip-adapter-plus_sdxl_vit-h.safetensors", VIT_H,
    ]  # fmt: skip


def test_missing_faceid_lora_names_the_pair_and_faceid_repo() -> None:
    names, places = folders(
        ["ip-adapter-faceid-plusv2_sdxl.bin"], [VIT_H], ["ip-adapter-faceid-plusv2_sd15_lora.safetensors"]
    )
    with pytest.raises(PresetFilesMissing) as error:
        find_preset_files(Preset.FACEID_PLUS_V2, SDXL, names, places)
    message = str(error.value)
    assert (
        "- ip-adapter-faceid-plusv2_sdxl_lora.safetensors (the LoRA paired with ip-adapter-faceid-plusv2_sdxl.bin) "
        "goes in models/loras (/m/loras)"
    ) in message
    assert (
        "https://huggingface.co/h94/IP-Adapter-FaceID/resolve/main/ip-adapter-faceid-plusv2_sdxl_lora.safetensors"
        in message
    )
    assert (
        "ip-adapter-faceid-plusv2_sd15_lora.safetensors (the LoRA paired with ip-adapter-faceid-plusv2_sd15.bin)"
        in message
    )
    # Without the LoRA (strength 0) nothing is missing.
    picks = find_preset_files(Preset.FACEID_PLUS_V2, SDXL, names, places, with_lora=False)
    assert (picks.adapter, picks.clip_vision, picks.lora) == ("ip-adapter-faceid-plusv2_sdxl.bin", VIT_H, None)


def test_faceid_and_portrait_need_no_clip_vision() -> None:
    names, places = folders(EVERY_ADAPTER, [], EVERY_LORA)
    assert find_preset_files(Preset.FACEID, SDXL, names, places).clip_vision is None
    assert find_preset_files(Preset.PORTRAIT, SDXL, names, places).clip_vision is None
    with pytest.raises(PresetFilesMissing, match=re.escape(VIT_H)):
        find_preset_files(Preset.FACEID_PLUS_V2, SDXL, names, places)


def test_the_wrong_family_file_is_not_picked() -> None:
    names, places = folders(["ip-adapter_sd15.safetensors", "ip-adapter_sdxl.safetensors"], [VIT_H])
    with pytest.raises(PresetFilesMissing, match=re.escape("ip-adapter_sdxl_vit-h.safetensors")):
        find_preset_files(Preset.STANDARD, SDXL, names, places)


@pytest.mark.parametrize(("preset", "family"), list(PUBLISHED))
def test_file_names_for_writers(preset, family) -> None:
    adapter, clip, lora = PUBLISHED[(preset, family)]
    expected = {"ipadapter": adapter}
    if preset not in (Preset.FACEID, Preset.PORTRAIT):
        expected["clip_vision"] = clip
    if lora:
        expected["loras"] = lora
    assert preset_file_names(preset.value, family.value) == expected


# --- what was loaded must be what the name says ----------------------------------------------------------------


def spec(kind, context=2048, tokens=4, clip_dim=None, clip_input=None, source=Source.IMAGE) -> AdapterSpec:
    return AdapterSpec(kind, context, (64,), {source: tokens}, clip_dim=clip_dim, clip_input=clip_input)


PLAIN_H = spec(AdapterKind.IP_ADAPTER, clip_dim=1024, clip_input=ClipInput.EMBEDS)
PLAIN_G = spec(AdapterKind.IP_ADAPTER, clip_dim=1280, clip_input=ClipInput.EMBEDS)
PLUS_H = spec(AdapterKind.IP_ADAPTER_PLUS, tokens=16, clip_dim=1280, clip_input=ClipInput.HIDDEN)
FACEID = spec(AdapterKind.FACEID, source=Source.FACE)
PORTRAIT = spec(AdapterKind.FACEID, tokens=16, source=Source.FACE)
FACEID_PLUS = spec(AdapterKind.FACEID_PLUS, clip_dim=1280, clip_input=ClipInput.HIDDEN, source=Source.FACE)


@pytest.mark.parametrize(
    ("preset", "loaded"),
    [(Preset.STANDARD, PLAIN_H), (Preset.VIT_G, PLAIN_G), (Preset.PLUS, PLUS_H), (Preset.PLUS_FACE, PLUS_H),
     (Preset.FACEID, FACEID), (Preset.PORTRAIT, PORTRAIT), (Preset.FACEID_PLUS_V2, FACEID_PLUS)],
)  # fmt: skip
def test_matching_adapters_pass(preset, loaded) -> None:
    check_adapter(preset, SDXL, loaded, "file")


def test_a_plus_file_under_the_standard_name_is_refused() -> None:
    with pytest.raises(AdapterFormatError) as error:
        check_adapter(Preset.STANDARD, SDXL, PLUS_H, "ip-adapter_sdxl_vit-h.safetensors")
    assert str(error.value) == (
        "ip-adapter_sdxl_vit-h.safetensors is an IP-Adapter Plus (16 tokens, reading 1280-wide CLIP "
        "penultimate_hidden_states), not the 'standard' preset's ip-adapter_sdxl_vit-h.safetensors (a plain "
        "IP-Adapter reading ViT-H CLIP vision). The file is misnamed: give it its published name. It fits the "
        "preset(s) 'plus', 'plus face'."
    )


@pytest.mark.parametrize(
    ("preset", "loaded", "fits"),
    [(Preset.STANDARD, PLAIN_G, "'vit-g'"), (Preset.VIT_G, PLAIN_H, "'light', 'standard'"),
     (Preset.FACEID, PORTRAIT, "'portrait'"), (Preset.PORTRAIT, FACEID, "'faceid'"),
     (Preset.FACEID_PLUS_V2, FACEID, "'faceid'")],
)  # fmt: skip
def test_misnamed_adapters_are_refused_naming_what_they_fit(preset, loaded, fits) -> None:
    with pytest.raises(AdapterFormatError, match=f"It fits the preset\\(s\\) {fits}\\.$"):
        check_adapter(preset, SDXL, loaded, "x.bin")


def test_an_sd15_file_under_an_sdxl_name_is_refused() -> None:
    with pytest.raises(AdapterFormatError, match=r"made for SD1\.5 .* the model is SDXL.*ip-adapter_sdxl_vit-h"):
        check_adapter(Preset.STANDARD, SDXL, spec(AdapterKind.IP_ADAPTER, 768, 4, 1024, ClipInput.EMBEDS), "x")


def test_clip_vision_width_must_be_what_the_adapter_reads() -> None:
    check_clip_vision(Preset.PLUS, PLUS_H, VIT_H, (1024, 1280))
    check_clip_vision(Preset.VIT_G, PLAIN_G, VIT_G, (1280, 1664))
    with pytest.raises(ValueError, match=f"gives 1664-wide CLIP penultimate_hidden_states.*reads 1280.*{VIT_H}"):
        check_clip_vision(Preset.PLUS, PLUS_H, VIT_H, (1280, 1664))
    with pytest.raises(ValueError, match=f"gives 1024-wide CLIP image_embeds.*reads 1280.*{VIT_G}"):
        check_clip_vision(Preset.VIT_G, PLAIN_G, VIT_G, (1024, 1280))
    check_clip_vision(Preset.FACEID, FACEID, VIT_H, (1280, 1664))  # reads no CLIP: nothing to check
