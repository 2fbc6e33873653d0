"""Tier 2: the ComfyUI training host on the tiny SDXL model: its denoiser against the UNet called by hand, and a
short training run on a synthetic dataset."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bolid_core.adapter import AdapterKind, AdapterSpec, ClipInput, Source, load_adapter, new_bolid_adapter
from bolid_core.train.adapter_task import AdapterAttention, TextCondition
from bolid_core.train.config import TrainConfig


def tiny_adapter(model, seed: int = 0):
    from bolid_core.comfy.attn2 import attn2_layer_keys

    widths = tuple(width for _, width in attn2_layer_keys(model))
    spec = AdapterSpec(AdapterKind.BOLID, 2048, widths, {Source.IMAGE: 4}, clip_dim=32, clip_input=ClipInput.EMBEDS)
    adapter = new_bolid_adapter(spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return adapter


def sdxl_y(base, pooled: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """SDXL's ADM vector written out: pooled ‖ embed(h, w, crop_h=0, crop_w=0, target_h, target_w)."""
    sizes = [height, width, 0, 0, height, width]
    flat = torch.cat([base.embedder(torch.tensor([float(size)])) for size in sizes]).flatten()
    return torch.cat([pooled, flat[None].repeat(pooled.shape[0], 1)], dim=1)


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, width = q.shape
    d = width // heads
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).expand(b, -1, -1, -1).transpose(-1, -2) / math.sqrt(d)
    out = scores.softmax(dim=-1) @ split(v).expand(b, -1, -1, -1)
    return out.transpose(1, 2).reshape(b, n, width)


def unet_by_hand(model, noisy, timesteps, text, extra_attention=None):
    """ε of the unpatched UNet at DDPM step t on x_t (EPS models read x_t itself), with `extra_attention(layer, q,
    heads)` added after each layer's text attention when given."""
    from bolid_core.comfy.attn2 import attn2_layer_keys

    probe = model.clone()
    if extra_attention is not None:
        for layer, (key, _) in enumerate(attn2_layer_keys(model)):

            def patch(q, k, v, options, layer=layer):
                heads = options["n_heads"]
                return plain_attention(q, k, v, heads) + extra_attention(layer, q, heads)

            probe.set_model_attn2_replace(patch, *key)
    base = probe.model
    height, width = noisy.shape[-2:]
    y = sdxl_y(base, text.pooled, height * 8, width * 8)
    with torch.no_grad():
        return base.diffusion_model(
            noisy, timesteps.float(), context=text.context, y=y,
            transformer_options=dict(probe.model_options["transformer_options"]),
        )  # fmt: skip


def inputs(seed: int = 0, batch: int = 2):
    generator = torch.Generator().manual_seed(seed)
    noisy = torch.randn((batch, 4, 8, 8), generator=generator)
    text = TextCondition(
        torch.randn((batch, 77, 2048), generator=generator), torch.randn((batch, 1280), generator=generator)
    )
    return noisy, torch.tensor([999, 137][:batch]), text


def test_schedule_is_the_models_and_no_tokens_is_the_unpatched_unet(tiny_model) -> None:
    from bolid_core.comfy.train_host import ComfyDenoiser

    denoiser = ComfyDenoiser(tiny_model, AdapterAttention(tiny_adapter(tiny_model)))
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # SD's scaled-linear schedule
    torch.testing.assert_close(denoiser.schedule.alphas_cumprod, torch.cumprod(1 - betas, 0).float(), rtol=1e-5, atol=0)
    noisy, timesteps, text = inputs()
    with torch.no_grad():
        got = denoiser(noisy, timesteps, text)
    torch.testing.assert_close(got, unet_by_hand(tiny_model, noisy, timesteps, text), rtol=1e-4, atol=1e-4)


def test_tokens_add_the_adapter_attention_at_every_layer(tiny_model) -> None:
    from bolid_core.comfy.train_host import ComfyDenoiser

    adapter = tiny_adapter(tiny_model, seed=1)
    attention = AdapterAttention(adapter)
    denoiser = ComfyDenoiser(tiny_model, attention)
    noisy, timesteps, text = inputs(seed=1)
    tokens = torch.randn((2, 4, 2048), generator=torch.Generator().manual_seed(3))

    def adapter_term(layer, q, heads):
        kv = adapter.kv(layer, Source.IMAGE)
        return plain_attention(q, tokens @ kv.to_k.weight.T, tokens @ kv.to_v.weight.T, heads)

    expected = unet_by_hand(tiny_model, noisy, timesteps, text, adapter_term)
    with torch.no_grad(), attention.using({Source.IMAGE: tokens}):
        got = denoiser(noisy, timesteps, text)
    baseline = unet_by_hand(tiny_model, noisy, timesteps, text)
    assert (expected - baseline).abs().max() > 1e-3, "the adapter term is too small to tell apart"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_v_prediction_returns_v_of_the_models_x0(tiny_model) -> None:
    import comfy.model_sampling

    from bolid_core.comfy.train_host import ComfyDenoiser
    from bolid_core.train.losses import PredictionType

    class VSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
        pass

    v_model = tiny_model.clone()
    v_model.add_object_patch("model_sampling", VSampling(tiny_model.model.model_config))
    denoiser = ComfyDenoiser(v_model, AdapterAttention(tiny_adapter(tiny_model)))
    assert denoiser.schedule.prediction is PredictionType.V_PREDICTION
    noisy, timesteps, text = inputs(seed=2)
    with torch.no_grad():
        got = denoiser(noisy, timesteps, text)
    # A v model's UNet output is v itself: its input is x/sqrt(σ²+1) = x_t, as for ε.
    torch.testing.assert_close(got, unet_by_hand(tiny_model, noisy, timesteps, text), rtol=1e-4, atol=1e-4)


def test_gradients_reach_the_adapter_only_and_checkpointing_gives_the_same(tiny_model) -> None:
    from bolid_core.comfy.train_host import ComfyDenoiser

    adapter = tiny_adapter(tiny_model, seed=2).requires_grad_(True)
    noisy, timesteps, text = inputs(seed=3)
    tokens = torch.randn((1, 32), generator=torch.Generator().manual_seed(4))
    grads = []
    for checkpointing in (False, True):
        attention = AdapterAttention(adapter)
        denoiser = ComfyDenoiser(tiny_model, attention, gradient_checkpointing=checkpointing)
        adapter.zero_grad()
        with denoiser.session(), attention.using({Source.IMAGE: adapter.projection(Source.IMAGE)(tokens)}):
            denoiser(noisy, timesteps, text).square().mean().backward()
        grads.append([p.grad.clone() for p in adapter.parameters()])
    assert any(g.abs().sum() > 0 for g in grads[0])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-6)
    unet = tiny_model.get_model_object("diffusion_model")
    assert all(p.grad is None for p in unet.parameters())
    assert not any("forward" in vars(m) for m in unet.modules()), "checkpoint wrappers left on the UNet"


def test_adapter_overfits_a_reachable_target(tiny_model) -> None:
    """The UNet's ε with a teacher adapter is a target the trained adapter can reach exactly: its loss must fall."""
    from bolid_core.comfy.train_host import ComfyDenoiser

    generator = torch.Generator().manual_seed(6)
    noisy, timesteps, text = inputs(seed=7, batch=1)
    style = torch.randn((1, 32), generator=generator)
    teacher = tiny_adapter(tiny_model, seed=8)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.mul_(20.0)
    teacher_attention = AdapterAttention(teacher)
    with torch.no_grad(), teacher_attention.using({Source.IMAGE: teacher.projection(Source.IMAGE)(style)}):
        target = ComfyDenoiser(tiny_model, teacher_attention)(noisy, timesteps, text)
    adapter = tiny_adapter(tiny_model, seed=5).requires_grad_(True)
    attention = AdapterAttention(adapter)
    denoiser = ComfyDenoiser(tiny_model, attention)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=5e-2)
    losses = []
    with denoiser.session():
        for _ in range(10):
            with attention.using({Source.IMAGE: adapter.projection(Source.IMAGE)(style)}):
                loss = (denoiser(noisy, timesteps, text) - target).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def write_dataset(root: Path, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    for person in ("ann", "bob"):
        (root / person).mkdir(parents=True)
        for view in range(2):
            pixels = rng.integers(0, 255, (size, size + 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / person / f"{view}.png")
        (root / person / "caption.txt").write_text(f"a photo of {person}")
    return root


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.model.state_dict().items()}


@pytest.fixture()
def tiny_encoders(comfy_path):
    from bolid_test_models.tiny_models import tiny_clip_vision, tiny_sdxl_clip

    return tiny_sdxl_clip(seed=1), tiny_clip_vision(seed=3)


def test_training_run_writes_a_loadable_adapter_and_leaves_the_model_alone(
    tiny_model, tiny_vae, tiny_encoders, tmp_path: Path
) -> None:
    from bolid_core.comfy.train_host import TrainingModels, TrainingRun, train_adapter, with_overrides
    from bolid_core.train.state import latest_checkpoint

    clip, clip_vision = tiny_encoders
    before_state, before_options = state_of(tiny_model), repr(tiny_model.model_options)
    before_patches = dict(tiny_model.patches)
    config = with_overrides(
        TrainConfig(), {"seed": 3},
        steps={"max_steps": 3, "batch_size": 2}, data={"resolution": 64, "min_views": 2},
        adapter={"image_tokens": 2, "face_tokens": 0, "body_tokens": 0},
        loss={"alpha_id": 0.0, "beta_clip": 0.0}, checkpoint={"every_steps": 2},
    )  # fmt: skip
    run = TrainingRun(
        write_dataset(tmp_path / "data"), tmp_path / "out" / "mine.safetensors", tmp_path / "run", tmp_path / "cache",
        config,
    )  # fmt: skip
    steps = []
    result = train_adapter(
        TrainingModels(tiny_model, tiny_vae, clip, clip_vision), run, on_step=lambda s, n, t: steps.append((s, n, t))
    )
    assert [s for s, _, _ in steps] == [1, 2, 3] and all(n == 3 for _, n, _ in steps)
    assert len(result.history) == 3 and all(math.isfinite(r["loss"]) for r in result.history)
    loaded = load_adapter(result.adapter_path)
    assert loaded.spec.tokens == {Source.IMAGE: 2} and loaded.spec.clip_dim == 1024
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name.endswith("3")
    assert repr(tiny_model.model_options) == before_options and dict(tiny_model.patches) == before_patches
    after = state_of(tiny_model)
    assert all(torch.equal(after[k], v) for k, v in before_state.items()), "the user's MODEL weights changed"


def test_node_is_registered_and_refuses_names_that_leave_models_bolid(comfy_nodes) -> None:
    from bolid_core.comfy.folders import adapter_save_path

    assert "BoLIDTrainAdapter" in comfy_nodes
    for bad in ("../escape", "a/b", "", "..", "x\\y"):
        with pytest.raises(ValueError):
            adapter_save_path(bad)
    assert adapter_save_path("mine").endswith("/bolid/mine.safetensors")


def four_step_run(tmp_path: Path):
    """Four steps of an image-only adapter on the tiny dataset, one example a step."""
    from bolid_core.comfy.train_host import TrainingRun, with_overrides

    config = with_overrides(
        TrainConfig(), steps={"max_steps": 4, "batch_size": 1}, data={"resolution": 64, "min_views": 2},
        adapter={"image_tokens": 2, "face_tokens": 0, "body_tokens": 0}, loss={"alpha_id": 0.0, "beta_clip": 0.0},
    )  # fmt: skip
    return TrainingRun(
        write_dataset(tmp_path / "data"), tmp_path / "mine.safetensors", tmp_path / "run", tmp_path / "cache", config
    )


def test_cancel_keeps_the_last_step_and_resume_continues(tiny_model, tiny_vae, tiny_encoders, tmp_path: Path) -> None:
    from bolid_core.comfy.train_host import TrainingModels, train_adapter
    from bolid_core.train.state import latest_checkpoint, load_checkpoint

    class Cancelled(Exception):
        pass

    clip, clip_vision = tiny_encoders
    run = four_step_run(tmp_path)
    models = TrainingModels(tiny_model, tiny_vae, clip, clip_vision)

    def cancel_at_two(step, total, terms):
        if step == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        train_adapter(models, run, on_step=cancel_at_two)
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert checkpoint is not None and load_checkpoint(checkpoint).state.step == 2
    assert not run.adapter_path.exists()
    steps = []
    result = train_adapter(models, replace(run, resume=True), on_step=lambda s, n, t: steps.append(s))
    assert steps == [3, 4] and len(result.history) == 4 and run.adapter_path.exists()


def test_cancel_from_inside_the_unet_checkpoints_and_reaches_comfyui_as_a_cancel(
    tiny_model, tiny_vae, tiny_encoders, tmp_path: Path
) -> None:
    """ComfyUI's Cancel surfaces in whichever op runs next, inside the UNet's forward: still a checkpoint."""
    import comfy.model_management

    from bolid_core.comfy.train_host import TrainingModels, train_adapter
    from bolid_core.train.state import latest_checkpoint, load_checkpoint

    clip, clip_vision = tiny_encoders
    run = four_step_run(tmp_path)

    def press_cancel_at_two(step, total, terms):
        if step == 2:
            comfy.model_management.interrupt_current_processing(True)

    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            train_adapter(TrainingModels(tiny_model, tiny_vae, clip, clip_vision), run, on_step=press_cancel_at_two)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert checkpoint is not None and load_checkpoint(checkpoint).state.step == 2


def test_body_source_trains_from_a_pose_model_and_body_encoder(
    tiny_model, tiny_vae, tiny_encoders, tmp_path: Path
) -> None:
    from pose_factories import build_varied_pose_model

    from bolid_core.body.pose import load_pose_model
    from bolid_core.body.vae import BodyEncoder, BodyVAE, BodyVAEConfig
    from bolid_core.comfy.train_host import TrainingModels, TrainingRun, train_adapter, with_overrides

    clip, _ = tiny_encoders
    pose_model = load_pose_model(build_varied_pose_model(tmp_path / "pose.pt"))
    torch.manual_seed(0)
    body = BodyEncoder(BodyVAE(BodyVAEConfig(latent_dim=24, image_size=64, channels=(16, 32), map_size=16)), "x")
    config = with_overrides(
        TrainConfig(), steps={"max_steps": 2, "batch_size": 2}, data={"resolution": 64, "min_views": 2},
        adapter={"image_tokens": 4, "face_tokens": 0, "body_tokens": 3}, loss={"alpha_id": 0.0, "beta_clip": 0.0},
        body={"views": 2},
    )  # fmt: skip
    run = TrainingRun(
        write_dataset(tmp_path / "data"), tmp_path / "body.safetensors", tmp_path / "run", tmp_path / "cache", config
    )
    models = TrainingModels(tiny_model, tiny_vae, clip, pose_model=pose_model, body_encoder=body)
    result = train_adapter(models, run)
    spec = load_adapter(result.adapter_path).spec
    assert spec.tokens == {Source.BODY: 3} and spec.body_dim == 24, "the image source needs clip_vision: left out"
    assert len(result.history) == 2 and all(math.isfinite(r["loss"]) for r in result.history)


def test_face_source_fuses_arcface_with_the_style_embeds(tiny_model, tiny_vae, tiny_encoders, tmp_path: Path) -> None:
    from onnx_factories import build_model_pack, face_image

    from bolid_core.comfy.train_host import TrainingModels, TrainingRun, train_adapter, with_overrides
    from bolid_core.identity.face import ExecutionProvider, load_face_analysis

    clip, clip_vision = tiny_encoders
    build_model_pack(tmp_path / "insightface", "buffalo_l")
    analyzer = load_face_analysis(tmp_path / "insightface", "buffalo_l", ExecutionProvider.CPU)
    root = tmp_path / "faces"
    for person, side in (("ann", 36), ("bob", 44)):
        (root / person).mkdir(parents=True)
        for view in range(2):
            Image.fromarray(face_image(256, 256, [(128, 96 + 32 * view, side)])).save(root / person / f"{view}.png")
    config = with_overrides(
        TrainConfig(), steps={"max_steps": 2, "batch_size": 2}, data={"resolution": 64, "min_views": 2},
        adapter={"image_tokens": 0, "face_tokens": 2, "body_tokens": 0, "fusion_dim": 16},
        loss={"alpha_id": 0.0, "beta_clip": 0.0},
    )  # fmt: skip
    run = TrainingRun(root, tmp_path / "face.safetensors", tmp_path / "run", tmp_path / "cache", config)
    result = train_adapter(TrainingModels(tiny_model, tiny_vae, clip, clip_vision, face_analyzer=analyzer), run)
    spec = load_adapter(result.adapter_path).spec
    assert spec.tokens == {Source.FACE: 2} and spec.clip_dim == 1024 and spec.fusion_dim == 16
    assert spec.text_dim == 1280, "the text prior reads the pooled CLIP-G text embedding"
    assert {"prior", "diff"} <= set(result.history[-1]), "the text prior was not trained"


def test_clip_loss_needs_the_vision_and_text_embeddings_of_one_clip(comfy_path, tmp_path) -> None:
    """L_CLIP (beta_clip) compares the decoded image's CLIP-vision embedding with the caption's pooled text one: with
    widths that differ (ViT-H's 1024 against SDXL's CLIP-G 1280) the node refuses to start instead of training
    without the term; with one width the term is computed at every step. The models are loaded under inference mode,
    as ComfyUI's loader nodes run."""
    from bolid_test_models.tiny_models import tiny_clip_vision, tiny_sdxl_clip, tiny_sdxl_model, tiny_sdxl_vae

    from bolid_core.comfy.train_host import TrainingModels, TrainingRun, train_adapter, with_overrides

    with torch.inference_mode():
        model, vae, clip = tiny_sdxl_model(seed=0), tiny_sdxl_vae(seed=2), tiny_sdxl_clip(seed=1)
        vit_h_like, one_clip = tiny_clip_vision(seed=3), tiny_clip_vision(seed=3, projection_dim=1280)

    def run(clip_vision, name: str):
        config = with_overrides(
            TrainConfig(), {"seed": 3},
            steps={"max_steps": 2, "batch_size": 1}, data={"resolution": 64, "min_views": 2},
            adapter={"image_tokens": 2, "face_tokens": 0, "body_tokens": 0},
            loss={"alpha_id": 0.0, "beta_clip": 0.5, "clip_every_steps": 1, "clip_timesteps": (0, 999)},
        )  # fmt: skip
        folder = tmp_path / name
        training = TrainingRun(
            write_dataset(folder / "data"), folder / "a.safetensors", folder / "run", folder / "cache", config
        )
        return train_adapter(TrainingModels(model, vae, clip, clip_vision), training)

    with pytest.raises(ValueError, match=r"\(1024 wide\) with the caption's pooled text embedding \(1280 wide\)"):
        run(vit_h_like, "vit_h_like")
    siglip_like = tiny_clip_vision(seed=3, projection_dim=1280)
    siglip_like.model.vision_model.output_layernorm = True  # what marks ComfyUI's SigLIP vision models
    with pytest.raises(ValueError, match=r"clip_vision is SigLIP\. For SDXL connect CLIP-ViT-bigG-14"):
        run(siglip_like, "siglip_like")
    result = run(one_clip, "one_clip")
    assert [record["clip"] > 0 for record in result.history] == [True, True], result.history


def test_image_embeds_with_grad_equal_comfyuis_and_carry_the_gradient(comfy_path) -> None:
    from bolid_test_models.tiny_models import tiny_clip_vision

    from bolid_core.comfy.train_host import image_embeds_with_grad

    vision = tiny_clip_vision(seed=4, projection_dim=1280)
    pixels = torch.randn((2, 3, 56, 56), generator=torch.Generator().manual_seed(5))  # the tiny model's image_size
    with torch.no_grad():
        expected = vision.model(pixel_values=pixels, intermediate_output=-2)[2]  # ComfyUI's own forward
    leaf = pixels.clone().requires_grad_(True)
    embeds = image_embeds_with_grad(vision.model, leaf)
    assert embeds.shape == (2, 1280) and torch.allclose(embeds, expected, atol=1e-5, rtol=1e-5)
    embeds.square().sum().backward()
    assert leaf.grad is not None and bool(leaf.grad.abs().sum() > 0)
