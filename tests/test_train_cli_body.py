"""The training CLI with the body source: pose keypoints and weighted views from a (random) YOLO pose model, a new
body VAE trained jointly with the adapter (L_id on, scored by the pose model on the decoded x0), and then that VAE
frozen under a second adapter."""

from __future__ import annotations

import pytest
import train_cli_factories as factories
from pose_factories import build_varied_pose_model

from bolid_core.adapter.checkpoint import Source, load_adapter
from bolid_core.body.vae import load_body_vae
from bolid_core.train import cli
from bolid_core.train.state import latest_checkpoint, load_checkpoint

LATENT = 8


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli_body")
    return (
        root,
        factories.write_people(root / "people"),
        factories.write_models(root / "models"),
        build_varied_pose_model(root / "yolo11n-pose.pt"),
    )


def body_config(workspace, output: str, target: str, **paths) -> dict:
    root, dataset, models, pose = workspace
    config = factories.run_config(
        root, dataset, models, max_steps=2,
        adapter={"image_tokens": 0, "body_tokens": 2}, body={"views": 2, "latent_dim": LATENT},
        loss={"alpha_id": 0.1, "id_timesteps": [0, 999]}, target=target,
    )  # fmt: skip
    config["paths"].update(output=str(root / output), pose_model=str(pose), **paths)
    del config["paths"]["clip_vision"]
    return config


def test_joint_training_then_a_frozen_body_vae(workspace):
    root = workspace[0]
    joint = factories.write_config(root / "joint.toml", body_config(workspace, "joint", "adapter_and_body_vae"))
    assert cli.main(["--config", str(joint)]) == 0
    adapter = load_adapter(root / "joint" / "tiny.safetensors")
    assert adapter.spec.sources == (Source.BODY,) and adapter.spec.body_dim == LATENT
    vae_file = root / "joint" / "tiny_body_vae.safetensors"
    assert load_body_vae(vae_file).vae.config.latent_dim == LATENT
    history = load_checkpoint(latest_checkpoint(root / "joint" / "checkpoints")).state.history
    assert {"diff", "vae_kl", "vae_keypoints"} <= set(history[-1])

    frozen = body_config(workspace, "frozen", "adapter", body_vae=str(vae_file))
    frozen["loss"]["alpha_id"] = 0.0
    assert cli.main(["--config", str(factories.write_config(root / "frozen.toml", frozen))]) == 0
    assert load_adapter(root / "frozen" / "tiny.safetensors").spec.sources == (Source.BODY,)
    assert not (root / "frozen" / "tiny_body_vae.safetensors").exists()


def test_the_body_source_needs_a_pose_model_and_a_vae(workspace, capsys):
    root = workspace[0]
    config = body_config(workspace, "bad", "adapter")
    assert cli.main(["--config", str(factories.write_config(root / "bad.toml", config))]) == cli.EXIT_USAGE
    assert "paths.body_vae" in capsys.readouterr().err
    del config["paths"]["pose_model"]
    config["target"] = "adapter_and_body_vae"
    assert cli.main(["--config", str(factories.write_config(root / "bad.toml", config))]) == cli.EXIT_USAGE
    assert "paths.pose_model" in capsys.readouterr().err
