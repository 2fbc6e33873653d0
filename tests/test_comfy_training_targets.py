"""Tier 2: the ComfyUI training node's targets: the body VAE alone, the adapter and the body VAE jointly, resume of a
body-VAE run, and the inputs a body target needs."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_comfy_training_host import write_dataset

from bolid_core.adapter import Source, load_adapter
from bolid_core.body.vae import BodyEncoder, BodyVAE, BodyVAEConfig, load_body_vae
from bolid_core.train.config import TrainConfig, TrainTarget

SMALL_VAE = BodyVAEConfig(latent_dim=12, image_size=32, channels=(8, 16), keypoint_hidden=16, decoder_hidden=16,
                          map_size=8)  # fmt: skip


@pytest.fixture(scope="module")
def pose_model(tmp_path_factory, comfy_path):
    from pose_factories import build_varied_pose_model

    from bolid_core.body.pose import load_pose_model

    return load_pose_model(build_varied_pose_model(tmp_path_factory.mktemp("pose") / "pose.pt"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("people") / "data")


def small_encoder(seed: int = 0) -> BodyEncoder:
    torch.manual_seed(seed)
    return BodyEncoder(BodyVAE(SMALL_VAE).eval().requires_grad_(False), "start")


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def body_config(target: TrainTarget, steps: int, **sections) -> TrainConfig:
    from bolid_core.comfy.train_host import with_overrides

    values = {
        "steps": {"max_steps": steps, "batch_size": 2}, "data": {"resolution": 64, "min_views": 2},
        "adapter": {"image_tokens": 0, "face_tokens": 0, "body_tokens": 2}, "loss": {"alpha_id": 0.0, "beta_clip": 0.0},
        "body": {"views": 2, "latent_dim": 10}, "optimizer": {"lr": 1e-3},
    }  # fmt: skip
    for name, fields in sections.items():
        values[name] = {**values.get(name, {}), **fields}
    return with_overrides(TrainConfig(), {"seed": 5, "target": target.value}, **values)


def test_body_vae_target_writes_a_new_vae_the_body_encoder_loader_lists(
    comfy_nodes, pose_model, dataset, tmp_path: Path, monkeypatch
) -> None:
    """No body_encoder connected: a new VAE of body.latent_dim, seeded from config.seed, trained without any
    diffusion model, written as models/bolid/<adapter_name>_body_vae.safetensors; no adapter file."""
    import folder_paths

    from bolid_core.comfy.folders import adapter_save_path, body_encoder_choices
    from bolid_core.comfy.train_host import TrainingModels, TrainingRun, train_adapter

    models_bolid = tmp_path / "models_bolid"
    models_bolid.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "bolid", ([str(models_bolid)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    config = body_config(TrainTarget.BODY_VAE, 3)
    adapter_path = Path(adapter_save_path("shape"))
    run = TrainingRun(dataset, adapter_path, tmp_path / "run", tmp_path / "cache", config)
    result = train_adapter(TrainingModels(None, None, None, pose_model=pose_model), run)

    assert result.adapter_path is None and not adapter_path.exists()
    assert result.body_vae_path == models_bolid / "shape_body_vae.safetensors"
    assert [path.name for path in result.written] == ["shape_body_vae.safetensors"]
    assert len(result.history) == 3 and all(math.isfinite(r["loss"]) for r in result.history)
    assert {"vae_kl", "vae_keypoints", "vae_map"} <= set(result.history[-1]) and "diff" not in result.history[-1]
    assert "shape_body_vae.safetensors" in body_encoder_choices()
    (loaded,) = comfy_nodes["BoLIDBodyEncoderLoader"].execute("shape_body_vae.safetensors").result
    assert repr(loaded.vae.config) == repr(BodyVAEConfig(latent_dim=10))  # the pack loads its own copy of the class
    torch.manual_seed(5)  # config.seed: where a new VAE starts
    start = BodyVAE(BodyVAEConfig(latent_dim=10)).state_dict()
    trained = load_body_vae(result.body_vae_path).vae.state_dict()
    assert start.keys() == trained.keys()
    assert all(not torch.equal(start[k], trained[k]) for k in start if start[k].is_floating_point())


def test_joint_target_trains_c_body_through_the_connected_vae(
    tiny_model, tiny_vae, comfy_path, pose_model, dataset, tmp_path: Path
) -> None:
    """adapter_and_body_vae continues the connected encoder (a copy: the loader's output keeps its weights) and
    writes both files. With the ELBO's weight 0 and no weight decay, only L_diff's gradient through c_body moves the
    VAE: its encoder changes, its decoder (which only the ELBO reads) does not."""
    from bolid_test_models.tiny_models import tiny_sdxl_clip

    from bolid_core.comfy.attn2 import attn2_layer_keys
    from bolid_core.comfy.train_host import TrainingModels, TrainingRun, train_adapter

    connected = small_encoder(seed=1)
    start = {k: v.clone() for k, v in connected.vae.state_dict().items()}
    config = body_config(
        TrainTarget.JOINT, 2, body={"joint_weight": 0.0}, optimizer={"weight_decay": 0.0},
        dropout={"image": 0.0, "face": 0.0, "body": 0.0, "text": 0.0},
    )  # fmt: skip
    run = TrainingRun(dataset, tmp_path / "joint.safetensors", tmp_path / "run", tmp_path / "cache", config)
    models = TrainingModels(tiny_model, tiny_vae, tiny_sdxl_clip(seed=1), pose_model=pose_model, body_encoder=connected)
    result = train_adapter(models, run)

    assert [path.name for path in result.written] == ["joint.safetensors", "joint_body_vae.safetensors"]
    assert {"diff", "vae_kl"} <= set(result.history[-1])
    assert states_equal(connected.vae.state_dict(), start), "the connected body encoder was trained in place"
    vae = load_body_vae(result.body_vae_path).vae
    assert vae.config == SMALL_VAE, "a connected encoder is continued with its own shape"
    trained = vae.state_dict()
    assert all(not torch.equal(trained[k], start[k]) for k in start if k.startswith("to_posterior."))
    decoder = [k for k in start if k.startswith("decoder.")]
    assert decoder and all(torch.equal(trained[k], start[k]) for k in decoder), "the ELBO weighed 0 moved the decoder"

    adapter = load_adapter(result.adapter_path)
    assert adapter.spec.tokens == {Source.BODY: 2} and adapter.spec.body_dim == SMALL_VAE.latent_dim
    unet = tiny_model.get_model_object("diffusion_model")
    text_keys = [m.attn2.to_k.weight.detach().float() for m in unet.modules() if hasattr(m, "attn2")]
    assert len(text_keys) == len(attn2_layer_keys(tiny_model)) == len(adapter.layers)
    for layer in range(len(adapter.layers)):
        body_key = adapter.kv(layer, Source.BODY).to_k.weight
        # It started at one of the text keys (init_kv_from_text); training moved it off every one of them.
        nearest = min((body_key - text).abs().max().item() for text in text_keys if text.shape == body_key.shape)
        assert 0 < nearest < 0.1


def test_body_vae_run_resumes_at_the_next_step_and_ends_where_an_unbroken_run_does(
    comfy_path, pose_model, dataset, tmp_path: Path
) -> None:
    from bolid_core.comfy.train_host import TrainingModels, TrainingRun, train_adapter
    from bolid_core.train.state import latest_checkpoint, load_checkpoint

    class Cancelled(Exception):
        pass

    config = body_config(TrainTarget.BODY_VAE, 4)
    models = TrainingModels(None, None, None, pose_model=pose_model, body_encoder=small_encoder(seed=2))
    unbroken = train_adapter(
        models, TrainingRun(dataset, tmp_path / "a" / "whole.safetensors", tmp_path / "a", tmp_path / "cache", config)
    )
    run = TrainingRun(dataset, tmp_path / "b" / "broken.safetensors", tmp_path / "b", tmp_path / "cache", config)

    def cancel_at_two(step, total, terms):
        if step == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        train_adapter(models, run, on_step=cancel_at_two)
    checkpoint = load_checkpoint(latest_checkpoint(tmp_path / "b" / "checkpoints"))
    assert checkpoint.state.step == 2 and not run.body_vae_path.exists()
    assert checkpoint.weights and all(key.startswith("body_vae.") for key in checkpoint.weights)
    steps = []
    resumed = train_adapter(models, replace(run, resume=True), on_step=lambda s, n, t: steps.append(s))
    assert steps == [3, 4] and len(resumed.history) == 4
    assert states_equal(
        load_body_vae(resumed.body_vae_path).vae.state_dict(), load_body_vae(unbroken.body_vae_path).vae.state_dict()
    )


@pytest.mark.parametrize("target", [TrainTarget.BODY_VAE, TrainTarget.JOINT])
def test_body_targets_without_a_pose_model_are_refused(comfy_nodes, target, dataset, tmp_path: Path) -> None:
    from bolid_core.comfy.train_host import TrainingModels, TrainingRun, train_adapter

    run = TrainingRun(dataset, tmp_path / "x.safetensors", tmp_path / "run", tmp_path / "cache", body_config(target, 1))
    with pytest.raises(ValueError, match=f"'{target.value}'.*connect pose_model"):
        train_adapter(TrainingModels(None, None, None, body_encoder=small_encoder()), run)
    assert not (tmp_path / "cache").exists(), "refused before any work"


def test_joint_target_needs_body_tokens(comfy_nodes, pose_model, dataset, tmp_path: Path) -> None:
    from bolid_core.comfy.train_host import TrainingModels, TrainingRun, train_adapter

    config = body_config(TrainTarget.JOINT, 1, adapter={"image_tokens": 2, "body_tokens": 0})
    run = TrainingRun(dataset, tmp_path / "x.safetensors", tmp_path / "run", tmp_path / "cache", config)
    with pytest.raises(ValueError, match="body_tokens is 0"):
        train_adapter(TrainingModels(None, None, None, pose_model=pose_model), run)


def test_node_offers_the_targets_and_names_the_body_vae_file(comfy_nodes) -> None:
    schema = comfy_nodes["BoLIDTrainAdapter"].define_schema()
    (target,) = [item for item in schema.inputs if item.id == "target"]
    assert target.options == ["adapter", "body_vae", "adapter_and_body_vae"] and target.default == "adapter"
    assert schema.outputs[0].display_name == "written"
