"""Hostile pickles for the checked-loading tests of YOLO .pt files (pose and segmentation models)."""

from __future__ import annotations

from pathlib import Path

import torch


class ExecPayload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import builtins

        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


class ConstructorCall:
    """Calls an allowed module class (ultralytics.nn.tasks.<class_name>) with the file's own arguments, as no
    saved model does."""

    def __init__(self, class_name: str, config: str) -> None:
        self.class_name, self.config = class_name, config

    def __reduce__(self):
        from ultralytics.nn import tasks

        return (getattr(tasks, self.class_name), (self.config,))


def checkpoint_with(model_file: Path, folder: Path, extra: object) -> Path:
    """A copy of `model_file` (a checkpoint the test built: trusted) carrying `extra` as one more entry."""
    checkpoint = torch.load(model_file, weights_only=False, map_location="cpu")  # built by the test itself
    checkpoint["extra"] = extra
    path = folder / f"{model_file.stem}-tampered.pt"
    torch.save(checkpoint, path)
    return path
