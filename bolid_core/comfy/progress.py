"""ComfyUI progress and interrupts as the plain callables the core takes."""

from __future__ import annotations

from collections.abc import Callable

import comfy.model_management
import comfy.utils


def progress_callbacks(total: int) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """progress(i, n) drives the node's progress bar; check_interrupt() raises when the user cancels."""
    bar = comfy.utils.ProgressBar(total)
    return (
        lambda done, count: bar.update_absolute(done, count),
        comfy.model_management.throw_exception_if_processing_interrupted,
    )
