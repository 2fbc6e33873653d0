"""Training checkpoints that a crash never leaves half-written.

A checkpoint is a folder `step_<step>` under the run's checkpoint folder, holding
  weights.safetensors   the trained modules' state dicts, keys `<module>.<parameter>`
  optimizer.pt          optimizer, LR scheduler and gradient scaler state (plain tensors and numbers)
  rng.pt                torch CPU / CUDA, python and numpy RNG states and the trainer's loss generator
  state.json            step, data position (epoch, index into the epoch's permutation), loss history, config
  manifest.json         the size and SHA-256 of each file above; written last.
Everything is written into a hidden `.partial-*` folder, each file fsynced, then the folder is renamed to its final
name in one step (a rename is atomic on POSIX and Windows) and the parent folder fsynced. A reader only looks at
`step_*` folders whose manifest lists files of the listed sizes, so a process killed mid-save leaves at most a
`.partial-*` folder that nothing reads; the previous checkpoint stays as it was.
`.pt` files are loaded with weights_only=True.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from ..files import PlainWeightsError, fsync_folder, load_plain_weights

CHECKPOINT_FORMAT = "bolid-train-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
PARTIAL_PREFIX = ".partial-"
TRASH_PREFIX = ".trash-"
_STEP_FOLDER = re.compile(r"^step_(\d{9,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that is incomplete, damaged, or does not fit what is being resumed."""


@dataclass
class TrainingState:
    """Everything besides the weights that resuming needs to continue exactly."""

    step: int  # optimizer steps completed
    epoch: int  # epoch of the next example
    index: int  # position of the next example in that epoch's permutation
    dataset_size: int
    history: list[dict[str, float]] = field(default_factory=list)  # per step: each loss term, mean over micro-batches
    config: dict = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


def capture_rng(generator: torch.Generator | None = None) -> dict:
    """All RNG states as tensors, ints, floats and lists only, so they load with weights_only=True."""
    version, mt_state, gauss = random.getstate()
    numpy_kind, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
        "numpy": {
            "kind": numpy_kind,
            "keys": torch.from_numpy(np.asarray(numpy_keys, dtype=np.uint32).astype(np.int64)),
            "pos": int(numpy_pos),
            "has_gauss": int(numpy_has_gauss),
            "gauss": float(numpy_gauss),
        },
    }
    if generator is not None:
        states["generator"] = generator.get_state()
    return states


def restore_rng(states: typing.Mapping, generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():  # another machine's GPUs: resume, though not bit-exactly
        for device, cuda_state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = states["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    if generator is not None:
        if "generator" not in states:
            raise CheckpointError("This checkpoint holds no loss-generator state.")
        generator.set_state(states["generator"])


def module_tensors(modules: typing.Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The modules' state dicts under one namespace, on CPU; tensors sharing memory are copied apart, since
    safetensors refuses shared storage."""
    tensors, seen = {}, set()
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            value = value.detach().to("cpu").contiguous()
            pointer = value.untyped_storage().data_ptr()
            tensors[f"{name}.{key}"] = value.clone() if pointer in seen else value
            seen.add(pointer)
    return tensors


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        write_bytes(file, data)
        file.flush()
        os.fsync(file.fileno())


def write_bytes(file: typing.BinaryIO, data: bytes) -> None:
    """The one place checkpoint bytes reach a file (a seam for the killed-mid-save test)."""
    file.write(data)


def _torch_bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _remove_folder(path: Path) -> None:
    """Rename first, so a crash mid-removal never leaves a damaged folder under a checkpoint name."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(
    folder: str | os.PathLike,
    state: TrainingState,
    modules: typing.Mapping[str, torch.nn.Module],
    optimizer_state: dict,
    rng_state: dict,
    keep_last: int | None = None,
) -> Path:
    """Write one checkpoint as `folder/step_<state.step>` (replacing one of the same step), then keep only the
    newest `keep_last`. Returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(state.step)
    partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{final.name}-", dir=folder))
    try:
        state_record = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "step": state.step,
            "epoch": state.epoch,
            "index": state.index,
            "dataset_size": state.dataset_size,
            "history": state.history,
            "config": state.config,
        }
        contents = {
            WEIGHTS_FILE: save(module_tensors(modules), metadata={"format": CHECKPOINT_FORMAT}),
            OPTIMIZER_FILE: _torch_bytes(optimizer_state),
            RNG_FILE: _torch_bytes(rng_state),
            STATE_FILE: json.dumps(state_record).encode("utf-8"),
        }
        manifest = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "files": {}}
        for name, data in contents.items():
            _write_synced(partial / name, data)
            manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        _write_synced(partial / MANIFEST_FILE, json.dumps(manifest, indent=1).encode("utf-8"))
        fsync_folder(partial)
        if final.exists():  # the same step saved again (an interrupt right after a periodic save)
            _remove_folder(final)
        os.replace(partial, final)
        fsync_folder(folder)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    if keep_last is not None:
        prune_checkpoints(folder, keep_last)
    return final


def _manifest(path: Path) -> dict | None:
    """The manifest of a complete checkpoint folder, or None when any listed file is missing or of the wrong size."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("format") != CHECKPOINT_FORMAT or set(files) != {
            WEIGHTS_FILE,
            OPTIMIZER_FILE,
            RNG_FILE,
            STATE_FILE,
        }:
            return None
        for name, record in files.items():
            if (path / name).stat().st_size != record["size"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_FOLDER.match(path.name)
        if match and path.is_dir() and not path.is_symlink() and _manifest(path) is not None:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in `folder`, or None."""
    checkpoints = list_checkpoints(folder)
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(folder: str | os.PathLike, keep_last: int) -> None:
    """Keep the newest `keep_last` complete checkpoints; remove older ones and leftovers of killed saves."""
    if keep_last < 1:
        raise ValueError(f"keep_last is {keep_last}; keep at least 1 checkpoint.")
    folder = Path(folder)
    for path in list_checkpoints(folder)[:-keep_last]:
        _remove_folder(path)
    for path in folder.iterdir():
        if path.name.startswith((TRASH_PREFIX, PARTIAL_PREFIX)):
            with contextlib.suppress(OSError):
                shutil.rmtree(path)


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainingState
    weights: dict[str, torch.Tensor]
    optimizer_state: dict
    rng_state: dict


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read a checkpoint written by `save_checkpoint`, verifying every file's SHA-256 against its manifest."""
    path = Path(path)
    manifest = _manifest(path)
    if manifest is None:
        raise CheckpointError(f"{path} is not a complete training checkpoint; pick another (latest_checkpoint).")
    if manifest.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path.name} is checkpoint format version {manifest.get('format_version')}; this pack reads version "
            f"{CHECKPOINT_FORMAT_VERSION}."
        )
    for name, record in manifest["files"].items():
        digest = hashlib.sha256((path / name).read_bytes()).hexdigest()
        if digest != record["sha256"]:
            raise CheckpointError(f"{path / name} does not match its manifest (damaged); resume from an older one.")
    record = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    state = TrainingState(
        step=record["step"],
        epoch=record["epoch"],
        index=record["index"],
        dataset_size=record["dataset_size"],
        history=record["history"],
        config=record["config"],
    )
    try:
        optimizer_state = load_plain_weights(path / OPTIMIZER_FILE)
        rng_state = load_plain_weights(path / RNG_FILE)
    except PlainWeightsError as error:
        raise CheckpointError(str(error)) from error
    return LoadedCheckpoint(path, state, load_file(path / WEIGHTS_FILE), optimizer_state, rng_state)


def load_module_weights(modules: typing.Mapping[str, torch.nn.Module], weights: typing.Mapping) -> None:
    """Load `<module>.<parameter>` tensors into the modules; every key must match."""
    expected = set(module_tensors(modules))
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"The checkpoint's weights do not fit the modules being trained (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); resume with the same adapter/VAE architecture."
        )
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)})
