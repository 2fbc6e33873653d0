"""BoLID's distribution metrics over folders of images: FID (BoLID eq. 15) and the Inception Score.

FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) over InceptionV3 pool features (2048-d) of real and
generated images; IS = exp(E_x KL(p(y|x) || p(y))) over the generated images' class posteriors, averaged over
splits. Both come from torch-fidelity (its InceptionV3, TF-compatible resize, and statistics); the Inception
weights are read from a local file only (torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .weights import EvalModelError, read_weights, require_file

INCEPTION_FILE = "torch-fidelity's weights-inception-2015-12-05-6726825d.pth"
POOL_FEATURES = "2048"
CLASS_LOGITS = "logits_unbiased"  # the 1008-way logits without the fc bias, as torch-fidelity's IS uses
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_IS_SPLITS = 10


def frechet_distance(real_features: torch.Tensor, generated_features: torch.Tensor) -> float:
    """BoLID eq. 15 on (N, D) feature sets (torch-fidelity's statistics and matrix square-root trace)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    for name, features in (("real", real_features), ("generated", generated_features)):
        if features.dim() != 2 or features.shape[0] < 2:
            raise ValueError(f"FID needs at least 2 {name} images (a covariance); got {features.shape[0]}.")
    real = fid_features_to_statistics(real_features.double().cpu())
    generated = fid_features_to_statistics(generated_features.double().cpu())
    return fid_statistics_to_metric(real, generated, verbose=False)["frechet_inception_distance"]


def inception_score(
    logits: torch.Tensor, splits: int = DEFAULT_IS_SPLITS, shuffle: bool = True, seed: int = 2020
) -> tuple[float, float]:
    """(mean, std) over `splits` of exp(E_x KL(p(y|x) || p(y))), p(y) being each split's mean posterior.
    Shuffled with a fixed seed before splitting, as torch-fidelity does by default."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    if not 1 <= splits <= logits.shape[0]:
        raise ValueError(f"IS splits must be between 1 and the number of images ({logits.shape[0]}); got {splits}.")
    result = isc_features_to_metric(logits.cpu(), splits=splits, shuffle=shuffle, rng_seed=seed)
    return result["inception_score_mean"], result["inception_score_std"]


def load_inception(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """torch-fidelity's InceptionV3 feature extractor with weights from a local file (.pth/.pt read as plain
    tensors, or .safetensors). It returns (pool features, class logits) for uint8 (N, 3, H, W) images."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = require_file(path, "InceptionV3 weights", INCEPTION_FILE)
    state = read_weights(path, "InceptionV3")
    # torch-fidelity unpickles what it is given; give it only tensors already read safely above.
    checked = io.BytesIO()
    torch.save(state, checked)
    checked.seek(0)
    try:
        model = FeatureExtractorInceptionV3(
            "inception-v3-compat", [POOL_FEATURES, CLASS_LOGITS], feature_extractor_weights_path=checked
        )
    except RuntimeError as error:
        raise EvalModelError(f"{path.name} is not {INCEPTION_FILE}: {str(error).splitlines()[0]}") from None
    return model.to(device)


def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {folder} not found.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder}.")
    return files


def _same_size_batches(files: list[Path], batch_size: int) -> Iterator[torch.Tensor]:
    batch: list[np.ndarray] = []
    for file in files:
        pixels = np.asarray(Image.open(file).convert("RGB"), dtype=np.uint8)
        if batch and (pixels.shape != batch[0].shape or len(batch) == batch_size):
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            batch = []
        batch.append(pixels)
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)


@torch.no_grad()
def inception_outputs(
    inception: torch.nn.Module,
    files: list[Path],
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool features (N, 2048), class logits (N, 1008)) of image files, in float64 on the CPU."""
    device = next(inception.parameters()).device
    pools, logits, done = [], [], 0
    for batch in _same_size_batches(files, batch_size):
        pool, logit = inception(batch.to(device))
        pools.append(pool.double().cpu())
        logits.append(logit.double().cpu())
        done += batch.shape[0]
        if progress is not None:
            progress(done, len(files))
    return torch.cat(pools), torch.cat(logits)


@dataclass(frozen=True)
class DistributionMetrics:
    generated_images: int
    inception_score_mean: float
    inception_score_std: float
    is_splits: int
    real_images: int | None = None
    fid: float | None = None


def distribution_metrics(
    inception: torch.nn.Module,
    generated: str | Path,
    real: str | Path | None,
    is_splits: int = DEFAULT_IS_SPLITS,
) -> DistributionMetrics:
    """IS of the images in `generated`; FID against the images in `real` when given."""
    generated_pool, generated_logits = inception_outputs(inception, image_files(generated))
    splits = min(is_splits, generated_logits.shape[0])
    score, spread = inception_score(generated_logits, splits)
    if real is None:
        return DistributionMetrics(generated_pool.shape[0], score, spread, splits)
    real_pool, _ = inception_outputs(inception, image_files(real))
    fid = frechet_distance(real_pool, generated_pool)
    return DistributionMetrics(generated_pool.shape[0], score, spread, splits, real_pool.shape[0], fid)
