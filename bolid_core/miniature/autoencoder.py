"""The miniature's image autoencoder: the folder's 4x AutoencoderKL trained from scratch on the world's renders.

After training, a scale k is folded into the weights (the posterior mean leaves quant_conv multiplied by k,
post_quant_conv divides its input by k), so that latents x 0.13025, SDXL's latent scale, have unit standard deviation.
The diffusers host and ComfyUI's SDXL latent format then both work unchanged on these latents.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..files import save_safetensors_atomic, write_text_atomic
from .models import IMAGE_SIZE, LATENT_CHANNELS, VAE_SCALING

KL_WEIGHT = 1e-4  # per latent element, against the per-pixel L1: keeps the posterior near N(0, 1) without blurring
LEARNING_RATE = 5e-4
INITIAL_LOGVAR = -8.0
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(
            f"images are {images.dtype} {images.shape}: give uint8 renders shaped (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3)."
        )
    if len(images) == 0:
        raise ValueError("No images to train the image autoencoder on: render the world first.")
    return images


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the VAE's pixel range."""
    pixels = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1.0


@torch.no_grad()
def fold_latent_scale(vae: torch.nn.Module, k: float) -> None:
    """Multiply the posterior by k inside the weights: quant_conv's mean channels x k, its log-variance channels
    + 2 ln k (the same distribution, scaled), post_quant_conv's input / k. Decoding a scaled latent gives the same
    image."""
    quant, post = vae.quant_conv, vae.post_quant_conv
    mean = slice(0, LATENT_CHANNELS)
    logvar = slice(LATENT_CHANNELS, 2 * LATENT_CHANNELS)
    quant.weight[mean] *= k
    quant.bias[mean] *= k
    quant.bias[logvar] += 2.0 * math.log(k)
    post.weight /= k  # (out, in, 1, 1): every input channel divided


@torch.no_grad()
def posterior_means(vae: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    means = [
        vae.encode(to_model_range(images[i : i + batch_size])).latent_dist.mean
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(means)


@torch.no_grad()
def reconstruct(vae: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 reconstructions from the posterior mean (as the diffusers host encodes and decodes)."""
    out = []
    for i in range(0, len(images), batch_size):
        decoded = vae.decode(vae.encode(to_model_range(images[i : i + batch_size])).latent_dist.mean).sample
        out.append(((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def train_image_vae(
    folder: str | os.PathLike,
    images: np.ndarray,
    steps: int,
    batch_size: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Train folder/vae from scratch (its config, fresh weights from `seed`) on `images` (N, 64, 64, 3) uint8:
    L1 reconstruction of a posterior sample + KL_WEIGHT x KL to N(0, 1), Adam with a cosine decay. Then fold the
    latent scale and save the weights atomically. Returns {"loss", "scale", "latent_std"} (the last is the std of
    posterior means x 0.13025 after folding: 1 up to float error)."""
    import diffusers

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps ({steps}) and batch_size ({batch_size}) must be at least 1.")
    images = _check_images(images)
    root = Path(folder) / "vae"
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{root}/config.json not found: build the folder with models.build_sdxl_folder first.")
    config = diffusers.AutoencoderKL.load_config(root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = diffusers.AutoencoderKL.from_config(config).train()
        with torch.no_grad():  # start with a narrow posterior: unit noise would drown the young encoder's means
            vae.quant_conv.bias[LATENT_CHANNELS:] = INITIAL_LOGVAR
        generator = torch.Generator().manual_seed(seed)
        pixels = to_model_range(images)
        optimizer = torch.optim.Adam(vae.parameters(), lr=LEARNING_RATE)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
        loss_value = float("nan")
        for step in range(steps):
            batch = pixels[torch.randint(len(pixels), (batch_size,), generator=generator)]
            posterior = vae.encode(batch).latent_dist
            latent = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
            decoded = vae.decode(latent).sample
            kl = 0.5 * (posterior.mean.square() + posterior.var - 1.0 - posterior.logvar).mean()
            loss = (decoded - batch).abs().mean() + KL_WEIGHT * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise RuntimeError(f"The image autoencoder's loss is {loss_value} at step {step}: lower LEARNING_RATE.")
            if progress is not None:
                progress(step + 1, steps)
    vae.eval()
    spread = float(posterior_means(vae, images).std())
    scale = 1.0 / (VAE_SCALING * spread)
    fold_latent_scale(vae, scale)
    latent_std = float(posterior_means(vae, images).std()) * VAE_SCALING
    save_safetensors_atomic(vae.state_dict(), root / WEIGHTS_FILE, {"format": "pt"})
    write_text_atomic(root / "config.json", vae.to_json_string())
    return {"loss": loss_value, "scale": scale, "latent_std": latent_std}


__all__ = ["fold_latent_scale", "posterior_means", "psnr", "reconstruct", "to_model_range", "train_image_vae"]
