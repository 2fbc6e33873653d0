"""The only part of the pack that imports ComfyUI (comfy.*, folder_paths)."""
