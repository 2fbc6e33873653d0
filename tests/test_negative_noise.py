"""Negative-image noise: each kind against its formula written plainly, with the same random stream as
IPAdapter_plus's noise node (torchvision's transforms after torch.manual_seed), the strength limits, and the blur."""

from __future__ import annotations

import math

import pytest
import torch

from bolid_core.negative_noise import (
    NoiseType,
    default_blur_sigma,
    elastic_displacement,
    gaussian_blur,
    negative_noise,
    warp,
)

TF = pytest.importorskip("torchvision.transforms.functional")
T = pytest.importorskip("torchvision.transforms")


def torchvision_noise(kind: str, strength: float, blur: int, seed: int, image: torch.Tensor | None) -> torch.Tensor:
    """The noise as IPAdapter_plus describes it, stated with torchvision on torch's global generator."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if image is None:
            x = torch.zeros(1, 224, 224, 3)
        else:
            square = TF.center_crop(image.permute(0, 3, 1, 2), min(image.shape[1:3]))
            x = TF.resize(square, [224, 224], interpolation=T.InterpolationMode.BICUBIC, antialias=True)
            x = x.permute(0, 2, 3, 1)
        if kind == "fade":
            out = x * (1 - strength) + torch.rand_like(x) * strength
        elif kind == "dissolve":
            keep = (torch.rand_like(x) < strength).float()
            out = x * (1 - keep) + torch.rand_like(x) * keep
        elif kind == "gaussian":
            out = x + torch.randn_like(x) * strength
        else:
            y = T.ElasticTransform(alpha=75.0, sigma=(1 - strength) * 3.5)(x.permute(0, 3, 1, 2))
            y = T.RandomHorizontalFlip(p=1.0)(T.RandomVerticalFlip(p=1.0)(y)).permute(0, 2, 3, 1)
            n = torch.randn_like(y) * (strength * 0.75)
            out = y * (1 - n) + n
        out = out.clamp(0, 1)
        if blur > 0:
            kernel = blur + 1 if blur % 2 == 0 else blur
            out = TF.gaussian_blur(out.permute(0, 3, 1, 2), kernel).permute(0, 2, 3, 1)
        return out


@pytest.mark.parametrize("kind", [t.value for t in NoiseType])
@pytest.mark.parametrize(("strength", "blur"), [(0.3, 0), (1.0, 4), (0.65, 7)])
def test_each_kind_matches_the_torchvision_statement(kind: str, strength: float, blur: int) -> None:
    image = torch.rand(2, 180, 300, 3, generator=torch.Generator().manual_seed(5))
    for given in (None, image):
        ours = negative_noise(NoiseType(kind), strength, blur, 1234, given)
        expected = torchvision_noise(kind, strength, blur, 1234, given)
        assert ours.shape == expected.shape == (1 if given is None else 2, 224, 224, 3)
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)  # the blur: separable vs 2-D


def test_plain_formulas_with_one_generator() -> None:
    image = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(1))  # already CLIP-sized: no resize
    s = 0.4
    g = torch.Generator().manual_seed(7)
    u = torch.rand(1, 224, 224, 3, generator=g)
    torch.testing.assert_close(negative_noise(NoiseType.FADE, s, 0, 7, image), (image * 0.6 + u * 0.4).clamp(0, 1))
    g = torch.Generator().manual_seed(7)
    mask, u = torch.rand(1, 224, 224, 3, generator=g) < s, torch.rand(1, 224, 224, 3, generator=g)
    torch.testing.assert_close(negative_noise(NoiseType.DISSOLVE, s, 0, 7, image), torch.where(mask, u, image))
    g = torch.Generator().manual_seed(7)
    n = torch.randn(1, 224, 224, 3, generator=g)
    torch.testing.assert_close(negative_noise(NoiseType.GAUSSIAN, s, 0, 7, image), (image + 0.4 * n).clamp(0, 1))


def test_strength_limits() -> None:
    image = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(2))
    for kind in (NoiseType.FADE, NoiseType.DISSOLVE, NoiseType.GAUSSIAN):
        assert torch.equal(negative_noise(kind, 0.0, 0, 3, image), image), f"{kind.value} at strength 0 is the image"
    u = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(negative_noise(NoiseType.FADE, 1.0, 0, 3, image), u), "fade at strength 1 is pure noise"
    g = torch.Generator().manual_seed(3)
    torch.rand(1, 224, 224, 3, generator=g)
    second = torch.rand(1, 224, 224, 3, generator=g)
    assert torch.equal(negative_noise(NoiseType.DISSOLVE, 1.0, 0, 3, image), second), "every value replaced"
    # shuffle at strength 0 adds no noise: a smooth image warped by a few pixels (a smooth field), flipped both ways
    rows = torch.linspace(0, 1, 224).view(1, 224, 1, 1)
    smooth = (rows * torch.linspace(1, 0, 224).view(1, 1, 224, 1)).expand(1, 224, 224, 3).contiguous()
    shuffled = negative_noise(NoiseType.SHUFFLE, 0.0, 0, 3, smooth)
    inner = (slice(None), slice(20, -20), slice(20, -20))
    assert (shuffled[inner] - smooth.flip(1, 2)[inner]).abs().max() < 0.03
    assert not torch.equal(shuffled, smooth.flip(1, 2))


def test_gaussian_blur_of_an_impulse_is_the_outer_product_of_the_kernel() -> None:
    for kernel in (1, 3, 5, 9):
        sigma = default_blur_sigma(kernel)
        assert sigma == pytest.approx(0.15 * kernel + 0.35)
        impulse = torch.zeros(1, 1, 21, 21)
        impulse[0, 0, 10, 10] = 1.0
        weights = [math.exp(-0.5 * ((i - (kernel - 1) / 2) / sigma) ** 2) for i in range(kernel)]
        weights = [w / sum(weights) for w in weights]
        expected = torch.zeros(21, 21)
        half = kernel // 2
        for i in range(kernel):
            for j in range(kernel):
                expected[10 - half + i, 10 - half + j] = weights[i] * weights[j]
        torch.testing.assert_close(gaussian_blur(impulse, kernel, sigma)[0, 0], expected)


def test_even_blur_rounds_up_and_blur_smooths() -> None:
    noisy = negative_noise(NoiseType.FADE, 1.0, 0, 9)
    assert torch.equal(negative_noise(NoiseType.FADE, 1.0, 4, 9), negative_noise(NoiseType.FADE, 1.0, 5, 9))
    blurred = negative_noise(NoiseType.FADE, 1.0, 5, 9)
    assert blurred.std() < 0.5 * noisy.std()
    torch.testing.assert_close(blurred.mean(), noisy.mean(), atol=2e-3, rtol=0)


def test_warp_is_bilinear_sampling_at_displaced_pixel_centres() -> None:
    """A naive loop; the displacement reaches outside the image at its edges."""
    g = torch.Generator().manual_seed(4)
    height, width = 5, 6
    image = torch.rand(1, height, width, 2, generator=g)
    displacement = (torch.rand(1, height, width, 2, generator=g) - 0.5) * 0.8
    out = warp(image, displacement)
    for y in range(height):
        for x in range(width):
            # grid_sample's units: -1 and 1 are the outer edges of the first and last pixels
            sx = ((2 * x + 1) / width - 1 + float(displacement[0, y, x, 0]) + 1) * width / 2 - 0.5
            sy = ((2 * y + 1) / height - 1 + float(displacement[0, y, x, 1]) + 1) * height / 2 - 0.5
            x0, y0 = math.floor(sx), math.floor(sy)
            value, inside = torch.zeros(2), 0.0
            for yy, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
                for xx, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
                    if 0 <= yy < height and 0 <= xx < width:  # outside is black
                        value += wy * wx * image[0, yy, xx]
                        inside += wy * wx
            # torchvision's fill=0 multiplies by the share inside once more
            torch.testing.assert_close(out[0, y, x], value * inside, atol=1e-5, rtol=0)


def test_unsmoothed_displacement_is_scaled_uniform_noise() -> None:
    g = torch.Generator().manual_seed(8)
    dx, dy = torch.rand(1, 1, 4, 7, generator=g) * 2 - 1, torch.rand(1, 1, 4, 7, generator=g) * 2 - 1
    field = elastic_displacement(torch.Generator().manual_seed(8), 4, 7, 75.0, 0.0)
    torch.testing.assert_close(field[0, ..., 0], dx[0, 0] * 75.0 / 7)
    torch.testing.assert_close(field[0, ..., 1], dy[0, 0] * 75.0 / 4)


def test_seeds_and_refusals() -> None:
    for kind in NoiseType:
        assert torch.equal(negative_noise(kind, 0.5, 0, 11), negative_noise(kind, 0.5, 0, 11))
        assert not torch.equal(negative_noise(kind, 0.5, 0, 11), negative_noise(kind, 0.5, 0, 12))
    for strength in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            negative_noise(NoiseType.FADE, strength, 0, 0)
    with pytest.raises(ValueError, match="blur"):
        negative_noise(NoiseType.FADE, 0.5, 33, 0)
    with pytest.raises(ValueError, match="IMAGE"):
        negative_noise(NoiseType.FADE, 0.5, 0, 0, torch.zeros(224, 224, 3))
    with pytest.raises(ValueError, match="shuffle"):
        negative_noise("swirl", 0.5, 0, 0)
