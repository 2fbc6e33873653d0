"""Tier 2: several people through the real nodes and patch; who attends to whom, checked against attention written out.

Two regions on a 128 x 128 image: region 0 is image columns 0-47, region 1 columns 80-127, the strip between is
background. On the 8 x 8 grid of the first cross-attention layer (16 px per token) that is token columns 0-2, 5-7
and 3-4. Every expected value is computed here: K/V from the checkpoint's own tensors, softmax(QK^T/sqrt(d))V per
head, and the region of each token from the column numbers above.
"""

from __future__ import annotations

import pytest
import torch
from adapter_factories import TINY_SDXL_WIDTHS, faceid_ip_adapter
from plain_ip_adapter import attention_per_head as plain_attention
from safetensors.torch import save_file

from bolid_core.adapter import load_adapter
from bolid_core.adapter.tokens import body_tokens, face_tokens, hybrid_face_tokens
from bolid_core.body.body_id import sample_prior
from bolid_core.identity.embeds import FaceEmbeds

KEY, LAYER = ("input", 4, 0), 0  # IP-Adapter order: the first layer, 64 wide (one 64-dim head)
GRID = 8
REGION_COLUMNS = {0: (0, 1, 2), 1: (5, 6, 7)}
BACKGROUND_COLUMNS = (3, 4)
NEAREST_OF_BACKGROUND = {3: 0, 4: 1}  # column 3 is 1 from region 0 and 2 from region 1; column 4 the reverse
FACE_WEIGHT, BODY_WEIGHT = 0.8, 0.6


def region_masks() -> tuple[torch.Tensor, torch.Tensor]:
    left, right = torch.zeros(1, 128, 128), torch.zeros(1, 128, 128)
    left[..., :48] = 1.0
    right[..., 80:] = 1.0
    return left, right


def unit_faces(seed: int) -> FaceEmbeds:
    g = torch.Generator().manual_seed(seed)
    return FaceEmbeds(torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1))


def token_column(token: int) -> int:
    return token % GRID


def call(patched, q, k, v, cond_or_uncond=(0,), **extra):
    patch = patched.model_options["transformer_options"]["patches_replace"]["attn2"][KEY]
    options = extra | {
        "n_heads": q.shape[-1] // 64,
        "cond_or_uncond": list(cond_or_uncond),
        "sigmas": torch.full((q.shape[0],), 3.0),
        "original_shape": [q.shape[0], 4, 16, 16],
        "block": KEY[:2],
    }
    return patch(q, k, v, options)


def layer_inputs(batch: int, seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    width = TINY_SDXL_WIDTHS[LAYER]
    return tuple(torch.randn(batch, tokens, width, generator=g) for tokens in (GRID * GRID, 5, 5))


@pytest.fixture()
def faceid(tmp_path):
    state = faceid_ip_adapter(seed=2)
    path = tmp_path / "ip-adapter-faceid_sdxl.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return state, load_adapter(path)


def kv(state: dict, tokens: torch.Tensor):
    prefix = f"ip_adapter.{2 * LAYER + 1}"
    return tokens @ state[f"{prefix}.to_k_ip.weight"].T, tokens @ state[f"{prefix}.to_v_ip.weight"].T


def regions_from_nodes(comfy_nodes, people: list[dict]):
    add = comfy_nodes["BoLIDAddRegion"]
    regions = None
    for mask, person in zip(region_masks(), people, strict=True):
        (regions,) = add.execute(mask, 0, regions=regions, **person).result
    return regions


def apply(comfy_nodes, model, adapter, regions, background: str, **extra):
    numbers = {
        "image_weight": 1.0, "face_weight": FACE_WEIGHT, "body_weight": BODY_WEIGHT, "start_at": 0.0, "end_at": 1.0,
        "combine_references": "average", "faceid_v2_shortcut": 1.0,
    }  # fmt: skip
    (patched,) = (
        comfy_nodes["BoLIDApplyAdapter"]
        .execute(model, adapter, **numbers, regions=regions, region_background=background, **extra)
        .result
    )
    return patched


@pytest.mark.parametrize("background", ["none", "average", "nearest"])
def test_each_region_attends_to_its_own_face_and_background_follows_the_rule(
    comfy_nodes, tiny_model, faceid, background
) -> None:
    state, adapter = faceid
    faces = [unit_faces(1), unit_faces(2)]
    regions = regions_from_nodes(comfy_nodes, [{"face_embeds": face} for face in faces])
    patched = apply(comfy_nodes, tiny_model, adapter, regions, background)
    q, k, v = layer_inputs(2)
    out = call(patched, q, k, v, cond_or_uncond=(1, 0))  # the negative chunk first: routing by index, not position

    for row, on in ((0, False), (1, True)):
        terms = []
        for face in faces:
            on_tokens, off_tokens = face_tokens(adapter, face.arcface, None, None)
            terms.append(
                FACE_WEIGHT * plain_attention(q[row : row + 1], *kv(state, on_tokens if on else off_tokens), 1)
            )
        text = plain_attention(q[row : row + 1], k[row : row + 1], v[row : row + 1], 1)
        for token in range(GRID * GRID):
            column = token_column(token)
            owner = next((r for r, cols in REGION_COLUMNS.items() if column in cols), None)
            if owner is not None:
                expected = text[0, token] + terms[owner][0, token]
            elif background == "none":
                expected = text[0, token]
            elif background == "average":
                expected = text[0, token] + (terms[0][0, token] + terms[1][0, token]) / 2
            else:
                expected = text[0, token] + terms[NEAREST_OF_BACKGROUND[column]][0, token]
            torch.testing.assert_close(
                out[row, token], expected, rtol=1e-4, atol=1e-5, msg=f"chunk {row} (on={on}), token {token}"
            )


@pytest.mark.parametrize("background", ["none", "average", "nearest"])
def test_changing_one_identity_leaves_the_other_region_unchanged(comfy_nodes, tiny_model, faceid, background):
    _, adapter = faceid
    q, k, v = layer_inputs(1)
    outputs = []
    for second in (unit_faces(2), unit_faces(3)):
        regions = regions_from_nodes(comfy_nodes, [{"face_embeds": unit_faces(1)}, {"face_embeds": second}])
        outputs.append(call(apply(comfy_nodes, tiny_model, adapter, regions, background), q, k, v)[0])
    change = (outputs[0] - outputs[1]).abs().amax(dim=-1).reshape(GRID, GRID)
    assert change[:, list(REGION_COLUMNS[0])].max() <= 1e-6, "region 0 saw identity 1 change"
    assert change[:, list(REGION_COLUMNS[1])].min() > 1e-4, "region 1 must follow its own identity"
    background_change = change[:, list(BACKGROUND_COLUMNS)]
    if background == "none":
        assert background_change.max() <= 1e-6
    elif background == "average":
        assert background_change.min() > 1e-5
    else:
        assert change[:, 3].max() <= 1e-6 and change[:, 4].min() > 1e-5, "nearest: column 3 is region 0's"


def test_each_person_brings_face_and_body_through_the_fusion(comfy_nodes, tiny_model) -> None:
    """A FaceStudio adapter: region i gets face i fused with the style image, and body i; nothing of person j."""
    from bolid_test_models.tiny_models import tiny_clip_vision
    from hybrid_factories import hybrid_adapter

    adapter = hybrid_adapter(seed=3, image=False)
    clip_vision = tiny_clip_vision()
    style = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    people = [
        {"face_embeds": unit_faces(1), "body_id": sample_prior(756, seed=1)},
        {"face_embeds": unit_faces(2), "body_id": sample_prior(756, seed=2)},
    ]
    regions = regions_from_nodes(comfy_nodes, people)
    patched = apply(comfy_nodes, tiny_model, adapter, regions, "none", clip_vision=clip_vision, image=style)
    q, k, v = layer_inputs(1)
    out = call(patched, q, k, v)

    clip_embeds = clip_vision.encode_image(style).image_embeds.float()
    layer = adapter.layers[LAYER]
    text = plain_attention(q, k, v, 1)
    for region, person in enumerate(people):
        face_on, _ = hybrid_face_tokens(adapter, person["face_embeds"].arcface, clip_embeds, None, 1.0)
        body_on, _ = body_tokens(adapter, person["body_id"].c_body)
        face, body = layer["face"], layer["body"]
        expected = (
            text
            + FACE_WEIGHT * plain_attention(q, face_on @ face.to_k.weight.T, face_on @ face.to_v.weight.T, 1)
            + BODY_WEIGHT * plain_attention(q, body_on @ body.to_k.weight.T, body_on @ body.to_v.weight.T, 1)
        )
        for column in REGION_COLUMNS[region]:
            tokens = [row * GRID + column for row in range(GRID)]
            torch.testing.assert_close(out[0, tokens], expected[0, tokens], rtol=1e-4, atol=1e-5)
    background = [row * GRID + column for row in range(GRID) for column in BACKGROUND_COLUMNS]
    torch.testing.assert_close(out[0, background], text[0, background], rtol=1e-5, atol=1e-6)


def test_regional_setups_that_cannot_work_are_clear_errors(comfy_nodes, tiny_model, faceid) -> None:
    from hybrid_factories import hybrid_adapter

    _, adapter = faceid
    regions = regions_from_nodes(comfy_nodes, [{"face_embeds": unit_faces(1)}, {"body_id": sample_prior(756, 1)}])
    with pytest.raises(ValueError, match=r"no body source.*Region 1 has one"):
        apply(comfy_nodes, tiny_model, adapter, regions, "none")
    regions = regions_from_nodes(comfy_nodes, [{"face_embeds": unit_faces(1)}, {"face_embeds": unit_faces(2)}])
    with pytest.raises(ValueError, match="Regions carry their own faces"):
        apply(comfy_nodes, tiny_model, adapter, regions, "none", face_embeds=unit_faces(3))
    with pytest.raises(ValueError, match="mask_index 1 is past the mask batch"):
        comfy_nodes["BoLIDAddRegion"].execute(region_masks()[0], 1, face_embeds=unit_faces(1))
    fusion = hybrid_adapter(seed=3, image=False)
    bodies = regions_from_nodes(comfy_nodes, [{"body_id": sample_prior(756, 1)}, {"body_id": sample_prior(756, 2)}])
    with pytest.raises(ValueError, match=r"fuses a face with a style.*connect face_embeds"):
        apply(comfy_nodes, tiny_model, fusion, bodies, "none")


def test_regions_preview_colours_each_person(comfy_nodes) -> None:
    from bolid_core.identity.region_preview import region_colour

    regions = regions_from_nodes(comfy_nodes, [{"face_embeds": unit_faces(1)}, {"face_embeds": unit_faces(2)}])
    (preview,) = comfy_nodes["BoLIDRegionsPreview"].execute(regions).result
    assert preview.shape == (1, 128, 128, 3)
    pixels = (preview[0] * 255).round().to(torch.int64)
    canvas = 48  # the dark canvas with no image; inside region i a pixel goes halfway to colour i, rounded up
    for region, x in ((0, 20), (1, 100)):
        expected = [(canvas + channel + 1) // 2 for channel in region_colour(region)]
        assert pixels[10, x].tolist() == expected, f"region {region} is not drawn in its colour"
    assert pixels[10, 64].tolist() == [(3 * canvas + 4) // 8] * 3, "the background is darkened"


# --- one person from several embeddings, and the style parts of a FaceStudio adapter -------------------------


def test_a_mixed_identity_reaches_the_patch_as_the_weighted_sum_of_its_embeddings(comfy_nodes, tiny_model, faceid):
    """FaceStudio's e = sum beta_i e_i: the patch sees one identity made from 0.75 a + 0.25 b, not two references."""
    state, adapter = faceid
    a, b = unit_faces(1).arcface, unit_faces(2).arcface
    mixed = FaceEmbeds(torch.cat([a, b]), weights=torch.tensor([0.75, 0.25]))
    numbers = {
        "image_weight": 1.0, "face_weight": FACE_WEIGHT, "body_weight": 1.0, "start_at": 0.0, "end_at": 1.0,
        "combine_references": "concat", "faceid_v2_shortcut": 1.0,
    }  # fmt: skip
    (patched,) = comfy_nodes["BoLIDApplyAdapter"].execute(tiny_model, adapter, **numbers, face_embeds=mixed).result
    q, k, v = layer_inputs(1)
    tokens, _ = face_tokens(adapter, 0.75 * a + 0.25 * b, None, None)
    expected = plain_attention(q, k, v, 1) + FACE_WEIGHT * plain_attention(q, *kv(state, tokens), 1)
    torch.testing.assert_close(call(patched, q, k, v), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("connected", ["image", "prompt", "both"])
def test_the_style_image_and_prompt_blend_as_alpha(comfy_nodes, tiny_model, connected: str) -> None:
    """e = alpha e_image + (1 - alpha) e_text with the prompt's pooled embedding; one of them alone is used alone."""
    from bolid_test_models.tiny_models import tiny_clip_vision, tiny_conditioning
    from hybrid_factories import hybrid_adapter

    adapter = hybrid_adapter(seed=3, image=False, body=False)
    clip_vision = tiny_clip_vision()
    style = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    prompt = tiny_conditioning(4)
    face = unit_faces(1)
    extra = {"face_embeds": face, "style_image_share": 0.3}
    if connected in ("image", "both"):
        extra.update(clip_vision=clip_vision, image=style)
    if connected in ("prompt", "both"):
        extra["style_prompt"] = prompt
    (patched,) = (
        comfy_nodes["BoLIDApplyAdapter"]
        .execute(
            tiny_model, adapter, image_weight=1.0, face_weight=FACE_WEIGHT, body_weight=1.0, start_at=0.0, end_at=1.0,
            combine_references="average", faceid_v2_shortcut=1.0, **extra,
        )
        .result
    )  # fmt: skip

    projection = adapter.projection(adapter.spec.sources[0])
    clip_embeds = clip_vision.encode_image(style).image_embeds.float()
    pooled = prompt[0][1]["pooled_output"]
    with torch.no_grad():
        e_image = projection.fusion(torch.cat([clip_embeds, face.arcface], dim=-1))
        e_text = projection.fusion(torch.cat([projection.prior(pooled), face.arcface], dim=-1))
        e = {"image": e_image, "prompt": e_text, "both": 0.3 * e_image + 0.7 * e_text}[connected]
        tokens = projection.to_tokens(e)
    layer = adapter.layers[LAYER]["face"]
    q, k, v = layer_inputs(1)
    adapter_term = plain_attention(q, tokens @ layer.to_k.weight.T, tokens @ layer.to_v.weight.T, 1)
    expected = plain_attention(q, k, v, 1) + FACE_WEIGHT * adapter_term
    torch.testing.assert_close(call(patched, q, k, v), expected, rtol=1e-4, atol=1e-5)


def test_fastface_am_on_regional_identities_keeps_each_region_to_its_person(comfy_nodes, tiny_model, faceid) -> None:
    """AM2 as published on the face sources of two regions: every identity is manipulated, none leaks across."""
    from test_comfy_am import PUBLISHED_INPUTS

    _, adapter = faceid
    q, k, v = layer_inputs(1)
    outputs = []
    for second in (unit_faces(2), unit_faces(3)):
        regions = regions_from_nodes(comfy_nodes, [{"face_embeds": unit_faces(1)}, {"face_embeds": second}])
        model = apply(comfy_nodes, tiny_model, adapter, regions, "none")
        (manipulated,) = (
            comfy_nodes["BoLIDFastFaceAttention"]
            .execute(model, preset="AM2 (published)", source="face", **PUBLISHED_INPUTS)
            .result
        )
        patch = manipulated.model_options["transformer_options"]["patches_replace"]["attn2"][KEY]
        assert all(s.manipulation is not None for s in patch.applied.sources), "AM must reach every person's face"
        assert [s.region for s in patch.applied.sources] == [0, 1]
        # The call's sigma 3.0 is step 1 of this schedule: AM2's scale 1.55 and sharpness 5 apply.
        outputs.append(call(manipulated, q, k, v, sample_sigmas=torch.tensor([5.0, 3.0, 1.0, 0.0]))[0])
    change = (outputs[0] - outputs[1]).abs().amax(dim=-1).reshape(GRID, GRID)
    assert change[:, list(REGION_COLUMNS[0])].max() <= 1e-6, "region 0 saw identity 1 change under AM"
    assert change[:, list(REGION_COLUMNS[1])].min() > 1e-5
