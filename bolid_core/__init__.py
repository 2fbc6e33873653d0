"""BoLID core library: the maths and model code of the pack, importable without ComfyUI.

Only `bolid_core.comfy` may import ComfyUI modules; everything else depends on torch and the
field's libraries alone, so the same functions serve the ComfyUI nodes, the training CLI and tests.
"""
