"""A 2-process launch of the training CLI (accelerate launch --multi_gpu --num_processes 2, which on a machine
without a GPU starts torchrun's 2 processes on gloo) trains what one process with the double batch trains."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import train_cli_factories as factories
from safetensors.torch import load_file

from bolid_core.train import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def workspace(tmp_path):
    dataset = factories.write_people(tmp_path / "people")
    return tmp_path, dataset, factories.write_models(tmp_path / "models")


def _config(root: Path, workspace, output: str, **kwargs) -> dict:
    base, dataset, models = workspace
    config = factories.run_config(base, dataset, models, **kwargs)
    config["paths"]["output"] = str(root / output)
    return config


def _run(root: Path, name: str, config: dict) -> int:
    return cli.main(["--config", str(factories.write_config(root / f"{name}.toml", config))])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_train_as_one_with_the_double_batch(tmp_path, workspace):
    """accelerate launch --multi_gpu --num_processes 2 on a CPU machine runs torchrun's 2 processes on gloo."""
    if shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("accelerate's launcher is not installed")
    steps = 2
    assert _run(tmp_path, "one", _config(tmp_path, workspace, "one", max_steps=steps, batch_size=2)) == 0
    config = factories.write_config(
        tmp_path / "two.toml", _config(tmp_path, workspace, "two", max_steps=steps, batch_size=1)
    )
    launcher = Path(sys.executable).parent / "accelerate"
    command = [
        str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "bolid_core.train", "--config", str(config), "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    one = load_file(str(tmp_path / "one" / "tiny.safetensors"))
    two = load_file(str(tmp_path / "two" / "tiny.safetensors"))
    # Adam divides each gradient by its own magnitude, so float noise in the all-reduce of near-zero gradients
    # moves a few weights by up to ~1% of one step's update (lr = 3e-3): the tolerance is 2% of it.
    tolerance = 6e-5
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=tolerance, msg=key)
    # and the tolerance tells runs apart: one process with batch 1 (half the data per step) trains another adapter
    assert _run(tmp_path, "half", _config(tmp_path, workspace, "half", max_steps=steps, batch_size=1)) == 0
    half = load_file(str(tmp_path / "half" / "tiny.safetensors"))
    assert max((half[key] - one[key]).abs().max().item() for key in one) > 10 * tolerance
