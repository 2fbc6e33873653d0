"""Reading the evaluation models' weights from local files only: safetensors, or tensor-only .pth/.pt files."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..files import PlainWeightsError, load_plain_weights

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")


class EvalModelError(RuntimeError):
    """An evaluation model file that is missing or is not the expected model; the message says what to do."""


def require_file(path: str | Path, what: str, expected: str) -> Path:
    """`path` if it is a file, else an error naming the file expected and the folder it goes in."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} not found: {path}. Put {expected} in {path.parent.resolve()} (nothing is downloaded)."
        )
    return path


def read_weights(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, or of a .pth/.pt state dict read with weights_only=True (never code)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix not in WEIGHT_SUFFIXES:
        raise EvalModelError(f"{path.name}: {what} weights are {', '.join(WEIGHT_SUFFIXES)} files.")
    try:
        loaded = load_plain_weights(path)
    except PlainWeightsError as error:
        raise EvalModelError(str(error)) from error
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise EvalModelError(f"{path.name} is not a state dict of tensors: it is not {what} weights.")
    return dict(loaded)
