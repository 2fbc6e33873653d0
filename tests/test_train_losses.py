"""Tier 1: BoLID eq. 14's losses, x0 recovery, person matching and the aux-loss schedule, against plain formulas."""

from __future__ import annotations

import math

import pytest
import torch

from bolid_core.train.losses import (
    COCO_KEYPOINT_SIGMAS,
    MIN_PERSON_AREA,
    AuxLossSchedule,
    PredictionType,
    clip_loss,
    diffusion_loss,
    diffusion_target,
    keypoint_identity_loss,
    match_person,
    matched_keypoints,
    object_keypoint_similarity,
    predicted_x0,
    total_loss,
    x0_from_eps,
    x0_from_v,
)


def test_diffusion_loss_is_plain_mean_squared_error() -> None:
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randn((2, 4, 3, 5), generator=generator)
    target = torch.randn((2, 4, 3, 5), generator=generator)
    pairs = zip(prediction.flatten().tolist(), target.flatten().tolist(), strict=True)
    expected = sum((p - t) ** 2 for p, t in pairs) / prediction.numel()
    assert diffusion_loss(prediction, target).item() == pytest.approx(expected, rel=1e-6)
    assert diffusion_loss(prediction.half(), target.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="must match"):
        diffusion_loss(prediction, target[:1])


def _noised(x0: torch.Tensor, noise: torch.Tensor, alpha_bars: list[float]) -> torch.Tensor:
    return torch.stack([math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i] for i, a in enumerate(alpha_bars)])


def test_x0_recovered_exactly_from_eps_and_v() -> None:
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn((3, 4, 6, 6), generator=generator, dtype=torch.float64)
    noise = torch.randn((3, 4, 6, 6), generator=generator, dtype=torch.float64)
    alpha_bars = [0.9991, 0.5, 0.0047]  # SD's schedule spans about 0.9991 (t = 0) to 0.0047 (t = 999)
    x_t = _noised(x0, noise, alpha_bars)
    v = torch.stack([math.sqrt(a) * noise[i] - math.sqrt(1 - a) * x0[i] for i, a in enumerate(alpha_bars)])
    alpha_bar_t = torch.tensor(alpha_bars, dtype=torch.float64)
    torch.testing.assert_close(x0_from_eps(x_t, noise, alpha_bar_t), x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x0_from_v(x_t, v, alpha_bar_t), x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(predicted_x0(x_t, v, alpha_bar_t, PredictionType.V_PREDICTION), x0)
    torch.testing.assert_close(predicted_x0(x_t, noise, alpha_bar_t, PredictionType.EPSILON), x0)
    torch.testing.assert_close(diffusion_target(x0, noise, alpha_bar_t, PredictionType.V_PREDICTION), v)
    assert diffusion_target(x0, noise, alpha_bar_t, PredictionType.EPSILON) is noise


def test_x0_with_one_alpha_bar_for_the_batch() -> None:
    generator = torch.Generator().manual_seed(2)
    x0 = torch.randn((2, 4, 3, 3), generator=generator)
    noise = torch.randn((2, 4, 3, 3), generator=generator)
    x_t = _noised(x0, noise, [0.3, 0.3])
    torch.testing.assert_close(x0_from_eps(x_t, noise, torch.tensor(0.3)), x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x0_from_eps(x_t, noise, 0.3), x0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_x0_from_eps_rejects_alpha_bar_outside_its_range(bad: float) -> None:
    x = torch.zeros((2, 4, 2, 2))
    with pytest.raises(ValueError, match="ᾱ_t must lie in"):
        x0_from_eps(x, x, torch.tensor([0.5, bad]))
    with pytest.raises(ValueError, match="one per sample"):
        x0_from_eps(x, x, torch.tensor([0.5, 0.5, 0.5]))


def plain_keypoint_loss(pred, ref, confidence, found=None) -> float:
    """Confidence-weighted mean squared distance per sample, averaged over the samples that count."""
    losses = []
    for b in range(len(pred)):
        if found is not None and not found[b]:
            continue
        numerator = denominator = 0.0
        for k in range(17):
            c = confidence[b][k]
            if c > 0:
                numerator += c * ((pred[b][k][0] - ref[b][k][0]) ** 2 + (pred[b][k][1] - ref[b][k][1]) ** 2)
                denominator += c
        if denominator > 0:
            losses.append(numerator / denominator)
    return sum(losses) / len(losses) if losses else 0.0


def _keypoint_batch(seed: int):
    generator = torch.Generator().manual_seed(seed)
    pred = torch.rand((4, 17, 2), generator=generator, dtype=torch.float64)
    ref = torch.rand((4, 17, 3), generator=generator, dtype=torch.float64)
    confidence = torch.rand((4, 17), generator=generator, dtype=torch.float64)
    confidence[torch.rand((4, 17), generator=generator) < 0.3] = 0.0
    confidence[2] = 0.0  # a reference with no visible keypoint
    pred[confidence == 0] = 50.0  # far-off predictions at invisible points must not count
    return pred, ref, confidence


def test_keypoint_identity_loss_matches_plain_formula() -> None:
    pred, ref, confidence = _keypoint_batch(3)
    expected = plain_keypoint_loss(pred.tolist(), ref.tolist(), confidence.tolist())
    assert keypoint_identity_loss(pred, ref, confidence).item() == pytest.approx(expected, rel=1e-12)
    found = torch.tensor([True, False, True, True])
    expected_found = plain_keypoint_loss(pred.tolist(), ref.tolist(), confidence.tolist(), found.tolist())
    assert keypoint_identity_loss(pred, ref, confidence, found).item() == pytest.approx(expected_found, rel=1e-12)


def test_keypoint_identity_loss_gradient() -> None:
    pred, ref, confidence = _keypoint_batch(4)
    pred.requires_grad_(True)
    keypoint_identity_loss(pred, ref, confidence).backward()
    # d/dp_bk of (1/n)·Σ_k c_bk‖p_bk − r_bk‖² / Σ_k c_bk = 2·c_bk·(p_bk − r_bk) / (n·Σ_k c_bk), n samples that count
    counting = (confidence.sum(dim=1) > 0).sum().item()
    expected = torch.zeros_like(pred)
    for b in range(4):
        total = confidence[b].sum().item()
        for k in range(17):
            if confidence[b, k] > 0:
                expected[b, k] = 2 * confidence[b, k] * (pred[b, k] - ref[b, k, :2]).detach() / (counting * total)
    torch.testing.assert_close(pred.grad, expected, rtol=1e-10, atol=1e-12)
    check = pred.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: keypoint_identity_loss(p, ref, confidence), (check,))


def test_keypoint_identity_loss_without_visible_keypoints_is_zero_and_not_nan() -> None:
    pred = torch.rand((2, 17, 2), requires_grad=True)
    loss = keypoint_identity_loss(pred, torch.rand((2, 17, 3)), torch.zeros((2, 17)))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(pred.grad, torch.zeros_like(pred))
    found_none = keypoint_identity_loss(pred, torch.rand((2, 17, 3)), torch.ones((2, 17)), torch.zeros(2, dtype=bool))
    assert found_none.item() == 0.0


def plain_oks(person, ref, confidence) -> float:
    visible = [k for k in range(17) if confidence[k] > 0]
    xs, ys = [ref[k][0] for k in visible], [ref[k][1] for k in visible]
    area = max((max(xs) - min(xs)) * (max(ys) - min(ys)), MIN_PERSON_AREA)
    total = 0.0
    for k in visible:
        d2 = (person[k][0] - ref[k][0]) ** 2 + (person[k][1] - ref[k][1]) ** 2
        total += math.exp(-d2 / (2 * area * (2 * COCO_KEYPOINT_SIGMAS[k]) ** 2))
    return total / len(visible)


def test_object_keypoint_similarity_matches_coco_formula() -> None:
    generator = torch.Generator().manual_seed(5)
    ref = torch.rand((17, 3), generator=generator, dtype=torch.float64)
    confidence = (torch.rand(17, generator=generator, dtype=torch.float64) > 0.3).double()
    people = ref[None, :, :2] + 0.05 * torch.randn((3, 17, 2), generator=generator, dtype=torch.float64)
    result = object_keypoint_similarity(people, ref, confidence)
    for p in range(3):
        assert result[p].item() == pytest.approx(plain_oks(people[p].tolist(), ref.tolist(), confidence.tolist()))


def test_match_person_picks_highest_oks_and_reports_none() -> None:
    generator = torch.Generator().manual_seed(6)
    ref = torch.rand((3, 17, 3), generator=generator)
    confidence = torch.ones((3, 17))
    confidence[2] = 0.0  # nothing visible: no match possible
    near = ref[0, :, :2] + 0.01
    far = torch.rand((17, 2), generator=generator)
    people = [
        torch.stack([far, near, near + 0.05]),  # best is person 1
        torch.zeros((0, 17, 3)),  # the pose network found nobody
        torch.stack([ref[2, :, :2]]),
    ]
    match = match_person(people, ref, confidence)
    assert match.index.tolist() == [1, -1, -1]
    assert match.found.tolist() == [True, False, False]
    expected_oks = plain_oks(near.tolist(), ref[0].tolist(), confidence[0].tolist())
    assert match.oks[0].item() == pytest.approx(expected_oks, rel=1e-5)
    strict = match_person(people, ref, confidence, min_oks=0.999999)
    assert strict.index.tolist() == [-1, -1, -1]


def test_matched_keypoints_carry_gradient_to_the_chosen_person_only() -> None:
    ref = torch.rand((2, 17, 3), generator=torch.Generator().manual_seed(7))
    confidence = torch.ones((2, 17))
    first = torch.stack([torch.rand(17, 3), torch.cat([ref[0, :, :2], torch.ones(17, 1)], dim=1)]).requires_grad_(True)
    second = torch.zeros((0, 17, 3), requires_grad=True)
    people = [first, second]
    match = match_person(people, ref, confidence)
    assert match.index.tolist() == [1, -1]
    keypoints = matched_keypoints(people, match)
    torch.testing.assert_close(keypoints[0], first[1, :, :2].detach())
    shifted = keypoints + 0.1
    loss = keypoint_identity_loss(shifted, ref, confidence, match.found)
    loss.backward()
    assert loss.item() == pytest.approx(0.02, rel=1e-5)  # only sample 0 counts: mean of 0.1² + 0.1²
    assert torch.equal(first.grad[0], torch.zeros(17, 3))
    assert torch.isfinite(first.grad).all() and first.grad[1, :, :2].abs().sum() > 0


def test_clip_loss_is_one_minus_cosine_mean() -> None:
    generator = torch.Generator().manual_seed(8)
    image = torch.randn((3, 8), generator=generator)
    text = torch.randn((3, 8), generator=generator)
    expected = 0.0
    for i, t in zip(image.tolist(), text.tolist(), strict=True):
        dot = sum(a * b for a, b in zip(i, t, strict=True))
        expected += 1 - dot / (math.sqrt(sum(a * a for a in i)) * math.sqrt(sum(b * b for b in t)))
    assert clip_loss(image, text).item() == pytest.approx(expected / 3, rel=1e-5)
    assert clip_loss(image, image * 2.5).item() == pytest.approx(0.0, abs=1e-6)
    assert clip_loss(image, -image).item() == pytest.approx(2.0, abs=1e-6)


def test_clip_loss_never_nan() -> None:
    empty = torch.zeros((0, 8), requires_grad=True)
    loss = clip_loss(empty, torch.zeros((0, 8)))
    loss.backward()
    assert loss.item() == 0.0
    zero_image = torch.zeros((1, 8), requires_grad=True)
    loss = clip_loss(zero_image, torch.ones((1, 8)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zero_image.grad).all()
    with pytest.raises(ValueError, match="shared CLIP space"):
        clip_loss(torch.zeros((2, 8)), torch.zeros((2, 4)))


def test_aux_loss_schedule_masks() -> None:
    schedule = AuxLossSchedule(every_steps=3, min_timestep=100, max_timestep=500)
    timesteps = torch.tensor([0, 99, 100, 500, 501, 999, 250])
    in_range = [False, False, True, True, False, False, True]  # 100 ≤ t ≤ 500
    for step in (0, 3, 6, 300):
        assert schedule.applies(step, timesteps).tolist() == in_range
    for step in (1, 2, 7, 8, 301):
        assert schedule.applies(step, timesteps).tolist() == [False] * 7
    capped = AuxLossSchedule(max_timestep=500, max_samples=2)
    assert capped.applies(5, timesteps).tolist() == [True, True, False, False, False, False, False]
    assert AuxLossSchedule().applies(1, timesteps).all()  # defaults: every step, t in [0, 999]
    one_timestep = AuxLossSchedule(min_timestep=250, max_timestep=250).applies(0, timesteps)
    assert one_timestep.tolist() == [False] * 6 + [True]
    floats = AuxLossSchedule(max_timestep=0.5).applies(0, torch.tensor([0.2, 0.5, 0.7]))
    assert floats.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="one per sample"):
        schedule.applies(0, torch.zeros((2, 2)))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"every_steps": 0}, "every_steps"),
        ({"every_steps": 1.5}, "every_steps"),
        ({"min_timestep": 500, "max_timestep": 100}, "min_timestep ≤ max_timestep"),
        ({"max_timestep": float("nan")}, "finite"),
        ({"max_samples": 0}, "max_samples"),
    ],
)
def test_aux_loss_schedule_rejects_bad_settings(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuxLossSchedule(**fields)


def test_total_loss_weights_terms_and_zeroes_missing_ones() -> None:
    diff = torch.tensor(0.7, requires_grad=True)
    id_loss = torch.tensor(0.2, requires_grad=True)
    clip = torch.tensor(0.4, requires_grad=True)
    terms = total_loss(diff, alpha_id=0.5, beta_clip=0.25, id_loss=id_loss, clip=clip)
    assert terms["loss"].item() == pytest.approx(0.7 + 0.5 * 0.2 + 0.25 * 0.4)
    assert (terms["diff"].item(), terms["id"].item(), terms["clip"].item()) == pytest.approx((0.7, 0.2, 0.4))
    terms["loss"].backward()
    assert (diff.grad.item(), id_loss.grad.item(), clip.grad.item()) == pytest.approx((1.0, 0.5, 0.25))
    skipped = total_loss(torch.tensor(0.7), alpha_id=0.5, beta_clip=0.25)
    assert skipped["loss"].item() == pytest.approx(0.7)
    assert skipped["id"].item() == 0.0 and skipped["clip"].item() == 0.0
    assert not any(torch.isnan(value) for value in skipped.values())
    with pytest.raises(ValueError, match="alpha_id"):
        total_loss(diff, alpha_id=float("nan"), beta_clip=0.0)
    with pytest.raises(ValueError, match="beta_clip"):
        total_loss(diff, alpha_id=0.0, beta_clip=-1.0)
