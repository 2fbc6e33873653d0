"""Adapter modules, projection models and checkpoint formats (ours and IP-Adapter's)."""

from .checkpoint import (
    Adapter,
    AdapterFormatError,
    AdapterKind,
    AdapterSpec,
    ClipInput,
    Source,
    load_adapter,
    new_bolid_adapter,
    read_state_dict,
    save_adapter,
)
from .projections import HybridIdentityProjection, TextPrior

__all__ = [
    "Adapter",
    "AdapterFormatError",
    "AdapterKind",
    "AdapterSpec",
    "ClipInput",
    "HybridIdentityProjection",
    "Source",
    "TextPrior",
    "load_adapter",
    "new_bolid_adapter",
    "read_state_dict",
    "save_adapter",
]
