"""Tier 1: BoLID's FID (eq. 15) and Inception Score against the formulas written plainly (numpy/scipy), and
the InceptionV3 weights read from a local file only."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from safetensors.torch import save_file

from bolid_core.eval.cli import main as eval_main
from bolid_core.eval.distribution import (
    distribution_metrics,
    frechet_distance,
    inception_outputs,
    inception_score,
    load_inception,
)
from bolid_core.eval.weights import EvalModelError


def fid_eq15(real: np.ndarray, generated: np.ndarray) -> float:
    """||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)), BoLID eq. 15, with scipy's matrix square root."""
    mu_r, mu_g = real.mean(axis=0), generated.mean(axis=0)
    s_r, s_g = np.cov(real, rowvar=False), np.cov(generated, rowvar=False)
    root = scipy.linalg.sqrtm(s_r @ s_g).real
    return float(np.sum((mu_r - mu_g) ** 2) + np.trace(s_r + s_g - 2 * root))


def fid_eq15_few_images(real: np.ndarray, generated: np.ndarray) -> float:
    """Eq. 15 for fewer images than feature dimensions: with S = Xc^T Xc / (n - 1), the non-zero eigenvalues of
    S_r S_g are the squared singular values of Xc_r Xc_g^T / sqrt((n_r - 1)(n_g - 1)), so
    Tr((S_r S_g)^(1/2)) is the sum of those singular values (no 2048 x 2048 matrix function needed)."""
    centred_r, centred_g = real - real.mean(axis=0), generated - generated.mean(axis=0)
    trace_s_r = np.sum(centred_r**2) / (len(real) - 1)
    trace_s_g = np.sum(centred_g**2) / (len(generated) - 1)
    scale = np.sqrt((len(real) - 1) * (len(generated) - 1))
    trace_root = np.linalg.svd(centred_r @ centred_g.T, compute_uv=False).sum() / scale
    mean_gap = np.sum((real.mean(axis=0) - generated.mean(axis=0)) ** 2)
    return float(mean_gap + trace_s_r + trace_s_g - 2 * trace_root)


def is_plain(logits: np.ndarray, splits: int) -> list[float]:
    """exp(E_x KL(p(y|x) || p(y))) per consecutive split, p(y) the split's mean posterior, by loops."""
    scores, n = [], len(logits)
    for s in range(splits):
        chunk = logits[s * n // splits : (s + 1) * n // splits]
        posteriors = [np.exp(row - row.max()) / np.exp(row - row.max()).sum() for row in chunk]
        marginal = np.mean(posteriors, axis=0)
        kls = [sum(p[c] * (np.log(p[c]) - np.log(marginal[c])) for c in range(len(p))) for p in posteriors]
        scores.append(float(np.exp(np.mean(kls))))
    return scores


def test_fid_is_eq15() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 6)) @ rng.normal(size=(6, 6))
    generated = rng.normal(loc=0.7, size=(45, 6)) @ rng.normal(size=(6, 6))
    expected = fid_eq15(real, generated)
    assert expected > 1.0
    assert frechet_distance(torch.from_numpy(real), torch.from_numpy(generated)) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(torch.from_numpy(real), torch.from_numpy(real)) == pytest.approx(0.0, abs=1e-8)
    few_real, few_generated = real[:4], generated[:5]  # fewer images than dimensions: singular covariances
    expected_few = fid_eq15_few_images(few_real, few_generated)
    assert expected_few == pytest.approx(fid_eq15(few_real, few_generated), rel=1e-5), "the test's own two forms"
    assert frechet_distance(torch.from_numpy(few_real), torch.from_numpy(few_generated)) == pytest.approx(
        expected_few, rel=1e-6
    )
    with pytest.raises(ValueError, match="at least 2 generated images"):
        frechet_distance(torch.from_numpy(real), torch.from_numpy(generated[:1]))


def test_inception_score_is_the_kl_formula() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(30, 7))
    for splits in (1, 3):
        plain = is_plain(logits, splits)
        mean, std = inception_score(torch.from_numpy(logits), splits, shuffle=False)
        assert mean == pytest.approx(np.mean(plain), rel=1e-9) and std == pytest.approx(np.std(plain), rel=1e-9)
    shuffled = logits[np.random.RandomState(2020).permutation(30)]  # torch-fidelity's default: fixed-seed shuffle
    assert inception_score(torch.from_numpy(logits), 3)[0] == pytest.approx(np.mean(is_plain(shuffled, 3)), rel=1e-9)
    assert inception_score(torch.from_numpy(logits), 3)[0] != pytest.approx(np.mean(is_plain(logits, 3)), rel=1e-6)
    # Confident and evenly spread over K classes: IS = K; all images of one class: IS = 1.
    assert inception_score(torch.eye(5).repeat(4, 1) * 60, 1)[0] == pytest.approx(5.0, rel=1e-6)
    assert inception_score(torch.eye(5)[:1].repeat(6, 1) * 60, 2)[0] == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="IS splits"):
        inception_score(torch.from_numpy(logits), 31)


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torch-fidelity's InceptionV3 layout with random weights, built without its download."""
    from torch_fidelity import feature_extractor_inceptionv3 as module

    torch.manual_seed(0)
    with (
        mock.patch.object(module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None),
        mock.patch.object(module.torch, "load", lambda *args, **kwargs: {}),
    ):
        network = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="")
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.safetensors"
    save_file({key: value.contiguous() for key, value in network.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def inception(random_inception: Path) -> torch.nn.Module:
    return load_inception(random_inception)


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index, (height, width) in enumerate(sizes):
        paths.append(folder / f"{index}.png")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_inception_weights_load_from_a_local_file(
    random_inception: Path, inception: torch.nn.Module, tmp_path: Path
) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    model = inception
    assert isinstance(model, FeatureExtractorInceptionV3)
    from safetensors.torch import load_file

    expected = load_file(str(random_inception))
    assert all(torch.equal(model.state_dict()[key], value) for key, value in expected.items())
    torch.save(expected, tmp_path / "weights.pth")
    assert torch.equal(load_inception(tmp_path / "weights.pth").fc.weight, expected["fc.weight"])

    files = write_images(tmp_path / "a", [(40, 40), (40, 40), (30, 50)], seed=0)
    pool, logits = inception_outputs(model, files, batch_size=2)
    assert pool.shape == (3, 2048) and logits.shape == (3, 1008)
    single, _ = inception_outputs(model, files[2:], batch_size=1)
    assert torch.allclose(pool[2], single[0], atol=1e-5), "images of another size go in a batch of their own"


def test_inception_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"weights-inception-2015-12-05-6726825d\.pth.*" + str(tmp_path)):
        load_inception(tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    save_file({"fc.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(EvalModelError, match="is not torch-fidelity's"):
        load_inception(tmp_path / "other.safetensors")


def test_cli_fid_and_is_over_folders(random_inception: Path, inception: torch.nn.Module, tmp_path: Path) -> None:
    write_images(tmp_path / "generated", [(48, 48)] * 4, seed=1)
    write_images(tmp_path / "real", [(48, 48)] * 3 + [(40, 56)], seed=2)
    code = eval_main([
        "--images", str(tmp_path / "generated"), "--real", str(tmp_path / "real"),
        "--inception", str(random_inception), "--is-splits", "2", "--out", str(tmp_path / "m.json"),
    ])  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "m.json").read_text())["distribution"]
    assert results["generated_images"] == 4 and results["real_images"] == 4 and results["is_splits"] == 2

    model = inception
    generated_pool, generated_logits = inception_outputs(model, sorted((tmp_path / "generated").glob("*.png")))
    real_pool, _ = inception_outputs(model, sorted((tmp_path / "real").glob("*.png")))
    assert results["fid"] == pytest.approx(fid_eq15_few_images(real_pool.numpy(), generated_pool.numpy()), rel=1e-4)
    permuted = generated_logits.numpy()[np.random.RandomState(2020).permutation(4)]  # torch-fidelity's shuffle
    assert results["inception_score_mean"] == pytest.approx(np.mean(is_plain(permuted, 2)), rel=1e-6)

    only_is = distribution_metrics(model, tmp_path / "generated", None, is_splits=10)
    assert only_is.fid is None and only_is.is_splits == 4, "splits are capped at the number of images"


def test_cli_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        eval_main(["--images", str(tmp_path), "--out", str(tmp_path / "m.json")])
    assert "give --manifest" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_main(["--images", str(tmp_path), "--real", str(tmp_path), "--out", str(tmp_path / "m.json"),
                   "--manifest", "m.json", "--insightface", "x", "--clip", "y"])  # fmt: skip
    assert "needs --inception" in capsys.readouterr().err
    code = eval_main(["--images", str(tmp_path), "--inception", str(tmp_path / "missing.pth"), "--out",
                      str(tmp_path / "m.json")])  # fmt: skip
    assert code == 1 and "weights-inception-2015-12-05-6726825d.pth" in capsys.readouterr().err
