"""Attention maths in pure torch: multi-source decoupled attention, FastFace AM, masks on block grids."""

from .manipulation import AMKind, AttentionManipulation, MapHook, am1_preset, am2_preset
from .masks import block_grid, mask_to_queries
from .multi_source import SourceKV, adapter_attention

__all__ = [
    "AMKind",
    "AttentionManipulation",
    "MapHook",
    "SourceKV",
    "adapter_attention",
    "am1_preset",
    "am2_preset",
    "block_grid",
    "mask_to_queries",
]
