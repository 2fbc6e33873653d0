"""Tier 1: the training config file: round trips, and every bad value gets a message naming its key."""

from __future__ import annotations

import builtins
import math

import pytest

from bolid_core.train.config import (
    CheckpointConfig,
    ConfigError,
    DropoutConfig,
    LossConfig,
    MixedPrecision,
    OptimizerConfig,
    Schedule,
    ScheduleConfig,
    StepsConfig,
    TrainConfig,
    load_config,
    save_config,
)

CUSTOM = TrainConfig(
    optimizer=OptimizerConfig(lr=3e-5, betas=(0.8, 0.95), weight_decay=0.0, eps=1e-6, max_grad_norm=0.0),
    schedule=ScheduleConfig(kind=Schedule.WARMUP_COSINE, warmup_steps=250),
    steps=StepsConfig(max_steps=20_000, batch_size=4, grad_accumulation=8),
    checkpoint=CheckpointConfig(every_steps=250, keep_last=5, on_interrupt=False),
    loss=LossConfig(alpha_id=0.05, id_every_steps=4, id_timesteps=(0, 400), beta_clip=0.2, clip_timesteps=(10, 600)),
    dropout=DropoutConfig(image=0.5, face=0.2, body=0.0, text=1.0),
    seed=2**40 + 1,
    mixed_precision=MixedPrecision.BF16,
    gradient_checkpointing=True,
)


def test_defaults_are_the_published_rates():
    config = TrainConfig()
    assert (config.dropout.image, config.dropout.face) == (0.64, 0.1)  # FaceStudio §3.3
    assert config.mixed_precision is MixedPrecision.NO and config.schedule.kind is Schedule.CONSTANT


def test_toml_round_trip(tmp_path):
    path = save_config(CUSTOM, tmp_path / "train.toml")
    assert load_config(path) == CUSTOM
    assert TrainConfig.from_dict(CUSTOM.to_dict()) == CUSTOM
    assert load_config(save_config(TrainConfig(), tmp_path / "default.toml")) == TrainConfig()


def test_a_partial_toml_keeps_the_other_defaults(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('seed = 5\n[optimizer]\nlr = 2e-4\n[schedule]\nkind = "linear_warmup"\nwarmup_steps = 10\n')
    config = load_config(path)
    assert config.seed == 5 and config.optimizer.lr == 2e-4 and config.optimizer.betas == (0.9, 0.999)
    assert config.schedule == ScheduleConfig(kind=Schedule.LINEAR_WARMUP, warmup_steps=10)
    assert config.steps == StepsConfig()


def test_yaml(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("seed: 3\nmixed_precision: fp16\nsteps:\n  max_steps: 10\nloss:\n  id_timesteps: [0, 500]\n")
    config = load_config(path)
    assert config.seed == 3 and config.mixed_precision is MixedPrecision.FP16
    assert config.steps.max_steps == 10 and config.loss.id_timesteps == (0, 500)


def test_yaml_without_pyyaml_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "train.yml"
    path.write_text("seed: 3\n")
    real_import = builtins.__import__

    def no_yaml(name, *args, **kwargs):
        if name == "yaml":
            raise ModuleNotFoundError("No module named 'yaml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_yaml)
    with pytest.raises(ConfigError, match=r"needs PyYAML \(`pip install pyyaml`\); or write the config as TOML"):
        load_config(path)


BAD_TOML = [
    (
        "sed = 1",
        "train.toml: sed is not a known key; remove it or use one of adapter, body, checkpoint, data, dropout,",
    ),
    ("[optimizer]\nlrate = 1e-4", "train.toml: optimizer.lrate is not a known key; remove it or use one of betas, eps"),
    ("[optimizer]\nlr = nan", "train.toml: optimizer.lr is nan; write a finite number."),
    ("[optimizer]\nweight_decay = inf", "train.toml: optimizer.weight_decay is inf; write a finite number."),
    ("[optimizer]\nlr = 0", r"optimizer.lr is 0.0; it must be in \(0.0, 1.0\]."),
    ("[optimizer]\nlr = '1e-4'", "optimizer.lr is str '1e-4'; write a number."),
    ("[optimizer]\nlr = true", "optimizer.lr is bool True; write a number."),
    ("[optimizer]\nbetas = [0.9]", "optimizer.betas is list .*; write a list of 2 numbers."),
    ("[optimizer]\nbetas = [0.9, 1.0]", r"optimizer.betas\[1\] is 1.0; each beta must be in \[0, 1\)"),
    ("[optimizer]\nbetas = [0.9, nan]", r"optimizer.betas\[1\] is nan; write a finite number."),
    ("[optimizer]\nmax_grad_norm = -1", r"optimizer.max_grad_norm is -1.0; .* \(0 turns clipping off\)."),
    ("[schedule]\nkind = 'cosine'", "schedule.kind is str 'cosine'; write one of 'constant', 'linear_warmup', "),
    ("[schedule]\nwarmup_steps = -1", r"schedule.warmup_steps is -1; it must be in \[0, inf\]."),
    ("[steps]\nmax_steps = 1.5", "steps.max_steps is float 1.5; write a whole number."),
    ("[steps]\nbatch_size = 0", r"steps.batch_size is 0; it must be in \[1, inf\]."),
    ("[steps]\ngrad_accumulation = true", "steps.grad_accumulation is bool True; write a whole number."),
    ("[checkpoint]\nkeep_last = 0", r"checkpoint.keep_last is 0; it must be in \[1, inf\]."),
    ("[checkpoint]\non_interrupt = 1", "checkpoint.on_interrupt is int 1; write true or false."),
    ("[loss]\nalpha_id = -0.1", r"loss.alpha_id is -0.1; it must be in \[0.0, inf\]."),
    (
        "[loss]\nid_timesteps = [500, 100]",
        r"loss.id_timesteps is \[500, 100\]; write \[min, max\] with 0 <= min <= max.",
    ),
    ("[dropout]\nface = 1.5", r"dropout.face is 1.5; it must be in \[0.0, 1.0\]."),
    ("[dropout]\ntext = nan", "dropout.text is nan; write a finite number."),
    ("seed = -1", r"seed is -1; it must be in \[0, "),
    ("mixed_precision = 'fp8'", "mixed_precision is str 'fp8'; write one of 'no', 'fp16', 'bf16'."),
    ("gradient_checkpointing = 'yes'", "gradient_checkpointing is str 'yes'; write true or false."),
    ("optimizer = 3", r"optimizer must be a table \(\[optimizer\] in TOML\), not int 3."),
    ("[body]\nimage_size = 8", r"body.image_size is 8; it must be in \[16, inf\] \(the body-view encoder's smallest"),
    ("target = 'unet'", "target is str 'unet'; write one of 'adapter', 'body_vae', 'adapter_and_body_vae', 'base_u"),
]


@pytest.mark.parametrize(("text", "message"), BAD_TOML, ids=[text.split("\n")[-1] for text, _ in BAD_TOML])
def test_bad_values_are_named(tmp_path, text, message):
    path = tmp_path / "train.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[optimizer\nlr = 1")
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listed)
    nan_yaml = tmp_path / "nan.yaml"
    nan_yaml.write_text("optimizer:\n  eps: .nan\n")
    with pytest.raises(ConfigError, match=r"optimizer\.eps is nan"):
        load_config(nan_yaml)
    other = tmp_path / "train.json"
    other.write_text("{}")
    with pytest.raises(ConfigError, match=r"must end in .toml, .yaml or .yml"):
        load_config(other)


def test_configs_built_in_code_are_checked_too():
    with pytest.raises(ConfigError, match="lr is nan"):
        OptimizerConfig(lr=math.nan)
    with pytest.raises(ConfigError, match="keep_last is 0"):
        CheckpointConfig(keep_last=0)
