"""The README's main job: start ComfyUI with the pack, queue the default workflow, print the image path.

    python -m bolid_dev.run_example [--workflow NAME] [--timeout SECONDS]

With no SDXL checkpoint in models/checkpoints, the default run is the miniature BoLID instead: the shipped miniature
models (trained on a synthetic 64 px world, see the README) generate text plus each of two saved body IDs, so the
method is seen working. Another --workflow without a checkpoint runs on tiny random test models: its image then only
shows that the install works. Before queueing, every file the workflow names that the server lacks is listed at once,
with its folder and where to get it (bolid_dev.preflight).
"""

from __future__ import annotations

import argparse
import os
import sys

from .client import ComfyClient, WorkflowError
from .preflight import describe_missing, missing_choices, readme_model_rows
from .runtime import REPO_ROOT, RuntimeSetupError, comfy_server, comfyui_dir
from .workflows import (
    DEFAULT_WORKFLOW,
    MINIATURE_WORKFLOW,
    find_sdxl_checkpoint,
    load_api_workflow,
    with_checkpoint,
    with_tiny_models,
)

LOCAL_BASE_DIRECTORY = REPO_ROOT / ".comfy-base"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default=None, help="name of a file in workflows/api/")
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
    checkpoint = find_sdxl_checkpoint(models_root / "checkpoints")
    test_models = False
    if checkpoint is None and workflow_name in (None, MINIATURE_WORKFLOW):
        workflow_name = MINIATURE_WORKFLOW
        print(
            f"No SDXL checkpoint in {models_root / 'checkpoints'}: running the MINIATURE BoLID instead.\n"
            "Its models are tiny (17 MB in all), trained by this pack on a synthetic world of 64 px stick figures,\n"
            "and shipped in miniature_models/. They show the method: text plus a saved body ID gives that body.\n"
            "They are not a picture model. Put an SDXL .safetensors in models/checkpoints for real output."
        )
        prompt, default_timeout = load_api_workflow(workflow_name), 600.0
    elif checkpoint is None:
        print(
            f"No SDXL checkpoint in {models_root / 'checkpoints'}: running on TINY RANDOM TEST MODELS.\n"
            "The image is only an install check, not a picture. Put an SDXL .safetensors there for real output.\n"
            "SDXL adapters and LoRAs do not fit the tiny model: a workflow that loads them needs the checkpoint."
        )
        prompt, default_timeout, test_models = with_tiny_models(load_api_workflow(workflow_name)), 600.0, True
    else:
        workflow_name = workflow_name or DEFAULT_WORKFLOW
        print(f"Using SDXL checkpoint {checkpoint}.")
        prompt, default_timeout = with_checkpoint(load_api_workflow(workflow_name), checkpoint), 7200.0
    log_path = (base_directory or LOCAL_BASE_DIRECTORY) / "logs" / "comfyui.log"
    with comfy_server(base_directory, with_test_models=test_models, log_path=log_path) as server:
        print(f"ComfyUI is up at {server.url} (log: {log_path}); queueing {workflow_name}.")
        client = ComfyClient(server)
        missing = missing_choices(prompt, client.object_info())
        if missing:
            raise WorkflowError(describe_missing(workflow_name, missing, readme_model_rows(), server.base_directory))
        entry = client.run(prompt, timeout_s=timeout_s or default_timeout)
        saved = [(node_id, client.saved_path(image)) for node_id, image in _saved_images(client, entry, prompt)]
    if not saved:
        print("ERROR: the workflow finished but saved no image.", file=sys.stderr)
        return 1
    if workflow_name == MINIATURE_WORKFLOW:
        for node_id, path in saved:
            print(f"saved image ({prompt[node_id]['inputs']['filename_prefix'].rsplit('/', 1)[-1]}): {path}")
        return 0
    for _, path in saved[1:]:
        print(f"also saved: {path}")
    print(f"saved image: {saved[0][1]}")
    return 0


def _saved_images(client: ComfyClient, entry: dict, prompt: dict) -> list[tuple[str, dict]]:
    """(SaveImage node id, image) in the order of the node ids."""
    save_nodes = sorted((node_id for node_id, node in prompt.items() if node["class_type"] == "SaveImage"), key=int)
    return [(node_id, image) for node_id in save_nodes for image in client.output_images(entry, node_id)]


if __name__ == "__main__":
    sys.exit(main())
