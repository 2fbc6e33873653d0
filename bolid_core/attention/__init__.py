"""Attention maths in pure torch: multi-source decoupled cross-attention, masks on the block grid."""

from .masks import block_grid, mask_to_queries
from .multi_source import AttentionMapHook, SourceKV, adapter_attention

__all__ = ["AttentionMapHook", "SourceKV", "adapter_attention", "block_grid", "mask_to_queries"]
