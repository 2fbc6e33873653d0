"""Training, host-independent: config, dataset and its preprocessing cache, losses (BoLID eq. 14), condition
dropout, and the trainer loop with atomic, exactly resumable checkpoints. The adapter and body-VAE step every host
shares is adapter_task; the hosts (bolid_core.comfy.train_host for the ComfyUI node, diffusers_host + cli for
`accelerate launch -m bolid_core.train`) supply their UNet, encoders and scorers."""

from .adapter_task import (
    AdapterAttention,
    AdapterCollate,
    AdapterTask,
    AuxiliaryScorers,
    CacheKeys,
    NoiseSchedule,
    TextCondition,
)
from .config import ConfigError, MixedPrecision, Schedule, TrainConfig, TrainTarget, load_config, save_config
from .dataset import (
    BuildInterrupted,
    DatasetError,
    DatasetIndex,
    Encoder,
    EncoderInput,
    Example,
    PreprocessedDataset,
    build_cache,
    open_cache,
    prune_cache,
    scan_dataset,
)
from .dropout import ConditionDropout, ConditionSource, drop_conditions, faceid_reconstruction_inputs
from .loop import Trainer, TrainingInterrupted
from .losses import AuxLossSchedule, PredictionType, diffusion_target, predicted_x0, total_loss
from .state import CheckpointError, latest_checkpoint, load_checkpoint

__all__ = [
    "AdapterAttention", "AdapterCollate", "AdapterTask", "AuxLossSchedule", "AuxiliaryScorers", "BuildInterrupted",
    "CacheKeys", "CheckpointError", "ConditionDropout", "ConditionSource", "ConfigError", "DatasetError",
    "DatasetIndex", "Encoder", "EncoderInput", "Example", "MixedPrecision", "NoiseSchedule", "PredictionType",
    "PreprocessedDataset", "Schedule", "TextCondition", "TrainConfig", "TrainTarget", "Trainer",
    "TrainingInterrupted", "build_cache", "diffusion_target", "drop_conditions", "faceid_reconstruction_inputs",
    "latest_checkpoint", "load_checkpoint", "load_config", "open_cache", "predicted_x0", "prune_cache", "save_config",
    "scan_dataset", "total_loss",
]  # fmt: skip
