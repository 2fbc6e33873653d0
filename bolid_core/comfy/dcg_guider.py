"""FastFace's decoupled CFG as a ComfyUI GUIDER: every branch of a step in one batched UNet call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import comfy.samplers

from ..guidance.dcg import Branch, DCGSchedule, DCGVariant, EndSteps, combine
from .attn2 import SOURCE_SWITCH_KEY
from .steps import step_index


@dataclass(frozen=True)
class DCGSettings:
    variant: DCGVariant
    alpha: float | Sequence[float]
    beta: float | Sequence[float]
    rescale_phi: float = 0.75
    end_steps: EndSteps = EndSteps.PUBLISHED

    def schedule(self, steps: int) -> DCGSchedule:
        return DCGSchedule.build(self.variant, self.alpha, self.beta, steps, self.rescale_phi, self.end_steps)


def _with_switch(model_options: dict, branches: list[Branch]) -> dict:
    """model_options whose transformer_options tell the adapter patch which cond index has the ID on."""
    transformer_options = dict(model_options.get("transformer_options", {}))
    transformer_options[SOURCE_SWITCH_KEY] = {index: {"id": b.has_id} for index, b in enumerate(branches)}
    return {**model_options, "transformer_options": transformer_options}


class DCGGuider(comfy.samplers.CFGGuider):
    def set_conds(self, positive, negative) -> None:
        self.inner_set_conds({"positive": positive, "negative": negative})

    def set_settings(self, settings: DCGSettings) -> None:
        self.settings = settings
        self._schedule: DCGSchedule | None = None
        self.cfg = 1.0  # reported to hooks as cond_scale; DCG's own weights are per branch

    def _schedule_for(self, steps: int) -> DCGSchedule:
        if self._schedule is None or self._schedule.steps != steps:
            self._schedule = self.settings.schedule(steps)
        return self._schedule

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
        step, steps = step_index(timestep, model_options.get("transformer_options", {}).get("sample_sigmas"))
        schedule = self._schedule_for(steps)
        branches = schedule.needed_branches(step)
        positive, negative = self.conds.get("positive"), self.conds.get("negative")
        conds = [positive if branch.has_text else negative for branch in branches]
        options = _with_switch(model_options, branches)
        out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, options)
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn({
                "conds": conds, "conds_out": out, "cond_scale": self.cfg, "timestep": timestep, "input": x,
                "sigma": timestep, "model": self.inner_model, "model_options": options,
            })  # fmt: skip
        denoised = dict(zip(branches, out, strict=True))
        sigma = timestep.reshape(-1, *([1] * (x.ndim - 1)))
        eps = {branch: (x - value) / sigma for branch, value in denoised.items()}  # the rescale is defined on eps
        result = x - combine(schedule, step, eps) * sigma
        for fn in model_options.get("sampler_post_cfg_function", []):
            result = fn({
                "denoised": result, "cond": positive, "uncond": negative, "cond_scale": self.cfg,
                "model": self.inner_model, "uncond_denoised": denoised.get(Branch.EMPTY, result),
                "cond_denoised": denoised.get(Branch.TEXT_ID, result), "sigma": timestep,
                "model_options": options, "input": x,
            })  # fmt: skip
        return result
