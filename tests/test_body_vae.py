"""Tier 1: the multi-view body VAE, its confidence-weighted aggregation, and BODY_ID files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bolid_core.body import BodyID, blend_body_ids, load_body_id, sample_prior, save_body_id
from bolid_core.body.vae import (
    BodyEncoderError,
    BodyVAE,
    BodyVAEConfig,
    aggregate_views,
    kl_divergence,
    load_body_vae,
    save_body_vae,
)

SMALL = BodyVAEConfig(latent_dim=24, image_size=32, channels=(8, 16), keypoint_hidden=16, decoder_hidden=32, map_size=8)


def small_vae(seed: int = 0) -> BodyVAE:
    torch.manual_seed(seed)
    return BodyVAE(SMALL).eval()


def views(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((count, 40, 30, 3), generator=g), torch.rand((count, 17, 3), generator=g)


def chunks(images, keypoints, confidence, size: int):
    for start in range(0, images.shape[0], size):
        yield images[start : start + size], keypoints[start : start + size], confidence[start : start + size]


def test_aggregation_is_the_confidence_weighted_mean_of_view_posteriors() -> None:
    vae = small_vae()
    images, keypoints = views(5)
    confidence = torch.tensor([0.9, 0.2, 0.6, 0.0, 0.7])
    posterior = aggregate_views(vae, chunks(images, keypoints, confidence, size=2))
    with torch.no_grad():
        per_view = [vae.encode_views(images[i : i + 1], keypoints[i : i + 1]) for i in range(5)]
    weights = [c for c in confidence.tolist()]
    expected_mu = sum(w * mu for w, (mu, _) in zip(weights, per_view, strict=True)) / sum(weights)
    expected_logvar = sum(w * lv for w, (_, lv) in zip(weights, per_view, strict=True)) / sum(weights)
    torch.testing.assert_close(posterior.mu, expected_mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(posterior.logvar, expected_logvar, rtol=1e-4, atol=1e-5)
    assert posterior.views_used == 4


def test_order_and_zero_confidence_views_do_not_matter() -> None:
    vae = small_vae()
    images, keypoints = views(6, seed=1)
    confidence = torch.tensor([0.3, 0.8, 0.5, 0.9, 0.1, 0.6])
    reference = aggregate_views(vae, chunks(images, keypoints, confidence, size=4))
    order = torch.tensor([4, 2, 0, 5, 3, 1])
    shuffled = aggregate_views(vae, chunks(images[order], keypoints[order], confidence[order], size=3))
    torch.testing.assert_close(shuffled.mu, reference.mu, rtol=1e-5, atol=1e-6)
    noise, noise_keypoints = views(2, seed=9)
    padded = aggregate_views(
        vae,
        chunks(
            torch.cat([images, noise]), torch.cat([keypoints, noise_keypoints]),
            torch.cat([confidence, torch.zeros(2)]), size=5,
        ),
    )  # fmt: skip
    torch.testing.assert_close(padded.mu, reference.mu, rtol=1e-5, atol=1e-6)
    with pytest.raises(BodyEncoderError, match="No view shows a person"):
        aggregate_views(vae, chunks(images, keypoints, torch.zeros(6), size=3))


def test_vae_file_round_trip_identity_and_kl(tmp_path: Path) -> None:
    vae = small_vae(3)
    path = save_body_vae(vae, tmp_path / "body_vae.safetensors")
    loaded, identity = load_body_vae(path)
    assert loaded.config == SMALL and len(identity) == 16
    images, keypoints = views(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_views(images, keypoints), vae.encode_views(images, keypoints))
        decoded_keypoints, weight_map = loaded.decode(torch.zeros(1, 24))
    assert decoded_keypoints.shape == (1, 17, 3) and weight_map.shape == (1, 8, 8)
    assert load_body_vae(save_body_vae(small_vae(4), tmp_path / "other.safetensors")).identity != identity
    mu, logvar = torch.randn(3, 24), torch.randn(3, 24)
    expected = (
        sum(-0.5 * sum(1 + logvar[b, d] - mu[b, d] ** 2 - logvar[b, d].exp() for d in range(24)) for b in range(3)) / 3
    )
    assert kl_divergence(mu, logvar).item() == pytest.approx(float(expected), rel=1e-5)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "adapter.safetensors"), metadata={"format": "bolid-adapter"})
    with pytest.raises(BodyEncoderError, match="not a BoLID body encoder"):
        load_body_vae(tmp_path / "adapter.safetensors")


def test_body_id_files_blend_and_prior(tmp_path: Path) -> None:
    first = BodyID(torch.randn(1, 24), 3, "abc")
    saved = load_body_id(save_body_id(first, tmp_path / "me.safetensors"))
    assert saved.source_count == 3 and saved.encoder == "abc"
    torch.testing.assert_close(saved.c_body, first.c_body)
    second = BodyID(torch.randn(1, 24), 2, "abc")
    blended = blend_body_ids([first, second], [0.25, 0.75])
    torch.testing.assert_close(blended.c_body, 0.25 * first.c_body + 0.75 * second.c_body)
    assert blended.source_count == 5
    with pytest.raises(ValueError, match="different body encoders"):
        blend_body_ids([first, BodyID(torch.randn(1, 24), 1, "xyz")], [1, 1])
    prior = sample_prior(24, seed=7)
    torch.testing.assert_close(prior.c_body, torch.randn((1, 24), generator=torch.Generator().manual_seed(7)))
    assert blend_body_ids([first, prior], [1, 1]).encoder == "abc"


MEMORY_PROBE = """
import json, resource, sys, torch
sys.path.insert(0, {root!r})
from bolid_core.body.vae import BodyVAE, BodyVAEConfig, aggregate_views
count = int(sys.argv[1])
vae = BodyVAE(BodyVAEConfig(latent_dim=756, image_size=128)).eval()
def chunks():
    for start in range(0, count, 8):
        n = min(8, count - start)
        yield torch.rand(n, 512, 384, 3), torch.rand(n, 17, 3), torch.full((n,), 0.5)
aggregate_views(vae, chunks())
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def peak_rss_kb(count: int) -> int:
    code = MEMORY_PROBE.format(root=str(Path(__file__).resolve().parent.parent))
    result = subprocess.run([sys.executable, "-c", code, str(count)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_views() -> None:
    ten, hundred = peak_rss_kb(10), peak_rss_kb(100)
    # 100 views of 512x384 are 236 MB; holding them would show far above this margin.
    assert hundred <= ten + 40_000, f"peak RSS {hundred} kB for 100 views vs {ten} kB for 10"


def test_non_finite_bodies_and_weights_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from bolid_core.body.pipeline import WeightingParams

    body = BodyID(torch.randn(1, 8), 1, "abc")
    for weight in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="Blend weights must be finite"):
            blend_body_ids([body, body], [1.0, weight])
    with pytest.raises(ValueError, match="holds NaN or infinite values"):
        BodyID(torch.tensor([[0.0, float("nan")]]), 1, "abc")
    # A tensor changed after construction is still caught before it reaches the disk.
    changed = BodyID(torch.zeros(1, 4), 1, "abc")
    changed.c_body[0, 2] = float("inf")
    target = tmp_path / "bodies" / "nan_body.safetensors"
    with pytest.raises(ValueError, match="The body ID to save holds NaN"):
        save_body_id(changed, target)
    assert not target.exists()
    # A NaN body written by something else is refused on load, naming the file.
    metadata = {"format": "bolid-body-id", "format_version": "1", "source_count": "1", "encoder": "abc"}
    save_file({"c_body": torch.full((1, 4), float("nan"))}, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match=r"saved body ID bad\.safetensors holds NaN"):
        load_body_id(tmp_path / "bad.safetensors")
    for sigma, alpha in ((float("nan"), 0.5), (0.1, float("nan")), (float("inf"), 0.5)):
        with pytest.raises(ValueError, match="must"):
            WeightingParams(sigma, alpha)
