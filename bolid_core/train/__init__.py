"""Training, host-independent: config, dataset and its preprocessing cache, losses (BoLID eq. 14), condition
dropout, and the trainer loop with atomic, exactly resumable checkpoints. Hosts (the ComfyUI training node, the
diffusers + accelerate CLI) supply the modules to train and the denoiser and encoders."""

from .config import ConfigError, MixedPrecision, Schedule, TrainConfig, load_config, save_config
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
    "AuxLossSchedule", "BuildInterrupted", "CheckpointError", "ConditionDropout", "ConditionSource", "ConfigError",
    "DatasetError", "DatasetIndex", "Encoder", "EncoderInput", "Example", "MixedPrecision", "PredictionType",
    "PreprocessedDataset", "Schedule", "TrainConfig", "Trainer", "TrainingInterrupted", "build_cache",
    "diffusion_target", "drop_conditions", "faceid_reconstruction_inputs", "latest_checkpoint", "load_checkpoint",
    "load_config", "open_cache", "predicted_x0", "prune_cache", "save_config", "scan_dataset", "total_loss",
]  # fmt: skip
