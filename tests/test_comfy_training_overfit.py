"""Tier 2: the ComfyUI training node's path learns. `train_adapter` on a tiny synthetic dataset, with the tiny SDXL
MODEL, VAE, CLIP and CLIP vision, cuts its adapter's diffusion loss in excess of the zero predictor (E[ε²]) below
half of the initial adapter's.

The tiny UNet is random and frozen, so no adapter can make it denoise; what the adapter can learn is to stop the
frozen network's output from adding error, the part of the loss above E[ε²]. Both adapters are scored by a loop
written here (not AdapterTask) on the same seeded timesteps and noise over every cached example."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from train_cli_factories import IMAGES_PER_PERSON, PERSONS, SIZE, write_people

from bolid_core.adapter import Source, load_adapter
from bolid_core.train.adapter_task import AdapterAttention, TextCondition
from bolid_core.train.config import TrainConfig

STEPS = 48
LEARNING_RATE = 1e-2
DRAWS = 3  # seeded (timestep, noise) draws per example in the measure


def training_config(steps: int, lr: float) -> TrainConfig:
    """The image source only, every condition kept (dropout 0) and no auxiliary losses: the loss is L_diff alone."""
    from bolid_core.comfy.train_host import with_overrides

    return with_overrides(
        TrainConfig(), {"seed": 3},
        optimizer={"lr": lr, "weight_decay": 0.0, "max_grad_norm": 1.0},
        steps={"max_steps": steps, "batch_size": 2}, data={"resolution": SIZE, "min_views": IMAGES_PER_PERSON},
        adapter={"image_tokens": 2, "face_tokens": 0, "body_tokens": 0},
        loss={"alpha_id": 0.0, "beta_clip": 0.0},
        dropout={"image": 0.0, "face": 0.0, "body": 0.0, "text": 0.0},
        checkpoint={"every_steps": 1000},
    )  # fmt: skip


def sd_alphas_cumprod() -> torch.Tensor:
    """ᾱ_t of SD/SDXL's scaled-linear schedule (β from 0.00085 to 0.012 over 1000 steps), written out."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def fixed_draws(examples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAWS timesteps (spread over the whole schedule) and noises per example, the same for every adapter scored."""
    generator = torch.Generator().manual_seed(1234)
    timesteps = torch.randint(0, 1000, (DRAWS, examples), generator=generator)
    noise = torch.randn((DRAWS, examples, 4, SIZE // 8, SIZE // 8), generator=generator)
    return timesteps, noise


def excess_loss(model, adapter, dataset) -> float:
    """mean ‖ε̂ − ε‖² − mean ‖ε‖² over the fixed draws: the loss above what predicting ε = 0 scores."""
    from bolid_core.comfy.train_host import ComfyDenoiser

    examples = [dataset[index].tensors for index in range(len(dataset))]
    x0 = torch.stack([example["latents"]["latents"] for example in examples])
    text = TextCondition(
        torch.stack([example["text"]["context"] for example in examples]),
        torch.stack([example["text"]["pooled"] for example in examples]),
    )
    style = torch.stack([example["style"]["image_embeds"] for example in examples])
    timesteps, noise = fixed_draws(len(examples))
    alpha_bar = sd_alphas_cumprod()
    attention = AdapterAttention(adapter.float().eval())
    denoiser = ComfyDenoiser(model, attention)
    adapter.to(denoiser.device)
    errors, baseline = [], []
    with torch.no_grad():
        tokens = {Source.IMAGE: adapter.projection(Source.IMAGE)(style.float().to(denoiser.device))}
        for draw in range(DRAWS):
            ab = alpha_bar[timesteps[draw]].reshape(-1, 1, 1, 1)
            noisy = ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise[draw]  # DDPM eq. 4
            with attention.using(tokens):
                predicted = denoiser(noisy, timesteps[draw], text).float().cpu()
            errors.append((predicted - noise[draw]).square().mean())
            baseline.append(noise[draw].square().mean())
    return (torch.stack(errors).mean() - torch.stack(baseline).mean()).item()


@pytest.fixture()
def loud_model(tiny_model):
    """The tiny SDXL MODEL with its output GroupNorm's scale at 1 (randomize_ draws it near 0.02, which leaves ε̂
    near 0 and nothing for the adapter to correct): its frozen ε̂ is O(1) and adds error to the zero predictor's."""
    with torch.no_grad():
        tiny_model.get_model_object("diffusion_model").out[0].weight.fill_(1.0)
    return tiny_model


@pytest.fixture()
def tiny_encoders(comfy_path):
    from bolid_test_models.tiny_models import tiny_clip_vision, tiny_sdxl_clip

    return tiny_sdxl_clip(seed=1), tiny_clip_vision(seed=3)


def train(model, vae, encoders, tmp_path: Path, monkeypatch, steps: int, lr: float):
    """The node's call, train_adapter; returns the adapter it started from (a copy of new_adapter's result, before
    the first step), the adapter file loaded back, the run's loss history and its cache."""
    from bolid_core.comfy import train_host

    started, cached = [], []
    new_adapter, build_cache = train_host.new_adapter, train_host.build_cache

    def recording_new_adapter(*args, **kwargs):
        adapter = new_adapter(*args, **kwargs)
        started.append(copy.deepcopy(adapter))
        return adapter

    def recording_build_cache(*args, **kwargs):
        cached.append(build_cache(*args, **kwargs))
        return cached[-1]

    monkeypatch.setattr(train_host, "new_adapter", recording_new_adapter)
    monkeypatch.setattr(train_host, "build_cache", recording_build_cache)
    clip, clip_vision = encoders
    run = train_host.TrainingRun(
        write_people(tmp_path / "people"), tmp_path / "out" / "overfit.safetensors", tmp_path / "run",
        tmp_path / "cache", training_config(steps, lr),
    )  # fmt: skip
    result = train_host.train_adapter(train_host.TrainingModels(model, vae, clip, clip_vision), run)
    assert len(started) == 1 and len(cached) == 1
    return started[0], load_adapter(result.adapter_path), result.history, cached[0]


def test_node_training_halves_the_excess_loss(loud_model, tiny_vae, tiny_encoders, tmp_path, monkeypatch) -> None:
    initial, trained, history, dataset = train(
        loud_model, tiny_vae, tiny_encoders, tmp_path, monkeypatch, STEPS, LEARNING_RATE
    )
    assert len(dataset) == len(PERSONS) * IMAGES_PER_PERSON
    losses = [record["loss"] for record in history]
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses), losses
    quarter = STEPS // 4
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    assert last < first, f"per-step loss: first quarter {first:.3f}, last quarter {last:.3f}"

    before, after = excess_loss(loud_model, initial, dataset), excess_loss(loud_model, trained, dataset)
    print(f"excess loss {before:.4f} → {after:.4f}; per-step loss {first:.4f} → {last:.4f}")
    assert before > 0.05, f"the frozen UNet adds too little error to learn from: {before:.3f}"
    assert after < 0.5 * before, f"excess loss {before:.3f} → {after:.3f}"


def test_the_new_adapter_is_drawn_from_the_config_seed(loud_model, tiny_vae, tiny_encoders, tmp_path, monkeypatch):
    """Two runs with the same config.seed start from the same adapter, whatever the global RNG did before."""
    starts = []
    for attempt in range(2):
        torch.manual_seed(100 + attempt)  # a different global state before each run
        initial, _, _, _ = train(loud_model, tiny_vae, tiny_encoders, tmp_path / str(attempt), monkeypatch, 1, 1e-7)
        starts.append(initial)
    for (name, first), (_, second) in zip(starts[0].state_dict().items(), starts[1].state_dict().items(), strict=True):
        assert torch.equal(first, second), name
