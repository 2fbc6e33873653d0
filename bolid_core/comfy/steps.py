"""Which sampling step a model call belongs to, from the sampler's own sigmas."""

from __future__ import annotations

import torch


def step_index(sigma: torch.Tensor, sample_sigmas: torch.Tensor | None) -> tuple[int, int]:
    """(this step, number of steps): the step whose sigma is nearest. Robust to batching and split calls,
    unlike counting calls."""
    if sample_sigmas is None:
        raise RuntimeError("No sampler sigmas in transformer_options: sample with a ComfyUI sampler or guider.")
    sample_sigmas = sample_sigmas.to(sigma.device)
    return int((sample_sigmas[:-1] - sigma.flatten()[0]).abs().argmin()), len(sample_sigmas) - 1
