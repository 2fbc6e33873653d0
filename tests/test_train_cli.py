"""The training CLI on a tiny diffusers SDXL model: config errors, the adapter file it writes, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import train_cli_factories as factories
from safetensors.torch import load_file

from bolid_core.adapter.checkpoint import AdapterKind, Source, load_adapter
from bolid_core.train import cli
from bolid_core.train.state import latest_checkpoint, load_checkpoint


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Dataset, models and one shared cache (encoded once, reused by every run of this module)."""
    root = tmp_path_factory.mktemp("train_cli")
    dataset = factories.write_people(root / "people")
    models = factories.write_models(root / "models")
    return root, dataset, models


def _run(root: Path, name: str, config: dict, *extra: str) -> int:
    path = factories.write_config(root / f"{name}.toml", config)
    return cli.main(["--config", str(path), *extra])


def _config(root: Path, workspace, output: str, **kwargs) -> dict:
    base, dataset, models = workspace
    config = factories.run_config(base, dataset, models, **kwargs)
    config["paths"]["output"] = str(root / output)
    return config


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda c: c["paths"].update(colour="red"), "paths.colour"),
        (lambda c: c["paths"].pop("cache"), "paths.cache"),
        (lambda c: c["paths"].update(base_model="/nowhere/sdxl"), "paths.base_model"),
        (lambda c: c["optimizer"].update(lr=-1.0), "optimizer.lr"),
        (lambda c: c["loss"].update(beta_clip=0.5), "paths.clip_score"),
        (lambda c: c["adapter"].update(face_tokens=2), "paths.face_models"),
        (lambda c: c["logging"].update(every_steps=0), "logging.every_steps"),
        (lambda c: c["logging"].update(tensorboard="yes"), "logging.tensorboard"),
        (lambda c: c["run"].update(name="../escape"), "run.name"),
        (lambda c: c.update(unknown_table={"a": 1}), "unknown_table"),
    ],
)
def test_config_errors_exit_2_and_name_the_key(tmp_path, workspace, capsys, change, named):
    config = _config(tmp_path, workspace, "run", max_steps=1)
    change(config)
    assert _run(tmp_path, "bad", config) == cli.EXIT_USAGE
    error = capsys.readouterr().err
    assert named in error and "Traceback" not in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_dataset_errors_exit_2(tmp_path, workspace, capsys):
    config = _config(tmp_path, workspace, "run", max_steps=1)
    (tmp_path / "empty").mkdir()
    config["paths"]["dataset"] = str(tmp_path / "empty")
    assert _run(tmp_path, "bad", config) == cli.EXIT_USAGE
    assert "no person folders" in capsys.readouterr().err


def _assert_same_adapter(left: Path, right: Path) -> None:
    a, b = load_file(str(left)), load_file(str(right))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7, msg=key)


def test_run_writes_a_loadable_adapter_and_resumes_exactly(tmp_path, workspace, capsys):
    """Stop after k steps, run again with max_steps 2k: it resumes at k and ends where a straight 2k-step run does."""
    k = 2
    assert _run(tmp_path, "first", _config(tmp_path, workspace, "split", max_steps=k)) == 0
    first = load_file(str(tmp_path / "split" / "tiny.safetensors"))
    capsys.readouterr()
    assert _run(tmp_path, "again", _config(tmp_path, workspace, "split", max_steps=2 * k)) == 0
    assert f"(step {k})" in capsys.readouterr().err  # resumed, not started over
    assert _run(tmp_path, "straight", _config(tmp_path, workspace, "straight", max_steps=2 * k)) == 0

    _assert_same_adapter(tmp_path / "split" / "tiny.safetensors", tmp_path / "straight" / "tiny.safetensors")
    split = load_file(str(tmp_path / "split" / "tiny.safetensors"))
    assert any(not torch.equal(first[key], split[key]) for key in split)  # the second run did train
    state = load_checkpoint(latest_checkpoint(tmp_path / "split" / "checkpoints")).state
    assert state.step == 2 * k and len(state.history) == 2 * k
    adapter = load_adapter(tmp_path / "split" / "tiny.safetensors")
    assert adapter.spec.kind is AdapterKind.BOLID and adapter.spec.sources == (Source.IMAGE,)
    assert adapter.spec.context_dim == 80 and len(adapter.spec.layer_widths) == 11


def test_ctrl_c_saves_exits_130_and_the_same_command_resumes(tmp_path, workspace, capsys, monkeypatch):
    k = 2
    real_progress = cli._progress

    def interrupting(*args):
        report, close = real_progress(*args)

        def hook(step, total, record):
            report(step, total, record)
            if step == k:
                raise KeyboardInterrupt

        return hook, close

    monkeypatch.setattr(cli, "_progress", interrupting)
    config = _config(tmp_path, workspace, "run", max_steps=2 * k)
    assert _run(tmp_path, "run", config) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "run the same command again" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "tiny.safetensors").exists()
    assert load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints")).state.step == k

    monkeypatch.setattr(cli, "_progress", real_progress)
    assert _run(tmp_path, "run", config) == 0
    assert f"(step {k})" in capsys.readouterr().err
    assert _run(tmp_path, "straight", _config(tmp_path, workspace, "straight", max_steps=2 * k)) == 0
    _assert_same_adapter(tmp_path / "run" / "tiny.safetensors", tmp_path / "straight" / "tiny.safetensors")


def test_l_clip_scores_the_decoded_x0_with_a_full_clip_model(tmp_path, workspace):
    import diffusers_factories

    config = _config(tmp_path, workspace, "clip", max_steps=2, loss={"beta_clip": 0.5})
    config["paths"]["clip_score"] = str(diffusers_factories.write_tiny_full_clip(tmp_path / "full_clip"))
    assert _run(tmp_path, "clip", config) == 0
    history = load_checkpoint(latest_checkpoint(tmp_path / "clip" / "checkpoints")).state.history
    assert all(0 < record["clip"] <= 2 for record in history)  # 1 − cos lies in [0, 2]
