"""Attention maths in pure torch: multi-source decoupled cross-attention (FastFace AM comes later)."""

from .multi_source import AttentionMapHook, SourceKV, adapter_attention

__all__ = ["AttentionMapHook", "SourceKV", "adapter_attention"]
