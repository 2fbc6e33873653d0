"""Tiny training tasks for the trainer tests, and a script that is killed while it writes a checkpoint.

Run as `python tests/train_tasks.py <checkpoint_dir> <file to hang in>`: trains the wide denoiser with a checkpoint
every step; the second save writes half of the named file, prints HALF and waits to be killed.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bolid_core.train import state as train_state
from bolid_core.train.config import (
    CheckpointConfig,
    OptimizerConfig,
    Schedule,
    ScheduleConfig,
    StepsConfig,
    TrainConfig,
)
from bolid_core.train.loop import Trainer

WIDTH = 8


class Denoiser(nn.Module):
    """Predicts the noise of (1 - t)·x + t·noise from the noisy sample, t and a condition that may be dropped."""

    def __init__(self, hidden: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * WIDTH + 1, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, WIDTH)
        )

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([noisy, t, condition], dim=1))


def examples(count: int = 10, seed: int = 123) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return list(torch.randn(count, WIDTH, generator=generator))


def build_model(seed: int = 7, hidden: int = 32) -> Denoiser:
    torch.manual_seed(seed)
    return Denoiser(hidden)


def denoising_loss(model: Denoiser):
    """A loss with randomness from every source the trainer checkpoints: the loss generator (timesteps, noise,
    condition dropout), the global torch RNG (nn.Dropout), python's random and numpy's."""

    def compute_loss(batch, step, generator):
        clean = torch.stack(batch)
        t = torch.rand(len(batch), 1, generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        keep = (torch.rand(len(batch), 1, generator=generator) >= 0.3).float()  # condition dropout
        prediction = model((1 - t) * clean + t * noise, t, clean * keep)
        diffusion = ((prediction - noise) ** 2).mean()
        jitter = 1.0 + 0.01 * (random.random() + float(np.random.rand()))  # noqa: S311
        return {"loss": diffusion * jitter, "diff": diffusion, "jitter": torch.tensor(jitter)}

    return compute_loss


def resume_config(max_steps: int = 6, every_steps: int = 3, accumulation: int = 2, keep_last: int = 2) -> TrainConfig:
    return TrainConfig(
        optimizer=OptimizerConfig(lr=3e-3, max_grad_norm=0.5),
        schedule=ScheduleConfig(kind=Schedule.WARMUP_COSINE, warmup_steps=3),
        steps=StepsConfig(max_steps=max_steps, batch_size=3, grad_accumulation=accumulation),
        checkpoint=CheckpointConfig(every_steps=every_steps, keep_last=keep_last),
        seed=11,
    )


def denoiser_trainer(config: TrainConfig, checkpoint_dir=None, hidden: int = 32, **options) -> tuple[Trainer, Denoiser]:
    model = build_model(hidden=hidden)
    trainer = Trainer(
        config, {"denoiser": model}, examples(), denoising_loss(model), checkpoint_dir=checkpoint_dir, **options
    )
    return trainer, model


WIDE_HIDDEN = 16_000  # about 0.55 M parameters: a 2 MB weights file


def _hang_in(file_name: str) -> None:
    saves = {"count": 0}
    write = train_state.write_bytes

    def slow_write(file, data: bytes) -> None:
        if not file.name.endswith(file_name):
            write(file, data)
            return
        saves["count"] += 1
        if saves["count"] == 1:
            write(file, data)
            return
        write(file, data[: len(data) // 2])
        file.flush()
        print("HALF", flush=True)
        time.sleep(600)

    train_state.write_bytes = slow_write


if __name__ == "__main__":
    checkpoint_dir, hang_file = Path(sys.argv[1]), sys.argv[2]
    _hang_in(hang_file)
    trainer, _ = denoiser_trainer(resume_config(max_steps=3, every_steps=1, keep_last=3), checkpoint_dir, WIDE_HIDDEN)
    trainer.train()
    print("FINISHED", flush=True)
