"""Developer tooling: run the pack in a real ComfyUI (main job, test fixtures, workflow checks)."""
