"""Writing the pack's files atomically: a temporary file in the same folder, flushed to disk, then renamed, so a
reader sees the old file or the complete new one, never a part, even if the process dies or the power fails."""

from __future__ import annotations

import os
import pickle
import stat
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes


def fsync_folder(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    if os.name == "nt":  # folders cannot be opened for fsync on Windows; NTFS journals the rename
        return
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _process_umask() -> int:
    """The umask, read without changing it (os.umask sets it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _mode_for(path: Path) -> int:
    """A replaced file keeps its permissions; a new one gets those of any file the user creates (mkstemp's
    temporary file is private to its owner)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_process_umask()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` so that `path` is either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if os.name != "nt":
            os.fchmod(handle, _mode_for(path))
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        fsync_folder(path.parent)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> Path:
    """Write `tensors` with `metadata` so that `path` is either the old file or the complete new one."""
    contiguous = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    return write_bytes_atomic(path, safetensors_bytes(contiguous, metadata=metadata))


def read_pack_file(path: str | os.PathLike, file_format: str, version: int, what: str) -> tuple[dict, dict[str, str]]:
    """Tensors and metadata of one of the pack's own safetensors files, after checking its format and version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what[0].upper()}{what[1:]} {path} not found.")
    with safe_open(str(path), framework="pt") as file:
        metadata = dict(file.metadata() or {})
        if metadata.get("format") != file_format:
            found = metadata.get("format", "no format metadata")
            raise ValueError(f"{path.name} is not a {what} ({found}); pick a {what} file.")
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    if int(metadata.get("format_version", "0")) != version:
        raise ValueError(
            f"{path.name} is {what} format version {metadata.get('format_version')}; this pack reads version "
            f"{version}. Update the pack, or write the file again."
        )
    return tensors, metadata


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


class PlainWeightsError(ValueError):
    """A .pt/.pth/.bin file that is not tensors only: it would need code to load."""


def load_plain_weights(path: str | os.PathLike) -> object:
    """What a torch .pt/.pth/.bin file holds, read with weights_only=True, so a pickle that would run code is
    refused. Raises PlainWeightsError naming the file."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as error:
        raise PlainWeightsError(
            f"{path.name} could not be read as plain weights ({type(error).__name__}): only tensor-only files "
            "load; convert it to .safetensors."
        ) from error
