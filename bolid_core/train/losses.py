"""Training losses of BoLID eq. 14: L = L_diff + α_id·L_id + β_CLIP·L_CLIP.

- L_diff: the denoising MSE on the host's prediction target (ε or v).
- L_id: pose keypoints of the predicted x0 (decoded, run through the pose network with gradients) against the
  reference's keypoints, at the predicted person that best matches the reference.
- L_CLIP: 1 − cos(CLIP(decoded x0), CLIP(caption)).

The two auxiliary terms need x0 decoded to pixels, which costs memory, so they run only where an `AuxLossSchedule`
says: on every k-th step and on timesteps low enough that x0 is a recognisable image. A host computes them on the
selected samples alone and hands the results to `total_loss`, which counts a term that did not run as 0.

Keypoints are COCO-17 with x, y as fractions of the image's width and height and a confidence in [0, 1]; a
confidence of 0 means invisible (`bolid_core.body.keypoints.PoseKeypoints`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..body.keypoints import NUM_KEYPOINTS

# COCO keypoint evaluation's per-keypoint falloffs σ_k (nose, eyes, ears, shoulders, elbows, wrists, hips, knees,
# ankles); OKS uses κ_k = 2σ_k.
COCO_KEYPOINT_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip
# Floor on the reference person's area (fraction of the image) in OKS, so that one visible keypoint (a box of area 0)
# still gives a finite scale: about a 3% x 3% patch.
MIN_PERSON_AREA = 1e-3


class PredictionType(str, enum.Enum):
    """What the denoiser predicts, as the host's noise schedule says."""

    EPSILON = "epsilon"
    V_PREDICTION = "v_prediction"


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_diff: mean squared error over every element, in float32 whatever the inputs' precision."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"Diffusion loss: the prediction is shaped {tuple(prediction.shape)} but the target "
            f"{tuple(target.shape)}; they must match (no broadcasting)."
        )
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")


def _alpha_bar_coefficients(alpha_bar_t: torch.Tensor, like: torch.Tensor, allow_zero: bool):
    """sqrt(ᾱ_t) and sqrt(1 − ᾱ_t), shaped to broadcast over `like` (one ᾱ per sample, or one for all)."""
    alpha_bar_t = torch.as_tensor(alpha_bar_t, device=like.device)
    if alpha_bar_t.ndim > 1 or (alpha_bar_t.ndim == 1 and alpha_bar_t.shape[0] not in (1, like.shape[0])):
        raise ValueError(
            f"ᾱ_t must be one number or one per sample ({like.shape[0]}); got shape {tuple(alpha_bar_t.shape)}."
        )
    low_ok = alpha_bar_t >= 0 if allow_zero else alpha_bar_t > 0
    if not (torch.isfinite(alpha_bar_t) & low_ok & (alpha_bar_t <= 1)).all():
        bounds = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"ᾱ_t must lie in {bounds}: take it from the noise schedule's cumulative product of alphas.")
    dtype = torch.promote_types(torch.promote_types(alpha_bar_t.dtype, like.dtype), torch.float32)
    alpha_bar_t = alpha_bar_t.to(dtype).reshape(-1, *([1] * (like.ndim - 1)))
    return alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t − sqrt(1 − ᾱ_t)·ε) / sqrt(ᾱ_t), inverting x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε (DDPM)."""
    signal, noise = _alpha_bar_coefficients(alpha_bar_t, x_t, allow_zero=False)
    return ((x_t - noise * eps) / signal).to(x_t.dtype)


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """x0 = sqrt(ᾱ_t)·x_t − sqrt(1 − ᾱ_t)·v, for v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0 (Salimans & Ho, 2022)."""
    signal, noise = _alpha_bar_coefficients(alpha_bar_t, x_t, allow_zero=True)
    return (signal * x_t - noise * v).to(x_t.dtype)


def predicted_x0(
    x_t: torch.Tensor, prediction: torch.Tensor, alpha_bar_t: torch.Tensor, prediction_type: PredictionType
) -> torch.Tensor:
    """The x0 the auxiliary losses read, from the denoiser's output of either kind."""
    if prediction_type is PredictionType.EPSILON:
        return x0_from_eps(x_t, prediction, alpha_bar_t)
    return x0_from_v(x_t, prediction, alpha_bar_t)


def diffusion_target(
    x0: torch.Tensor, noise: torch.Tensor, alpha_bar_t: torch.Tensor, prediction_type: PredictionType
) -> torch.Tensor:
    """The L_diff target: ε itself, or v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0."""
    if prediction_type is PredictionType.EPSILON:
        return noise
    signal, noise_scale = _alpha_bar_coefficients(alpha_bar_t, x0, allow_zero=True)
    return (signal * noise - noise_scale * x0).to(x0.dtype)


# --- L_id -----------------------------------------------------------------------------------------------------------


def _check_keypoints(name: str, keypoints: torch.Tensor, leading: int) -> None:
    if keypoints.ndim != leading + 2 or keypoints.shape[-2] != NUM_KEYPOINTS or keypoints.shape[-1] < 2:
        raise ValueError(
            f"{name} must be shaped ({', '.join(['...'] * leading)}, {NUM_KEYPOINTS}, 2 or 3) as COCO-17 (x, y[, "
            f"confidence]) in fractions of the image; got {tuple(keypoints.shape)}."
        )


def keypoint_identity_loss(
    pred_keypoints: torch.Tensor,
    ref_keypoints: torch.Tensor,
    ref_confidence: torch.Tensor,
    found: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_id: confidence-weighted mean squared keypoint distance, averaged over the samples that have one.

    Per sample b: L_b = Σ_k c_bk·‖p_bk − r_bk‖² / Σ_k c_bk over the reference's visible keypoints (c_bk > 0), with
    p the predicted person's (x, y) and r the reference's, in fractions of the image. The batch loss is the mean of
    L_b over the samples that count: at least one visible reference keypoint and, where `found` is given, a matched
    predicted person. With none that count it is 0, still attached to `pred_keypoints`' graph, never NaN.

    pred_keypoints: (B, 17, ≥2), differentiable; ref_keypoints: (B, 17, ≥2); ref_confidence: (B, 17);
    found: (B,) bool, from `match_person`.
    """
    _check_keypoints("Predicted keypoints", pred_keypoints, 1)
    _check_keypoints("Reference keypoints", ref_keypoints, 1)
    batch = pred_keypoints.shape[0]
    if ref_keypoints.shape[0] != batch or tuple(ref_confidence.shape) != (batch, NUM_KEYPOINTS):
        raise ValueError(
            f"Keypoint identity loss: {batch} predicted people need {batch} references of {NUM_KEYPOINTS} keypoints "
            f"and confidences shaped ({batch}, {NUM_KEYPOINTS}); got references {tuple(ref_keypoints.shape)} and "
            f"confidences {tuple(ref_confidence.shape)}."
        )
    pred_xy = pred_keypoints[..., :2]
    dtype = torch.promote_types(pred_xy.dtype, torch.float32)
    ref_xy = ref_keypoints[..., :2].to(device=pred_xy.device, dtype=dtype)
    confidence = ref_confidence.to(device=pred_xy.device, dtype=dtype)
    visible = confidence > 0
    squared_distance = (pred_xy.to(dtype) - ref_xy).square().sum(dim=-1)
    # torch.where, not a product: an invisible point's prediction may be anything and must not reach the gradient.
    weighted = torch.where(visible, confidence * squared_distance, torch.zeros((), dtype=dtype, device=pred_xy.device))
    total_weight = torch.where(visible, confidence, torch.zeros((), dtype=dtype, device=pred_xy.device)).sum(dim=-1)
    counts = total_weight > 0
    if found is not None:
        if tuple(found.shape) != (batch,):
            raise ValueError(f"`found` must hold one flag per sample ({batch}); got shape {tuple(found.shape)}.")
        counts = counts & found.to(device=pred_xy.device, dtype=torch.bool)
    # A safe denominator, so a sample that does not count has a finite (then discarded) value and gradient.
    per_sample = weighted.sum(dim=-1) / torch.where(counts, total_weight, torch.ones_like(total_weight))
    per_sample = torch.where(counts, per_sample, torch.zeros_like(per_sample))
    return per_sample.sum() / counts.sum().clamp_min(1)


@dataclass(frozen=True)
class PersonMatch:
    """Which predicted person matches each sample's reference: an index into that sample's people, −1 for none."""

    index: torch.Tensor  # (B,) long
    oks: torch.Tensor  # (B,) the matched person's OKS; 0 where none

    @property
    def found(self) -> torch.Tensor:
        return self.index >= 0


def object_keypoint_similarity(
    pred_keypoints: torch.Tensor, ref_keypoints: torch.Tensor, ref_confidence: torch.Tensor
) -> torch.Tensor:
    """COCO's OKS of each of P predicted people against one reference: (P,), 0 if the reference shows no keypoint.

    OKS = mean over the reference's visible keypoints of exp(−d_k² / (2·s²·κ_k²)), with d_k the keypoint distance,
    s² the reference's area (its visible keypoints' bounding box, at least MIN_PERSON_AREA) and κ_k = 2σ_k. All in
    fractions of the image, so a non-square image weighs x and y by their own sides.
    """
    visible = ref_confidence > 0
    if not visible.any():
        return pred_keypoints.new_zeros(pred_keypoints.shape[0])
    ref_xy = ref_keypoints[..., :2].to(pred_keypoints.dtype)
    shown = ref_xy[visible]
    extent = shown.max(dim=0).values - shown.min(dim=0).values
    area = (extent[0] * extent[1]).clamp_min(MIN_PERSON_AREA)
    kappa = 2 * torch.tensor(COCO_KEYPOINT_SIGMAS, dtype=pred_keypoints.dtype, device=pred_keypoints.device)
    squared_distance = (pred_keypoints[..., :2] - ref_xy).square().sum(dim=-1)  # (P, 17)
    similarity = torch.exp(-squared_distance / (2 * area * kappa.square()))
    return torch.where(visible, similarity, 0.0).sum(dim=-1) / visible.sum()


@torch.no_grad()
def match_person(
    pred_people: Sequence[torch.Tensor],
    ref_keypoints: torch.Tensor,
    ref_confidence: torch.Tensor,
    min_oks: float = 0.0,
) -> PersonMatch:
    """For each sample, the predicted person with the highest OKS against its reference (COCO keypoint similarity,
    see `object_keypoint_similarity`); the first one on ties.

    A sample gets no match (index −1) when the pose network found nobody in its x0, when its reference has no visible
    keypoint, or when the best OKS is not above `min_oks`. The choice is not differentiated; the loss then reads the
    chosen person's keypoints with gradients (`matched_keypoints`).

    pred_people: per sample, (P_b, 17, ≥2) keypoints of the P_b people found in its decoded x0 (P_b may be 0).
    """
    batch = len(pred_people)
    _check_keypoints("Reference keypoints", ref_keypoints, 1)
    if ref_keypoints.shape[0] != batch or tuple(ref_confidence.shape) != (batch, NUM_KEYPOINTS):
        raise ValueError(
            f"Person matching: {batch} samples of predicted people need {batch} references and confidences shaped "
            f"({batch}, {NUM_KEYPOINTS}); got {tuple(ref_keypoints.shape)} and {tuple(ref_confidence.shape)}."
        )
    if not math.isfinite(min_oks) or not 0 <= min_oks < 1:
        raise ValueError(f"min_oks must lie in [0, 1); got {min_oks}.")
    index = torch.full((batch,), -1, dtype=torch.long)
    best_oks = torch.zeros(batch)
    for sample, people in enumerate(pred_people):
        _check_keypoints(f"Predicted people of sample {sample}", people, 1)
        if people.shape[0] == 0:
            continue
        reference = ref_keypoints[sample].to(people.device).float()
        oks = object_keypoint_similarity(people.detach().float(), reference, ref_confidence[sample].to(people.device))
        best = int(torch.argmax(oks))  # argmax returns the first maximum
        if float(oks[best]) > min_oks:
            index[sample], best_oks[sample] = best, float(oks[best])
    return PersonMatch(index=index, oks=best_oks)


def matched_keypoints(pred_people: Sequence[torch.Tensor], match: PersonMatch) -> torch.Tensor:
    """(B, 17, 2): each sample's matched person's (x, y), differentiable; zeros where no person matched (those
    samples drop out of `keypoint_identity_loss` through `found=match.found`)."""
    if len(pred_people) != match.index.shape[0]:
        raise ValueError(f"{len(pred_people)} samples of predicted people, but {match.index.shape[0]} matches.")
    rows = []
    for people, index in zip(pred_people, match.index.tolist(), strict=True):
        rows.append(people[index, :, :2] if index >= 0 else people.new_zeros(NUM_KEYPOINTS, 2))
    if not rows:
        raise ValueError("Person matching: the batch is empty.")
    return torch.stack(rows)


# --- L_CLIP ---------------------------------------------------------------------------------------------------------


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """L_CLIP = mean over the batch of 1 − cos(CLIP image embedding of decoded x0, CLIP text embedding of the caption).

    Embeddings are (B, D) in the shared CLIP space (after each tower's projection). An empty batch gives 0.
    """
    if image_embeds.ndim != 2 or image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"CLIP loss: image and text embeddings must both be (batch, dim) in the shared CLIP space; got "
            f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}."
        )
    if image_embeds.shape[0] == 0:
        return image_embeds.sum() * 0  # mean of nothing is NaN; keep the graph for a uniform backward
    cosine = F.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1, eps=1e-8)
    return (1 - cosine).mean()


# --- where the auxiliary terms run, and the total -----------------------------------------------------------------


@dataclass(frozen=True)
class AuxLossSchedule:
    """Which samples an auxiliary loss (L_id or L_CLIP) runs on, to bound the memory of decoding x0.

    A sample is selected when the step is a multiple of `every_steps` and its timestep t lies in
    [`min_timestep`, `max_timestep`], both included (DDPM timesteps, 0 = clean; a high t gives an x0 too blurred for
    pose or CLIP), keeping at most `max_samples` of them (the first in batch order; None: all). `step` is the
    trainer's optimizer-step counter, the one checkpoints store, so a resumed run selects the same samples. A host
    keeps one schedule per term (`LossConfig`'s id_* and clip_* fields), or one for both.
    """

    every_steps: int = 1
    min_timestep: float = 0
    max_timestep: float = 999
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.every_steps, bool) or not isinstance(self.every_steps, int) or self.every_steps < 1:
            raise ValueError(f"Aux loss every_steps must be a whole number ≥ 1; got {self.every_steps!r}.")
        if not (math.isfinite(self.min_timestep) and math.isfinite(self.max_timestep)):
            raise ValueError("Aux loss timestep bounds must be finite numbers.")
        if not 0 <= self.min_timestep <= self.max_timestep:
            raise ValueError(
                f"Aux loss timesteps: need 0 ≤ min_timestep ≤ max_timestep; got {self.min_timestep} and "
                f"{self.max_timestep}."
            )
        if self.max_samples is not None and (
            isinstance(self.max_samples, bool) or not isinstance(self.max_samples, int) or self.max_samples < 1
        ):
            raise ValueError(
                f"Aux loss max_samples must be a whole number ≥ 1, or None for all; got {self.max_samples!r}."
            )

    def applies(self, step: int, timesteps: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the samples of this step whose auxiliary losses run."""
        if step < 0:
            raise ValueError(f"Training step must be ≥ 0; got {step}.")
        if timesteps.ndim != 1:
            raise ValueError(f"Timesteps must be one per sample, shaped (B,); got {tuple(timesteps.shape)}.")
        if step % self.every_steps:
            return torch.zeros(timesteps.shape, dtype=torch.bool, device=timesteps.device)
        mask = (timesteps >= self.min_timestep) & (timesteps <= self.max_timestep)
        if self.max_samples is not None:
            mask = mask & (mask.cumsum(0) <= self.max_samples)
        return mask


def total_loss(
    diff: torch.Tensor,
    alpha_id: float,
    beta_clip: float,
    id_loss: torch.Tensor | None = None,
    clip: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """BoLID eq. 14: L = L_diff + α_id·L_id + β_CLIP·L_CLIP.

    `id_loss` and `clip` are None on steps (or batches) where the schedule ran them on no sample; they count as 0.
    Returns "loss" (with its graph, for backward) and the unweighted terms "diff", "id", "clip" (detached, for logs).
    """
    for name, weight in (("alpha_id", alpha_id), ("beta_clip", beta_clip)):
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"Loss weight {name} must be a finite number ≥ 0; got {weight}.")
    zero = torch.zeros((), dtype=diff.dtype, device=diff.device)
    loss = diff
    if id_loss is not None and alpha_id:
        loss = loss + alpha_id * id_loss
    if clip is not None and beta_clip:
        loss = loss + beta_clip * clip
    return {
        "loss": loss,
        "diff": diff.detach(),
        "id": zero if id_loss is None else id_loss.detach(),
        "clip": zero if clip is None else clip.detach(),
    }
