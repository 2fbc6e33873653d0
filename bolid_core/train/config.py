"""Training configuration: frozen, grouped dataclasses, read from one TOML or YAML file and validated strictly.

Every number is checked for type, finiteness and range, and every unknown key is refused, with a message that names
the key (as `group.key`) and says what to write instead. `to_dict` / `from_dict` round trip through plain JSON-able
values, so a checkpoint stores the configuration it was trained with.
"""

from __future__ import annotations

import enum
import json
import math
import os
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

from ..files import write_text_atomic


class ConfigError(ValueError):
    """A training configuration value or file that cannot be used; the message names the key."""

    def __init__(self, message: str, key: str = "") -> None:
        self.key, self.problem = key, message
        super().__init__(f"{key} {message}" if key else message)

    def under(self, prefix: str) -> ConfigError:
        return ConfigError(self.problem, f"{prefix}.{self.key}" if self.key else prefix)


class Schedule(str, enum.Enum):
    CONSTANT = "constant"
    LINEAR_WARMUP = "linear_warmup"  # linear ramp over warmup_steps, then constant
    WARMUP_COSINE = "warmup_cosine"  # linear ramp, then cosine decay to 0 at max_steps


class TrainTarget(str, enum.Enum):
    ADAPTER = "adapter"  # the adapter's projections, fusion layer, text prior and per-layer K/V
    BODY_VAE = "body_vae"  # the body VAE alone: reconstruction + KL
    JOINT = "adapter_and_body_vae"  # both, the body vector computed with gradients through the VAE
    # The diffusers UNet's own weights (plain L_diff on latents and captions, text dropout for CFG); no adapter, no
    # body. The command line only: the ComfyUI node trains adapters on a loaded MODEL.
    BASE_UNET = "base_unet"


class MixedPrecision(str, enum.Enum):
    NO = "no"
    FP16 = "fp16"  # with a gradient scaler
    BF16 = "bf16"


def _number(default: float | int, low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False, why: str = ""):  # fmt: skip
    return field(
        default=default, metadata={"low": low, "high": high, "low_open": low_open, "high_open": high_open, "why": why}
    )


class _Checked:
    """Range and finiteness checks of every numeric field, also for configs built in code."""

    def __post_init__(self) -> None:
        for item in fields(self):
            if "low" in item.metadata:
                _check_range(item.name, getattr(self, item.name), item.metadata)


@dataclass(frozen=True)
class OptimizerConfig(_Checked):
    """AdamW."""

    lr: float = _number(1e-4, 0.0, 1.0, low_open=True)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = _number(0.01, 0.0)
    eps: float = _number(1e-8, 0.0, 1.0, low_open=True)
    max_grad_norm: float = _number(1.0, 0.0, why="0 turns clipping off")

    def __post_init__(self) -> None:
        super().__post_init__()
        for index, beta in enumerate(self.betas):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"is {beta}; each beta must be in [0, 1), e.g. 0.9, 0.999.", f"betas[{index}]")


@dataclass(frozen=True)
class ScheduleConfig(_Checked):
    kind: Schedule = Schedule.CONSTANT
    warmup_steps: int = _number(0, 0)


@dataclass(frozen=True)
class StepsConfig(_Checked):
    max_steps: int = _number(1000, 1)  # optimizer steps
    batch_size: int = _number(1, 1)  # examples per micro-batch
    grad_accumulation: int = _number(1, 1)  # micro-batches per optimizer step


@dataclass(frozen=True)
class CheckpointConfig(_Checked):
    every_steps: int = _number(500, 1)
    keep_last: int = _number(3, 1)
    on_interrupt: bool = True  # write the last completed step when interrupted (Cancel, Ctrl-C)


@dataclass(frozen=True)
class LossConfig(_Checked):
    """BoLID eq. 14, L = L_diff + α_id·L_id + β_CLIP·L_CLIP. L_id and L_CLIP decode or score the predicted x0, which
    costs memory, so each runs only every n-th optimizer step and only for timesteps in [min, max]."""

    alpha_id: float = _number(0.1, 0.0)
    id_every_steps: int = _number(1, 1)
    id_timesteps: tuple[int, int] = (0, 999)
    beta_clip: float = _number(0.1, 0.0)
    clip_every_steps: int = _number(1, 1)
    clip_timesteps: tuple[int, int] = (0, 999)
    prior_weight: float = _number(1.0, 0.0, why="the text prior's regression onto the image embeds; 0 leaves it out")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("id_timesteps", "clip_timesteps"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ConfigError(f"is [{low}, {high}]; write [min, max] with 0 <= min <= max.", name)


@dataclass(frozen=True)
class DropoutConfig(_Checked):
    """Probability that a source is dropped (replaced by its empty condition) for one example, so CFG and DCG have
    the unconditional branches at inference. image and face: FaceStudio §4.1's published 0.64 and 0.1. body: 0.1,
    like the face, since body is the other identity source and DCG needs ε(text, ∅) for it. text: 0.1, the rate the
    SD/SDXL base models were trained with for CFG."""

    image: float = _number(0.64, 0.0, 1.0)
    face: float = _number(0.1, 0.0, 1.0)
    body: float = _number(0.1, 0.0, 1.0)
    text: float = _number(0.1, 0.0, 1.0)


@dataclass(frozen=True)
class DataConfig(_Checked):
    """Every image is resized to cover resolution × resolution and centre-cropped, so a batch has one latent shape."""

    resolution: int = _number(1024, 64)
    min_views: int = _number(1, 1)  # a person with fewer images is a dataset error

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resolution % 64:
            raise ConfigError(f"is {self.resolution}; use a multiple of 64 (e.g. 512, 768, 1024).", "resolution")


@dataclass(frozen=True)
class AdapterShapeConfig(_Checked):
    """A new adapter's sources and sizes. The widths it reads (CLIP, ArcFace, body, text) come from the data, and its
    layers from the model it trains on. A token count of 0 leaves that source out."""

    image_tokens: int = _number(4, 0, why="0 leaves the reference-image source out")
    face_tokens: int = _number(4, 0, why="0 leaves the face source out")
    body_tokens: int = _number(4, 0, why="0 leaves the body source out")
    fusion_dim: int = _number(1024, 1)  # FaceStudio's fused identity width
    text_prior: bool = True  # train FaceStudio's text prior, so a prompt can stand in for the style image
    init_kv_from_text: bool = True  # start each layer's K/V at its text K/V (IP-Adapter's initialisation)


@dataclass(frozen=True)
class BodyConfig(_Checked):
    """The body VAE: how many views of a person make its c_body, its ELBO's KL weight, its weight beside L when it
    trains jointly with the adapter, and a new VAE's latent size (BoLID's default 756) and the side its weighted views
    are letterboxed to (BodyVAEConfig's 128; a small world trains a small VAE fast)."""

    views: int = _number(4, 1)
    kl_weight: float = _number(1.0, 0.0)
    joint_weight: float = _number(1.0, 0.0)
    latent_dim: int = _number(756, 1)
    image_size: int = _number(128, 16, why="the body-view encoder's smallest side")


@dataclass(frozen=True)
class TrainConfig(_Checked):
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    steps: StepsConfig = field(default_factory=StepsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterShapeConfig = field(default_factory=AdapterShapeConfig)
    body: BodyConfig = field(default_factory=BodyConfig)
    target: TrainTarget = TrainTarget.ADAPTER
    seed: int = _number(0, 0, 2**63 - 1)
    mixed_precision: MixedPrecision = MixedPrecision.NO  # honoured on CUDA only
    gradient_checkpointing: bool = False  # the host applies it to the network it backpropagates through

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: typing.Mapping) -> TrainConfig:
        return _build(cls, data)

    def to_toml(self) -> str:
        return _to_toml(self.to_dict())


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _type_name(value) -> str:
    return "a table" if isinstance(value, typing.Mapping) else f"{type(value).__name__} {value!r}"


def _check_range(key: str, value: float, meta: typing.Mapping) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"is {value}; write a finite number.", key)
    low, high = meta.get("low"), meta.get("high")
    below = low is not None and (value <= low if meta.get("low_open") else value < low)
    above = high is not None and (value >= high if meta.get("high_open") else value > high)
    if below or above:
        left = "(" if meta.get("low_open") else "["
        right = ")" if meta.get("high_open") else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        why = f" ({meta['why']})" if meta.get("why") else ""
        raise ConfigError(f"is {value}; it must be in {span}{why}.", key)


def _convert(key: str, kind, value):
    if is_dataclass(kind):
        if not isinstance(value, typing.Mapping):
            raise ConfigError(f"must be a table ([{key}] in TOML), not {_type_name(value)}.", key)
        try:
            return _build(kind, value)
        except ConfigError as error:
            raise error.under(key) from None
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        if isinstance(value, kind):
            return value
        if not isinstance(value, str) or value not in {member.value for member in kind}:
            choices = ", ".join(repr(member.value) for member in kind)
            raise ConfigError(f"is {_type_name(value)}; write one of {choices}.", key)
        return kind(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"is {_type_name(value)}; write true or false.", key)
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"is {_type_name(value)}; write a whole number.", key)
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"is {_type_name(value)}; write a number.", key)
        if not math.isfinite(value):
            raise ConfigError(f"is {value}; write a finite number.", key)
        return float(value)
    if typing.get_origin(kind) is tuple:
        item_kinds = typing.get_args(kind)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_kinds):
            raise ConfigError(f"is {_type_name(value)}; write a list of {len(item_kinds)} numbers.", key)
        return tuple(_convert(f"{key}[{i}]", k, v) for i, (k, v) in enumerate(zip(item_kinds, value, strict=True)))
    raise TypeError(f"no conversion for {key} of type {kind}")  # a field type this module does not handle


def _build(cls, data: typing.Mapping):
    hints = typing.get_type_hints(cls)
    known = [item.name for item in fields(cls)]
    unknown = [key for key in data if key not in known]
    if unknown:
        raise ConfigError(f"is not a known key; remove it or use one of {', '.join(sorted(known))}.", str(unknown[0]))
    return cls(**{name: _convert(name, hints[name], data[name]) for name in known if name in data})


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _to_toml(data: dict) -> str:
    lines = [f"{key} = {_toml_value(value)}" for key, value in data.items() if not isinstance(value, dict)]
    for key, value in data.items():
        if isinstance(value, dict):
            lines += ["", f"[{key}]", *(f"{name} = {_toml_value(item)}" for name, item in value.items())]
    return "\n".join(lines) + "\n"


def _read_mapping(path: Path) -> typing.Mapping:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib
            except ModuleNotFoundError as error:
                raise ConfigError(f"Reading {path.name} needs Python 3.11+ or `pip install tomli`.") from error
        try:
            return tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path.name} is not valid TOML: {error}. Fix the file.") from error
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError as error:
            raise ConfigError(
                f"Reading {path.name} needs PyYAML (`pip install pyyaml`); or write the config as TOML."
            ) from error
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(f"{path.name} is not valid YAML: {error}. Fix the file.") from error
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path.name} must hold a mapping of keys at the top, not {type(data).__name__}.")
        return data
    raise ConfigError(f"{path.name}: a training config must end in .toml, .yaml or .yml.")


def load_config(path: str | os.PathLike) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Training config {path} not found.")
    try:
        return TrainConfig.from_dict(_read_mapping(path))
    except ConfigError as error:
        raise ConfigError(f"{path.name}: {error}") from None


def save_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    return write_text_atomic(path, config.to_toml())
