"""The README's main job: start ComfyUI with the pack, queue the default workflow, print the image path.

    python -m bolid_dev.run_example [--workflow NAME] [--timeout SECONDS]

With no SDXL checkpoint in models/checkpoints it runs on tiny random test models: the image then only
shows that the install works.
"""

from __future__ import annotations

import argparse
import os
import sys

from .client import ComfyClient, WorkflowError
from .runtime import REPO_ROOT, RuntimeSetupError, comfy_server, comfyui_dir
from .workflows import DEFAULT_WORKFLOW, find_sdxl_checkpoint, load_api_workflow, with_checkpoint, with_tiny_models

LOCAL_BASE_DIRECTORY = REPO_ROOT / ".comfy-base"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default=DEFAULT_WORKFLOW, help="name of a file in workflows/api/")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for the workflow")
    args = parser.parse_args(argv)
    try:
        return _run(args.workflow, args.timeout)
    except (RuntimeSetupError, WorkflowError, FileNotFoundError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1


def _run(workflow_name: str, timeout_s: float | None) -> int:
    # With COMFYUI_PATH the user's own install (and its models) is used; else a local base folder.
    base_directory = None if os.environ.get("COMFYUI_PATH") else LOCAL_BASE_DIRECTORY
    models_root = (base_directory or comfyui_dir()) / "models"
    (models_root / "checkpoints").mkdir(parents=True, exist_ok=True)
    workflow = load_api_workflow(workflow_name)
    checkpoint = find_sdxl_checkpoint(models_root / "checkpoints")
    if checkpoint is None:
        print(
            f"No SDXL checkpoint in {models_root / 'checkpoints'}: running on TINY RANDOM TEST MODELS.\n"
            "The image is only an install check, not a picture. Put an SDXL .safetensors there for real output."
        )
        prompt, default_timeout = with_tiny_models(workflow), 600.0
    else:
        print(f"Using SDXL checkpoint {checkpoint}.")
        prompt, default_timeout = with_checkpoint(workflow, checkpoint), 7200.0
    log_path = (base_directory or LOCAL_BASE_DIRECTORY) / "logs" / "comfyui.log"
    with comfy_server(base_directory, with_test_models=checkpoint is None, log_path=log_path) as server:
        print(f"ComfyUI is up at {server.url} (log: {log_path}); queueing {workflow_name}.")
        client = ComfyClient(server)
        entry = client.run(prompt, timeout_s=timeout_s or default_timeout)
        paths = [client.saved_path(image) for image in client.output_images(entry)]
    if not paths:
        print("ERROR: the workflow finished but saved no image.", file=sys.stderr)
        return 1
    for path in paths[1:]:
        print(f"also saved: {path}")
    print(f"saved image: {paths[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
