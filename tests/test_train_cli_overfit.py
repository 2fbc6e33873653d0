"""The training CLI learns: on a tiny dataset its adapter cuts the diffusion loss's excess over the zero predictor
(E[ε²], what a UNet that cannot tell the noise from x_t is left with) below half of the initial adapter's.

The tiny UNet is random and frozen, so the adapter cannot learn to denoise; what it can learn is to stop the frozen
network's output from adding error, which is the part of the loss above E[ε²]. Both adapters are scored on the same
draws of timesteps and noise over the whole dataset."""

from __future__ import annotations

import torch
import train_cli_factories as factories

from bolid_core.adapter.checkpoint import load_adapter
from bolid_core.train import cli
from bolid_core.train.adapter_task import AdapterAttention, AdapterCollate, AdapterTask, LossWeights
from bolid_core.train.config import TrainTarget
from bolid_core.train.dataset import open_cache, scan_dataset
from bolid_core.train.diffusers_host import DiffusersDenoiser
from bolid_core.train.dropout import ConditionDropout

STEPS = 32
DRAWS = 4


class ZeroPrediction:
    """Predicts ε = 0 whatever x_t is: its loss on a draw is that draw's mean ε²."""

    def __init__(self, denoiser) -> None:
        self.schedule, self.attention = denoiser.schedule, denoiser.attention

    def __call__(self, noisy, timesteps, text):
        return torch.zeros_like(noisy)


def mean_loss(denoiser, batch) -> float:
    task = AdapterTask(TrainTarget.ADAPTER, ConditionDropout(0.0, 0.0, 0.0, 0.0), LossWeights(), denoiser)
    with torch.no_grad():
        return sum(task(batch, 0, torch.Generator().manual_seed(seed))["loss"].item() for seed in range(DRAWS)) / DRAWS


def test_training_halves_the_excess_loss(tmp_path):
    dataset_root = factories.write_people(tmp_path / "people")
    models = factories.write_models(tmp_path / "models")
    config = factories.run_config(
        tmp_path, dataset_root, models, max_steps=STEPS, optimizer={"lr": 3e-2, "weight_decay": 0.0}
    )
    path = factories.write_config(tmp_path / "run.toml", config)
    assert cli.main(["--config", str(path)]) == 0

    loaded = cli.load_cli_config(path)
    hosted = cli.load_host(loaded, torch.device("cpu"))
    dataset = open_cache(scan_dataset(dataset_root, min_side=factories.SIZE), tmp_path / "cache", hosted.encoders)
    batch = AdapterCollate()([dataset[index] for index in range(len(dataset))])
    initial = cli.build_adapter(loaded, hosted, dataset[0], torch.device("cpu"))  # the run's seeded start
    trained = load_adapter(tmp_path / "run" / "tiny.safetensors")

    def excess(adapter) -> float:
        denoiser = DiffusersDenoiser(hosted.sdxl.unet, hosted.sdxl.scheduler, AdapterAttention(adapter), 64)
        return mean_loss(denoiser, batch) - mean_loss(ZeroPrediction(denoiser), batch)

    before, after = excess(initial), excess(trained)
    assert before > 0.05, f"the frozen UNet adds too little error to learn from: {before:.3f}"
    assert after < 0.5 * before, f"excess loss {before:.3f} → {after:.3f}"
