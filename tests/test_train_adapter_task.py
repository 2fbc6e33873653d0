"""Tier 1: the adapter training task (bolid_core.train.adapter_task) against its formulas written out plainly: the
adapter's attention term, the source tokens, noising, dropout routing, L_diff, the text prior, the body VAE's ELBO,
the auxiliary terms and data-parallel sharding."""

from __future__ import annotations

import copy

import pytest
import torch
from train_adapter_factories import (
    CLIP_DIM,
    CONTEXT_DIM,
    FACE_DIM,
    HEADS,
    FullBatch,
    TinyDenoiser,
    attention_by_hand,
    body_tokens_by_hand,
    face_tokens_by_hand,
    image_tokens_by_hand,
    mixed_seed,
    null_text,
    prior_by_hand,
    replay_draws,
    tiny_adapter,
    tiny_body_vae,
)

from bolid_core.adapter import Source
from bolid_core.adapter.tokens import body_tokens, hybrid_face_tokens, image_tokens
from bolid_core.train.adapter_task import (
    AdapterAttention,
    AdapterTask,
    AuxiliaryScorers,
    BodyLossWeights,
    LossWeights,
    TrainBatch,
    init_kv_from_text,
    source_tokens,
)
from bolid_core.train.config import TrainTarget
from bolid_core.train.dropout import ConditionDropout, ConditionSource
from bolid_core.train.losses import (
    AuxLossSchedule,
    PredictionType,
    clip_loss,
    keypoint_identity_loss,
    match_person,
    matched_keypoints,
)

NO_DROPOUT = ConditionDropout(image=0.0, face=0.0, body=0.0, text=0.0)
HALF_DROPOUT = ConditionDropout(image=0.5, face=0.5, body=0.5, text=0.5)
SOURCE_OF = {Source.IMAGE: ConditionSource.IMAGE, Source.FACE: ConditionSource.FACE, Source.BODY: ConditionSource.BODY}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=tol, atol=tol)


# --- AdapterAttention ----------------------------------------------------------------------------------------------


def random_tokens(batch: int, seed: int = 1) -> dict[Source, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {source: torch.randn(batch, count, CONTEXT_DIM, generator=g) for source, count in ((Source.IMAGE, 2),
            (Source.FACE, 3), (Source.BODY, 2))}  # fmt: skip


def test_adapter_attention_is_the_weighted_sum_of_each_sources_attention_at_its_own_layer():
    adapter = tiny_adapter()
    weights = {Source.IMAGE: 0.7, Source.FACE: 1.3, Source.BODY: 0.4}
    attention = AdapterAttention(adapter, {Source.IMAGE: 0.7, Source.FACE: 1.3, Source.BODY: 0.4})
    tokens = random_tokens(3)
    query = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(2))
    with attention.using(tokens):
        layer_1 = attention(1, query, HEADS)
    expected = attention_by_hand(adapter.kv, 1, query, tokens, HEADS, weights)
    assert close(layer_1, expected)

    # The check can fail: layer 0 (same width) or another source's K/V give other values.
    assert not close(layer_1, attention_by_hand(adapter.kv, 0, query, tokens, HEADS, weights), 1e-3)
    swapped = {Source.IMAGE: Source.FACE, Source.FACE: Source.IMAGE, Source.BODY: Source.BODY}
    wrong_source = attention_by_hand(lambda i, s: adapter.kv(i, swapped[s]), 1, query, tokens, HEADS, weights)
    assert not close(layer_1, wrong_source, 1e-3)
    unit = dict.fromkeys(weights, 1.0)
    assert not close(layer_1, attention_by_hand(adapter.kv, 1, query, tokens, HEADS, unit), 1e-3)


def test_adapter_attention_default_weights_are_one_and_the_wider_layer_works():
    adapter = tiny_adapter()
    attention = AdapterAttention(adapter)
    tokens = random_tokens(2)
    query = torch.randn(2, 4, 12, generator=torch.Generator().manual_seed(3))
    with attention.using(tokens):
        out = attention(2, query, HEADS)
    assert close(out, attention_by_hand(adapter.kv, 2, query, tokens, HEADS, dict.fromkeys(tokens, 1.0)))


def test_adapter_attention_is_zero_outside_using_and_using_nests():
    adapter = tiny_adapter()
    attention = AdapterAttention(adapter)
    query = torch.randn(2, 4, 8)
    assert not attention.active
    assert torch.equal(attention(0, query, HEADS), torch.zeros_like(query))
    outer, inner = random_tokens(2, 1), {Source.BODY: random_tokens(2, 5)[Source.BODY]}
    with attention.using(outer):
        with attention.using(inner):
            assert close(attention(0, query, HEADS), attention_by_hand(adapter.kv, 0, query, inner, HEADS,
                                                                       {Source.BODY: 1.0}))  # fmt: skip
        assert close(attention(0, query, HEADS), attention_by_hand(adapter.kv, 0, query, outer, HEADS,
                                                                   dict.fromkeys(outer, 1.0)))  # fmt: skip
    assert not attention.active
    assert torch.equal(attention(0, query, HEADS), torch.zeros_like(query))


def test_adapter_attention_broadcasts_batch_one_tokens_and_refuses_another_batch():
    adapter = tiny_adapter()
    attention = AdapterAttention(adapter)
    query = torch.randn(3, 4, 8)
    single = random_tokens(1)
    with attention.using(single):
        shared = attention(0, query, HEADS)
    with attention.using({source: value.expand(3, -1, -1) for source, value in single.items()}):
        expanded = attention(0, query, HEADS)
    assert close(shared, expanded)
    with attention.using(random_tokens(2)), pytest.raises(ValueError, match="batch of 2"):
        attention(0, query, HEADS)


# --- source_tokens --------------------------------------------------------------------------------------------------


def test_source_tokens_follow_each_projection_written_out():
    adapter = tiny_adapter()
    full = FullBatch(3)
    tokens = source_tokens(adapter, full.style, full.arcface, full.c_body)
    assert set(tokens) == {Source.IMAGE, Source.FACE, Source.BODY}
    assert close(tokens[Source.IMAGE], image_tokens_by_hand(adapter, full.style))
    assert close(tokens[Source.FACE], face_tokens_by_hand(adapter, full.style, full.arcface))
    assert close(tokens[Source.BODY], body_tokens_by_hand(adapter, full.c_body))
    # CLIP first: the fusion with the halves of its input swapped (ArcFace first) is something else.
    module = adapter.projection(Source.FACE)
    swapped = module(module.fusion(torch.cat([full.arcface, full.style], dim=-1)[:, : CLIP_DIM + FACE_DIM]))
    assert not close(tokens[Source.FACE], swapped, 1e-3)
    tokens[Source.IMAGE].sum().backward()
    assert adapter.projection(Source.IMAGE).proj.weight.grad.abs().sum() > 0


def test_zero_inputs_give_exactly_the_null_tokens_inference_gives():
    adapter = tiny_adapter()
    full = FullBatch(2)
    dropped = source_tokens(adapter, torch.zeros_like(full.style), torch.zeros_like(full.arcface),
                            torch.zeros_like(full.c_body))  # fmt: skip
    _, null_image = image_tokens(adapter, full.style, torch.zeros_like(full.style))
    _, null_face = hybrid_face_tokens(adapter, full.arcface, full.style, None, 1.0)
    _, null_body = body_tokens(adapter, full.c_body)
    assert torch.equal(dropped[Source.IMAGE], null_image)
    assert torch.equal(dropped[Source.FACE], null_face)
    assert torch.equal(dropped[Source.BODY], null_body)


def test_source_tokens_name_the_missing_input():
    adapter = tiny_adapter()
    full = FullBatch(2)
    with pytest.raises(ValueError, match="style"):
        source_tokens(adapter, None, full.arcface, full.c_body)
    with pytest.raises(ValueError, match="ArcFace"):
        source_tokens(adapter, full.style, None, full.c_body)
    with pytest.raises(ValueError, match="body"):
        source_tokens(adapter, full.style, full.arcface, None)
    body_only = tiny_adapter(tokens={Source.BODY: 2})
    assert set(source_tokens(body_only, None, None, full.c_body)) == {Source.BODY}


# --- AdapterTask: noising, dropout, L_diff, prior ------------------------------------------------------------------


PRIOR_HALF = LossWeights(prior=0.5)


def adapter_task(denoiser, dropout=HALF_DROPOUT, loss=PRIOR_HALF, **options) -> AdapterTask:
    return AdapterTask(TrainTarget.ADAPTER, dropout, loss, denoiser, null_text(), **options)


@pytest.mark.parametrize("prediction", list(PredictionType))
def test_one_step_noises_drops_and_scores_as_written(prediction):
    size = 6
    seed = mixed_seed(size, HALF_DROPOUT)
    adapter = tiny_adapter()
    denoiser = TinyDenoiser(adapter, prediction)
    full = FullBatch(size)
    terms = adapter_task(denoiser)(full.batch(), 0, torch.Generator().manual_seed(seed))
    draws = replay_draws(seed, size, HALF_DROPOUT)
    call = denoiser.calls[-1]
    t = draws.timesteps
    assert torch.equal(call["timesteps"], t)

    alpha_bar = denoiser.schedule.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * full.latents.double() + (1 - alpha_bar).sqrt() * draws.noise.double()
    assert close(call["noisy"], x_t)

    text_dropped = draws.dropped[ConditionSource.TEXT]
    null = null_text()
    for row in range(size):
        context, pooled = (null.context[0], null.pooled[0]) if text_dropped[row] else (full.context[row],
                                                                                       full.pooled[row])  # fmt: skip
        assert torch.equal(call["context"][row], context), row
        assert torch.equal(call["pooled"][row], pooled), row

    keep = {source: (~draws.dropped[SOURCE_OF[source]]).double()[:, None] for source in SOURCE_OF}
    seen = denoiser.attention.seen_tokens
    assert close(seen[Source.IMAGE], image_tokens_by_hand(adapter, full.style * keep[Source.IMAGE]))
    assert close(seen[Source.FACE], face_tokens_by_hand(adapter, full.style * keep[Source.IMAGE],
                                                        full.arcface * keep[Source.FACE]))  # fmt: skip
    assert close(seen[Source.BODY], body_tokens_by_hand(adapter, full.c_body * keep[Source.BODY]))
    _, null_image = image_tokens(adapter, full.style, torch.zeros_like(full.style))
    _, null_face = hybrid_face_tokens(adapter, full.arcface, full.style, None, 1.0)
    _, null_body = body_tokens(adapter, full.c_body)
    for source, null_tokens in ((Source.IMAGE, null_image), (Source.BODY, null_body)):
        dropped = draws.dropped[SOURCE_OF[source]]
        assert close(seen[source][dropped], null_tokens[dropped])
        assert not close(seen[source][~dropped], null_tokens[~dropped], 1e-3)
    both = draws.dropped[ConditionSource.IMAGE] & draws.dropped[ConditionSource.FACE]
    assert close(seen[Source.FACE][both], null_face[both])

    noise, x0 = draws.noise.double(), full.latents.double()
    target = noise if prediction is PredictionType.EPSILON else alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    diff = ((call["prediction"].double() - target) ** 2).mean()
    prior = ((prior_by_hand(adapter, full.pooled) - full.style.double()) ** 2).mean()
    assert close(terms["diff"], diff)
    assert close(terms["prior"], prior)
    assert close(terms["loss"], diff + 0.5 * prior)
    assert float(terms["id"]) == 0.0 and float(terms["clip"]) == 0.0


def test_the_loss_trains_the_adapter_and_not_the_denoiser():
    adapter = tiny_adapter()
    denoiser = TinyDenoiser(adapter)
    terms = adapter_task(denoiser, NO_DROPOUT)(FullBatch(3).batch(), 0, torch.Generator().manual_seed(0))
    terms["loss"].backward()
    for source in Source:
        assert adapter.kv(0, source).to_k.weight.grad.abs().sum() > 0, source
        assert sum(p.grad.abs().sum() for p in adapter.projection(source).parameters() if p.grad is not None) > 0
    assert adapter.projection(Source.FACE).prior.net[1].weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in denoiser.parameters())


def test_prior_term_is_left_out_without_a_prior_or_with_weight_zero():
    full = FullBatch(3)
    for adapter, weight in ((tiny_adapter(text_prior=False), 1.0), (tiny_adapter(), 0.0)):
        denoiser = TinyDenoiser(adapter)
        task = adapter_task(denoiser, NO_DROPOUT, LossWeights(prior=weight))
        terms = task(full.batch(), 0, torch.Generator().manual_seed(0))
        assert "prior" not in terms
        assert torch.equal(terms["loss"], terms["diff"]) or close(terms["loss"], terms["diff"], 1e-7)


def test_missing_cache_entries_and_bad_construction_say_what_to_do():
    adapter = tiny_adapter()
    denoiser = TinyDenoiser(adapter)
    task = adapter_task(denoiser)
    batch = FullBatch(2).batch()
    batch.latents = None
    with pytest.raises(ValueError, match="latents"):
        task(batch, 0, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="denoiser"):
        AdapterTask(TrainTarget.ADAPTER, HALF_DROPOUT, LossWeights())
    with pytest.raises(ValueError, match="body VAE"):
        AdapterTask(TrainTarget.JOINT, HALF_DROPOUT, LossWeights(), denoiser, null_text())
    with pytest.raises(ValueError, match="null_text"):
        AdapterTask(TrainTarget.ADAPTER, HALF_DROPOUT, LossWeights(), denoiser)
    with pytest.raises(ValueError, match="shard"):
        adapter_task(denoiser, shard=(2, 2))
    no_attention = TinyDenoiser(adapter)
    no_attention.attention = None
    with pytest.raises(ValueError, match="AdapterAttention"):
        adapter_task(no_attention)


# --- body VAE: joint training and the ELBO ------------------------------------------------------------------------


def body_loss_by_hand(
    vae, views: dict, weights: BodyLossWeights, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Negative ELBO: z = mu + exp(logvar/2)·ε; visible keypoints' squared xy error averaged over visible points;
    BCE of the visibility logits; MSE of the weight map against its 2×2-block-mean (area) resize; KL summed over
    latent dims and averaged over views."""
    mu, logvar = vae.encode_views(views["weighted"], views["keypoints"])
    eps = torch.randn(mu.shape, generator=generator)
    mu, logvar = mu.double(), logvar.double()
    z = (mu + torch.exp(0.5 * logvar) * eps.double()).float()
    keypoints, weight_map = vae.decode(z)
    keypoints, weight_map = keypoints.double(), weight_map.double()
    target = views["keypoints"].double()
    visible = (target[..., 2] > 0).double()
    xy = (visible * ((keypoints[..., :2] - target[..., :2]) ** 2).sum(-1)).sum() / visible.sum()
    p = torch.sigmoid(keypoints[..., 2])
    visibility = -(visible * torch.log(p) + (1 - visible) * torch.log(1 - p)).mean()
    big = views["weight_map"].double()
    side = weight_map.shape[-1]
    small = big.reshape(big.shape[0], side, 2, side, 2).mean(dim=(2, 4))
    map_error = ((weight_map - small) ** 2).mean()
    kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)).mean()
    loss = weights.keypoints * xy + weights.visibility * visibility + weights.weight_map * map_error + weights.kl * kl
    return {"loss": loss, "vae_keypoints": xy, "vae_visibility": visibility, "vae_map": map_error, "vae_kl": kl}


BODY_WEIGHTS = BodyLossWeights(kl=0.3, keypoints=2.0, visibility=0.7, weight_map=1.5, joint=0.8)


def concat_views(views: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([v[key] for v in views]) for key in views[0]}


def test_body_vae_target_is_the_elbo_written_out_with_the_same_draws():
    vae = tiny_body_vae()
    full = FullBatch(2)
    task = AdapterTask(
        TrainTarget.BODY_VAE, HALF_DROPOUT, LossWeights(), body_vae=vae, body_weights=BODY_WEIGHTS, body_views=3
    )
    batch = TrainBatch(persons=["a", "b"], body_views=full.views)
    terms = task(batch, 0, torch.Generator().manual_seed(7))
    expected = body_loss_by_hand(vae, concat_views(full.views), BODY_WEIGHTS, torch.Generator().manual_seed(7))
    assert set(terms) == set(expected)
    for key, value in expected.items():
        assert close(terms[key], value), key
    terms["loss"].backward()
    assert vae.decoder[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="body_view"):
        task(TrainBatch(persons=["a"]), 0, torch.Generator())


def test_joint_target_aggregates_views_by_confidence_and_trains_the_vae_through_c_body():
    size = 3
    adapter, vae = tiny_adapter(), tiny_body_vae()
    denoiser = TinyDenoiser(adapter)
    full = FullBatch(size)
    seen = []
    adapter.projection(Source.BODY).register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    task = AdapterTask(TrainTarget.JOINT, NO_DROPOUT, LossWeights(prior=0.5), denoiser, null_text(), body_vae=vae,
                       body_weights=BODY_WEIGHTS, body_views=3)  # fmt: skip
    terms = task(full.batch(body_views=True), 0, torch.Generator().manual_seed(5))

    with torch.no_grad():
        for row, views in enumerate(full.views):
            mu, _ = vae.encode_views(views["weighted"], views["keypoints"])
            confidence = views["confidence"].tolist()
            weighted = sum(c * mu[i].double() for i, c in enumerate(confidence))
            assert close(seen[-1][row], weighted / sum(confidence)), row
    draws = replay_draws(5, size, NO_DROPOUT)
    body = body_loss_by_hand(vae, concat_views(full.views), BODY_WEIGHTS, draws.generator)
    diff = ((denoiser.calls[-1]["prediction"].double() - draws.noise.double()) ** 2).mean()
    prior = ((prior_by_hand(adapter, full.pooled) - full.style.double()) ** 2).mean()
    assert close(terms["loss"], diff + 0.5 * prior + BODY_WEIGHTS.joint * body["loss"])
    for key in ("vae_keypoints", "vae_visibility", "vae_map", "vae_kl"):
        assert close(terms[key], body[key]), key


def test_joint_gradients_reach_the_vae_encoder_through_c_body_alone():
    adapter, vae = tiny_adapter(), tiny_body_vae()
    denoiser = TinyDenoiser(adapter)
    no_elbo = BodyLossWeights(joint=0.0)
    task = AdapterTask(TrainTarget.JOINT, NO_DROPOUT, LossWeights(), denoiser, null_text(), body_vae=vae,
                       body_weights=no_elbo, body_views=3)  # fmt: skip
    task(FullBatch(2).batch(body_views=True), 0, torch.Generator().manual_seed(0))["loss"].backward()
    assert vae.to_posterior.weight.grad.abs().sum() > 0
    assert vae.image_encoder[0][0].weight.grad.abs().sum() > 0
    assert vae.decoder[0].weight.grad is None or vae.decoder[0].weight.grad.abs().sum() == 0


# --- sharding -------------------------------------------------------------------------------------------------------


def test_two_shards_see_the_rows_one_process_sees_and_average_to_its_loss():
    size, seed = 4, mixed_seed(4, HALF_DROPOUT)
    adapter = tiny_adapter()
    denoiser = TinyDenoiser(adapter)
    full = FullBatch(size)
    whole = adapter_task(denoiser)(full.batch(), 0, torch.Generator().manual_seed(seed))
    whole_call, whole_tokens = denoiser.calls[-1], denoiser.attention.seen_tokens
    halves = []
    for rank in range(2):
        rows = slice(2 * rank, 2 * rank + 2)
        terms = adapter_task(denoiser, shard=(rank, 2))(full.batch(rows), 0, torch.Generator().manual_seed(seed))
        call, tokens = denoiser.calls[-1], denoiser.attention.seen_tokens
        for key in ("timesteps", "noisy", "context", "pooled"):
            assert close(call[key], whole_call[key][rows]), (rank, key)
        for source, value in tokens.items():
            assert close(value, whole_tokens[source][rows]), (rank, source)
        halves.append(terms)
    for key in ("loss", "diff", "prior"):
        assert close((halves[0][key] + halves[1][key]) / 2, whole[key]), key
    # The check can fail: an unsharded task on the second half draws the first half's randomness.
    adapter_task(denoiser)(full.batch(slice(2, 4)), 0, torch.Generator().manual_seed(seed))
    assert torch.equal(denoiser.calls[-1]["timesteps"], whole_call["timesteps"][:2])
    assert not close(denoiser.calls[-1]["noisy"], whole_call["noisy"][2:4], 1e-3)


def test_joint_shards_draw_the_body_vaes_noise_of_one_process():
    """Under data parallelism the body VAE's ε must also be the global batch's rows, like timesteps and noise.
    (Per-view means only: the keypoint term averages over visible points, a ratio that shards cannot split.)"""
    size = 4
    adapter, vae = tiny_adapter(), tiny_body_vae()
    denoiser = TinyDenoiser(adapter)
    full = FullBatch(size)
    options = {"body_vae": vae, "body_weights": BODY_WEIGHTS, "body_views": 3}

    def task(shard):
        return AdapterTask(TrainTarget.JOINT, NO_DROPOUT, LossWeights(), denoiser, null_text(), shard=shard, **options)

    whole = task((0, 1))(full.batch(body_views=True), 0, torch.Generator().manual_seed(3))
    halves = [
        task((rank, 2))(full.batch(slice(2 * rank, 2 * rank + 2), body_views=True), 0, torch.Generator().manual_seed(3))
        for rank in range(2)
    ]
    assert close((halves[0]["vae_kl"] + halves[1]["vae_kl"]) / 2, whole["vae_kl"])  # no ε in it
    for key in ("vae_map", "vae_visibility"):
        assert close((halves[0][key] + halves[1][key]) / 2, whole[key]), key


# --- auxiliary terms ------------------------------------------------------------------------------------------------


def fake_scorers(calls: list) -> AuxiliaryScorers:
    projection = torch.randn(4 * 4 * 3, 8, generator=torch.Generator().manual_seed(21))

    def decode(latents):
        calls.append(latents.shape[0])
        return torch.sigmoid(latents[:, :3].permute(0, 2, 3, 1))

    def pose_people(images):
        people = []
        for image in images:
            xy = image.reshape(-1)[:34].reshape(17, 2)
            person = torch.cat([xy, torch.ones(17, 1)], dim=-1)
            people.append(torch.stack([person, torch.cat([1 - xy, torch.ones(17, 1)], dim=-1)]))
        return people

    return AuxiliaryScorers(decode, pose_people, lambda images: images.reshape(images.shape[0], -1) @ projection)


def test_auxiliary_terms_score_the_rows_their_schedules_select():
    size = 8
    adapter = tiny_adapter()
    denoiser = TinyDenoiser(adapter)
    full = FullBatch(size)
    id_schedule = AuxLossSchedule(min_timestep=0, max_timestep=9)
    clip_schedule = AuxLossSchedule(min_timestep=6, max_timestep=19, max_samples=3)
    seed = next(
        s for s in range(200)
        if 0 < int((replay_draws(s, size, NO_DROPOUT).timesteps <= 9).sum()) < size
        and int((replay_draws(s, size, NO_DROPOUT).timesteps >= 6).sum()) > 3
    )  # fmt: skip
    calls: list = []
    loss = LossWeights(alpha_id=0.4, beta_clip=0.3, prior=0.5)
    task = adapter_task(denoiser, NO_DROPOUT, loss, id_schedule=id_schedule, clip_schedule=clip_schedule,
                        scorers=fake_scorers(calls))  # fmt: skip
    terms = task(full.batch(), 0, torch.Generator().manual_seed(seed))
    call = denoiser.calls[-1]
    t = call["timesteps"]
    id_rows = t <= 9
    clip_rows = t >= 6
    clip_rows &= torch.cumsum(clip_rows.long(), 0) <= 3
    alpha_bar = denoiser.schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x0 = (call["noisy"] - (1 - alpha_bar).sqrt() * call["prediction"]) / alpha_bar.sqrt()

    scorers = fake_scorers([])
    people = scorers.pose_people(scorers.decode(x0[id_rows]))
    reference = full.keypoints[id_rows]
    match = match_person(people, reference[..., :2], reference[..., 2])
    assert bool(match.found.any())
    expected_id = keypoint_identity_loss(
        matched_keypoints(people, match), reference[..., :2], reference[..., 2], match.found
    )
    expected_clip = clip_loss(scorers.clip_image(scorers.decode(x0[clip_rows])), full.caption_clip[clip_rows])
    assert close(terms["id"], expected_id)
    assert close(terms["clip"], expected_clip)
    assert calls == [int((id_rows | clip_rows).sum())]  # one decode of the rows either term needs
    assert close(terms["loss"], terms["diff"] + 0.4 * expected_id + 0.3 * expected_clip + 0.5 * terms["prior"])


def test_auxiliary_terms_are_zero_and_decode_nothing_on_unscheduled_steps():
    adapter = tiny_adapter()
    denoiser = TinyDenoiser(adapter)
    calls: list = []
    every_other = AuxLossSchedule(every_steps=2)
    task = adapter_task(denoiser, NO_DROPOUT, LossWeights(alpha_id=0.4, beta_clip=0.3, prior=0.5),
                        id_schedule=every_other, clip_schedule=every_other, scorers=fake_scorers(calls))  # fmt: skip
    terms = task(FullBatch(3).batch(), 1, torch.Generator().manual_seed(0))
    assert calls == []
    assert float(terms["id"]) == 0.0 and float(terms["clip"]) == 0.0
    assert close(terms["loss"], terms["diff"] + 0.5 * terms["prior"])
    task(FullBatch(3).batch(), 2, torch.Generator().manual_seed(0))
    assert calls == [3]


def test_auxiliary_weights_need_their_scorers():
    denoiser = TinyDenoiser(tiny_adapter())
    no_pose = AuxiliaryScorers(decode=lambda x: x, clip_image=lambda x: x)
    no_clip = AuxiliaryScorers(decode=lambda x: x, pose_people=lambda x: [])
    with pytest.raises(ValueError, match="alpha_id"):
        adapter_task(denoiser, loss=LossWeights(alpha_id=0.1))
    with pytest.raises(ValueError, match="alpha_id"):
        adapter_task(denoiser, loss=LossWeights(alpha_id=0.1), scorers=no_pose)
    with pytest.raises(ValueError, match="beta_clip"):
        adapter_task(denoiser, loss=LossWeights(beta_clip=0.1), scorers=no_clip)
    adapter_task(denoiser, loss=LossWeights(alpha_id=0.1), scorers=no_clip)  # each needs only its own


# --- init_kv_from_text ----------------------------------------------------------------------------------------------


def test_init_kv_from_text_copies_each_layers_text_weights_into_every_source():
    adapter = tiny_adapter()
    g = torch.Generator().manual_seed(8)
    text_kv = [(torch.randn(w, CONTEXT_DIM, generator=g), torch.randn(w, CONTEXT_DIM, generator=g))
               for w in adapter.spec.layer_widths]  # fmt: skip
    originals = copy.deepcopy(text_kv)
    init_kv_from_text(adapter, text_kv)
    for layer, (weight_k, weight_v) in enumerate(originals):
        for source in adapter.spec.sources:
            kv = adapter.kv(layer, source)
            assert torch.equal(kv.to_k.weight, weight_k) and torch.equal(kv.to_v.weight, weight_v), (layer, source)
            assert kv.to_k.weight.data_ptr() != text_kv[layer][0].data_ptr()
    assert adapter.kv(0, Source.IMAGE).to_k.weight.requires_grad
    with pytest.raises(ValueError, match="3 layers"):
        init_kv_from_text(adapter, text_kv[:2])
