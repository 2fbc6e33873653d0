"""The diffusers host: our attn2 processor against diffusers' own and against attention written out per head; the
layer order an adapter's layers follow; gradient checkpointing; the SDXL loaders."""

from __future__ import annotations

import math

import diffusers_factories as factories
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from bolid_core.adapter.checkpoint import AdapterKind, AdapterSpec, ClipInput, Source, new_bolid_adapter
from bolid_core.train.adapter_task import AdapterAttention, AdapterTask, LossWeights, TextCondition, TrainBatch
from bolid_core.train.config import TrainTarget
from bolid_core.train.diffusers_host import (
    BoLIDAttnProcessor,
    DiffusersDenoiser,
    ModelFolderError,
    attn2_names,
    encode_prompts,
    install_adapter_processors,
    load_clip_score,
    load_clip_vision,
    load_sdxl,
    unet_layer_widths,
    unet_text_kv,
)
from bolid_core.train.dropout import ConditionDropout

CONTEXT = sum(factories.TEXT_WIDTHS)
# The tiny SDXL UNet's cross-attention layers, in IP-Adapter's order (down, up, mid) and their widths.
EXPECTED_LAYERS = [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2", 32),
    ("down_blocks.1.attentions.1.transformer_blocks.0.attn2", 32),
    ("down_blocks.2.attentions.0.transformer_blocks.0.attn2", 64),
    ("down_blocks.2.attentions.1.transformer_blocks.0.attn2", 64),
    ("up_blocks.0.attentions.0.transformer_blocks.0.attn2", 64),
    ("up_blocks.0.attentions.1.transformer_blocks.0.attn2", 64),
    ("up_blocks.0.attentions.2.transformer_blocks.0.attn2", 64),
    ("up_blocks.1.attentions.0.transformer_blocks.0.attn2", 32),
    ("up_blocks.1.attentions.1.transformer_blocks.0.attn2", 32),
    ("up_blocks.1.attentions.2.transformer_blocks.0.attn2", 32),
    ("mid_block.attentions.0.transformer_blocks.0.attn2", 64),
]


def image_adapter(unet, tokens: int = 3, seed: int = 5):
    torch.manual_seed(seed)
    spec = AdapterSpec(
        AdapterKind.BOLID, CONTEXT, unet_layer_widths(unet), {Source.IMAGE: tokens},
        clip_dim=factories.CLIP_VISION_EMBEDS, clip_input=ClipInput.EMBEDS,
    )  # fmt: skip
    return new_bolid_adapter(spec)


def unet_inputs(batch: int = 2, seed: int = 7):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 4, 8, 8), generator=generator)
    context = torch.randn((batch, factories.TOKENS, CONTEXT), generator=generator)
    pooled = torch.randn((batch, factories.TEXT_WIDTHS[1]), generator=generator)
    return x, torch.tensor([10, 700][:batch]), TextCondition(context, pooled)


def naive_attention(query, key, value, heads):
    """softmax(q k^T / sqrt(d)) v, one head and one sample at a time."""
    batch, _, width = query.shape
    dim = width // heads
    out = torch.zeros_like(query)
    for b in range(batch):
        for h in range(heads):
            cols = slice(h * dim, (h + 1) * dim)
            scores = query[b, :, cols] @ key[b, :, cols].T / math.sqrt(dim)
            out[b, :, cols] = scores.softmax(dim=-1) @ value[b, :, cols]
    return out


def test_processor_without_tokens_is_diffusers_attention_exactly():
    unet = factories.tiny_unet()
    x, t, text = unet_inputs()
    added = {"text_embeds": text.pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=text.context, added_cond_kwargs=added).sample
        install_adapter_processors(unet, AdapterAttention(image_adapter(unet)))
        assert all(isinstance(p, AttnProcessor2_0) for k, p in unet.attn_processors.items() if "attn1" in k)
        got = unet(x, t, encoder_hidden_states=text.context, added_cond_kwargs=added).sample
    assert torch.equal(got, expected)


@pytest.mark.parametrize("layer", [0, 4, 10])
def test_processor_adds_the_adapter_term_to_text_attention_before_to_out(layer):
    unet = factories.tiny_unet()
    adapter = image_adapter(unet, tokens=3)
    attention = AdapterAttention(adapter, {Source.IMAGE: 0.7})
    name = EXPECTED_LAYERS[layer][0]
    attn = unet.get_submodule(name)
    generator = torch.Generator().manual_seed(layer)
    hidden = torch.randn((2, 9, attn.to_q.in_features), generator=generator)
    context = torch.randn((2, factories.TOKENS, CONTEXT), generator=generator)
    tokens = torch.randn((2, 3, CONTEXT), generator=generator)
    with torch.no_grad(), attention.using({Source.IMAGE: tokens}):
        got = BoLIDAttnProcessor(attention, layer)(attn, hidden, context)
        query = hidden @ attn.to_q.weight.T
        text = naive_attention(query, context @ attn.to_k.weight.T, context @ attn.to_v.weight.T, attn.heads)
        kv = adapter.kv(layer, Source.IMAGE)
        image = naive_attention(query, tokens @ kv.to_k.weight.T, tokens @ kv.to_v.weight.T, attn.heads)
        expected = (text + 0.7 * image) @ attn.to_out[0].weight.T + attn.to_out[0].bias
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - BoLIDAttnProcessor(attention, layer)(attn, hidden, context)).abs().max() > 1e-3  # tokens mattered


def test_layer_order_and_widths_follow_the_module_names():
    unet = factories.tiny_unet()
    assert attn2_names(unet) == [name for name, _ in EXPECTED_LAYERS]
    assert unet_layer_widths(unet) == tuple(width for _, width in EXPECTED_LAYERS)
    attention = AdapterAttention(image_adapter(unet))
    install_adapter_processors(unet, attention)
    processors = unet.attn_processors
    for layer, (name, _) in enumerate(EXPECTED_LAYERS):
        assert processors[f"{name}.processor"].layer == layer
    for (weight_k, weight_v), (name, _) in zip(unet_text_kv(unet), EXPECTED_LAYERS, strict=True):
        assert weight_k is not None and torch.equal(weight_k, unet.get_submodule(name).to_k.weight)
        assert torch.equal(weight_v, unet.get_submodule(name).to_v.weight)


def _loss_and_grads(checkpointing: bool):
    unet = factories.tiny_unet()
    adapter = image_adapter(unet)
    attention = AdapterAttention(adapter)
    denoiser = DiffusersDenoiser(unet, factories.sdxl_scheduler(), attention, 64, checkpointing)
    task = AdapterTask(TrainTarget.ADAPTER, ConditionDropout(0.0, 0.0, 0.0, 0.0), LossWeights(), denoiser)
    generator = torch.Generator().manual_seed(3)
    _, _, text = unet_inputs()
    batch = TrainBatch(
        persons=["a", "b"], latents=torch.randn((2, 4, 8, 8), generator=generator), context=text.context,
        pooled=text.pooled, style=torch.randn((2, factories.CLIP_VISION_EMBEDS), generator=generator),
    )  # fmt: skip
    loss = task(batch, 0, torch.Generator().manual_seed(11))["loss"]
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in adapter.named_parameters()}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    loss, grads = _loss_and_grads(False)
    loss_ckpt, grads_ckpt = _loss_and_grads(True)
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=0)
    assert grads.keys() == grads_ckpt.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-8, msg=name)
    assert any(grad.abs().max() > 0 for name, grad in grads.items() if name.startswith("layers."))


def test_sdxl_folder_loads_and_encodes_prompts_as_sdxl_does(tmp_path):
    factories.write_tiny_sdxl(tmp_path / "sdxl")
    models = load_sdxl(tmp_path / "sdxl")
    text = encode_prompts(models, ["a cat", ""])
    assert text.context.shape == (2, factories.TOKENS, CONTEXT) and text.pooled.shape == (2, factories.TEXT_WIDTHS[1])
    ids = [tok(["a cat"], padding="max_length", max_length=factories.TOKENS, return_tensors="pt").input_ids
           for tok in (models.tokenizer, models.tokenizer_2)]  # fmt: skip
    with torch.no_grad():
        out_1 = models.text_encoder(ids[0], output_hidden_states=True)
        out_2 = models.text_encoder_2(ids[1], output_hidden_states=True)
    torch.testing.assert_close(text.context[:1, :, : factories.TEXT_WIDTHS[0]], out_1.hidden_states[-2])
    torch.testing.assert_close(text.context[:1, :, factories.TEXT_WIDTHS[0] :], out_2.hidden_states[-2])
    torch.testing.assert_close(text.pooled[:1], out_2.text_embeds)


def test_missing_model_folders_are_named(tmp_path):
    factories.write_tiny_sdxl(tmp_path / "sdxl")
    (tmp_path / "sdxl" / "vae" / "config.json").unlink()
    with pytest.raises(ModelFolderError, match=r"vae.*config\.json"):
        load_sdxl(tmp_path / "sdxl")
    with pytest.raises(ModelFolderError, match="nowhere"):
        load_sdxl(tmp_path / "nowhere")
    with pytest.raises(ModelFolderError, match="CLIP-vision"):
        load_clip_vision(tmp_path / "no_clip")


def test_clip_image_embedder_is_differentiable_and_matches_the_model(tmp_path):
    model = factories.tiny_clip_vision()
    model.save_pretrained(tmp_path / "clip")
    embedder = load_clip_vision(tmp_path / "clip")
    images = torch.rand((2, 28, 28, 3), requires_grad=True)
    embeds = embedder(images)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).reshape(1, 3, 1, 1)
    with torch.no_grad():  # 28 px is the model's size: no resize, only the normalisation
        expected = model(pixel_values=(images.permute(0, 3, 1, 2) - mean) / std).image_embeds
    torch.testing.assert_close(embeds, expected, rtol=1e-5, atol=1e-6)
    embeds.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_clip_scorer_embeds_images_and_captions_in_the_shared_space(tmp_path):
    import transformers

    folder = factories.write_tiny_full_clip(tmp_path / "clip")
    scorer = load_clip_score(folder)
    clip = transformers.CLIPModel.from_pretrained(folder)
    images = torch.rand((2, 28, 28, 3), requires_grad=True)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        pooled = clip.vision_model(pixel_values=(images.permute(0, 3, 1, 2) - mean) / std).pooler_output
        ids = factories.tiny_tokenizer()(["a cat"], padding="max_length", return_tensors="pt").input_ids
        text = clip.text_projection(clip.text_model(input_ids=ids).pooler_output)
    embeds = scorer.image(images)
    torch.testing.assert_close(embeds, clip.visual_projection(pooled), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scorer.text("a cat"), text, rtol=1e-5, atol=1e-6)
    embeds.sum().backward()
    assert images.grad.abs().sum() > 0


def test_a_pickled_weights_file_is_never_loaded(tmp_path):
    """A CLIP-vision folder holding only pytorch_model.bin (a pickle) is refused by name, not unpickled."""
    import transformers
    from safetensors.torch import load_file

    from bolid_core.train.diffusers_host import ModelFolderError, load_clip_vision

    folder = tmp_path / "pickled_vision"
    factories.tiny_clip_vision().save_pretrained(folder)
    weights = folder / "model.safetensors"
    torch.save(load_file(str(weights)), folder / "pytorch_model.bin")
    weights.unlink()
    real = transformers.CLIPVisionModelWithProjection.from_pretrained
    assert real(folder, local_files_only=True) is not None  # the file itself is fine: only the format is refused
    with pytest.raises(ModelFolderError, match="cannot be loaded"):
        load_clip_vision(folder)
