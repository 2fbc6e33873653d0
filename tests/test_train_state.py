"""Tier 1: training checkpoints. A save killed half-way is never read; the previous checkpoint loads and resumes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pickle_payloads import ExecPayload
from torch import nn
from train_tasks import WIDE_HIDDEN, denoiser_trainer, resume_config

from bolid_core.train.config import TrainConfig
from bolid_core.train.state import (
    MANIFEST_FILE,
    OPTIMIZER_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    TrainingState,
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_step(folder: Path, step: int, model: nn.Module, keep_last: int | None = None) -> Path:
    state = TrainingState(step=step, epoch=0, index=step, dataset_size=4, config=TrainConfig().to_dict())
    return save_checkpoint(folder, state, {"model": model}, {"optimizer": {}}, capture_rng(), keep_last)


@pytest.mark.parametrize("hang_in", [WEIGHTS_FILE, MANIFEST_FILE])
def test_killed_mid_save_leaves_the_previous_checkpoint_usable(tmp_path, hang_in):
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
    }
    script = ROOT / "tests" / "train_tasks.py"
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), hang_in],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        line = process.stdout.readline()
        assert line.strip() == "HALF", process.stderr.read()
        # The first save (step 1) is complete; the second (step 2) is half-way through writing `hang_in`.
        partial = [path for path in tmp_path.iterdir() if path.name.startswith(".partial-step_000000002")]
        assert len(partial) == 1 and (partial[0] / hang_in).exists()
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    assert latest_checkpoint(tmp_path).name == "step_000000001"
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step_000000001"]
    assert load_checkpoint(latest_checkpoint(tmp_path)).state.step == 1

    config = resume_config(max_steps=3, every_steps=1, keep_last=3)
    straight, straight_model = denoiser_trainer(config, hidden=WIDE_HIDDEN)
    straight.train()
    resumed, resumed_model = denoiser_trainer(config, tmp_path, hidden=WIDE_HIDDEN)
    assert resumed.resume().name == "step_000000001"
    assert resumed.train() == straight.history
    for key, value in straight_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key
    # the next save cleared the killed save's leftovers
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step_000000001", "step_000000002", "step_000000003"]


def test_incomplete_or_damaged_folders_are_never_picked(tmp_path):
    model = nn.Linear(3, 2)
    good = save_step(tmp_path, 1, model)
    (tmp_path / "step_000000009").mkdir()  # no manifest: a folder someone made, or a crash
    (tmp_path / ".partial-step_000000010-x").mkdir()
    (tmp_path / "step_000000011").write_text("not a folder")
    truncated = save_step(tmp_path, 12, model)
    weights_file = truncated / WEIGHTS_FILE
    weights_file.write_bytes(weights_file.read_bytes()[:-10])
    no_file = save_step(tmp_path, 13, model)
    (no_file / OPTIMIZER_FILE).unlink()
    assert latest_checkpoint(tmp_path) == good
    with pytest.raises(CheckpointError, match="not a complete training checkpoint"):
        load_checkpoint(truncated)


def test_same_size_damage_is_caught_on_load(tmp_path):
    path = save_step(tmp_path, 1, nn.Linear(3, 2))
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (path / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        load_checkpoint(path)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = save_step(tmp_path, 1, nn.Linear(3, 2))
    marker = tmp_path / "ran"
    torch.save({"optimizer": ExecPayload(marker)}, path / OPTIMIZER_FILE)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    data = (path / OPTIMIZER_FILE).read_bytes()
    import hashlib

    manifest["files"][OPTIMIZER_FILE] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="plain weights"):
        load_checkpoint(path)
    assert not marker.exists()


def test_keep_last_prunes_the_oldest(tmp_path):
    model = nn.Linear(3, 2)
    for step in (1, 2, 3, 4):
        save_step(tmp_path, step, model, keep_last=2)
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step_000000003", "step_000000004"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step_000000003", "step_000000004"]


def test_saving_a_step_again_replaces_it(tmp_path):
    model = nn.Linear(3, 2)
    save_step(tmp_path, 5, model)
    with torch.no_grad():
        model.weight.fill_(2.5)
    path = save_step(tmp_path, 5, model)
    assert torch.equal(load_checkpoint(path).weights["model.weight"], torch.full((2, 3), 2.5))


def test_checkpoint_contents_round_trip(tmp_path):
    model = nn.Linear(3, 2)
    tied = nn.Module()
    tied.a = nn.Linear(2, 2)
    tied.b = tied.a  # shared storage, which safetensors refuses unless copied apart
    history = [{"loss": 0.1 + 1e-17, "diff": 1 / 3}]
    config = TrainConfig()
    state = TrainingState(step=7, epoch=2, index=5, dataset_size=9, history=history, config=config.to_dict())
    optimizer_state = {
        "optimizer": {"state": {0: {"step": torch.tensor(7.0)}}, "param_groups": [{"betas": (0.9, 0.99)}]}
    }
    path = save_checkpoint(tmp_path, state, {"model": model, "tied": tied}, optimizer_state, capture_rng())
    loaded = load_checkpoint(path)
    assert loaded.state == state
    assert TrainConfig.from_dict(loaded.state.config) == config
    assert torch.equal(loaded.weights["model.weight"], model.weight)
    assert torch.equal(loaded.weights["tied.b.bias"], tied.a.bias)
    assert loaded.optimizer_state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)


def test_rng_states_restore_every_source(tmp_path):
    generator = torch.Generator().manual_seed(3)
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    np.random.randn()  # numpy caches the second gaussian of a pair: that is state too
    module = nn.Linear(1, 1)
    states = capture_rng(generator)
    path = save_checkpoint(tmp_path, TrainingState(1, 0, 0, 1), {"m": module}, {}, states)

    def draws():
        return (
            torch.rand(3).tolist(),
            torch.rand(3, generator=generator).tolist(),
            random.random(),  # noqa: S311
            np.random.randn(3).tolist(),
        )

    expected = draws()
    draws()
    restore_rng(load_checkpoint(path).rng_state, generator)
    assert draws() == expected
