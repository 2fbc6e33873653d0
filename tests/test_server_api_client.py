"""Tier 3: the README's headless examples (examples/api_client.py and the curl lines) against a live server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from bolid_dev.runtime import REPO_ROOT
from bolid_dev.workflows import load_api_workflow, with_tiny_models

CLIENT = REPO_ROOT / "examples" / "api_client.py"
WORKFLOW = "bolid_keypoint_weighting"  # the README's example
SAMPLER_NODE, SAVE_NODES = "5", ("9", "10")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def tiny_workflow(tmp_path: Path) -> Path:
    path = tmp_path / f"{WORKFLOW}_tiny.json"
    tiny = with_tiny_models(load_api_workflow(WORKFLOW))
    tiny[SAMPLER_NODE]["inputs"]["steps"] = 2
    for size in ("width", "height"):
        tiny["4"]["inputs"][size] = 64
    path.write_text(json.dumps(tiny))
    return path


def _history(server_url: str, prompt_id: str) -> dict:
    with urllib.request.urlopen(f"{server_url}/history/{prompt_id}", timeout=30) as response:
        return json.loads(response.read())[prompt_id]


def _saved_on_server(comfy_server, entry: dict) -> dict[str, bytes]:
    """The images the run wrote, read from the server's output folder on disk (not through /view)."""
    files = {}
    for node_id in SAVE_NODES:
        for image in entry["outputs"][node_id]["images"]:
            files[image["filename"]] = (
                comfy_server.output_directory / image["subfolder"] / image["filename"]
            ).read_bytes()
    return files


def _run_client(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLIENT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_client_queues_waits_and_downloads_the_images(comfy_server, tiny_workflow: Path, tmp_path: Path) -> None:
    out = tmp_path / "images"
    done = _run_client(
        str(tiny_workflow), "--server", comfy_server.url, "--out", str(out), "--set", f"{SAMPLER_NODE}.seed=123"
    )
    assert done.returncode == 0, done.stderr
    prompt_id = re.search(r"queued prompt (\S+)", done.stdout).group(1)
    entry = _history(comfy_server.url, prompt_id)
    assert entry["prompt"][2][SAMPLER_NODE]["inputs"]["seed"] == 123, "--set did not reach the queued workflow"

    on_server = _saved_on_server(comfy_server, entry)
    printed = [Path(line.removeprefix("saved image: ")) for line in done.stdout.splitlines() if "saved image:" in line]
    assert len(on_server) == 2
    assert sorted(path.name for path in printed) == sorted(on_server)
    for path in printed:
        assert path.is_relative_to(out)
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert path.read_bytes() == on_server[path.name]


def test_client_reports_a_refused_workflow(comfy_server, tiny_workflow: Path, tmp_path: Path) -> None:
    done = _run_client(str(tiny_workflow), "--server", comfy_server.url, "--out", str(tmp_path), "--set", "8.sigma=-3")
    assert done.returncode == 1
    assert "node 8 (BoLIDKeypointWeighting)" in done.stderr and "sigma" in done.stderr
    assert not list(tmp_path.rglob("*.png"))


def test_client_reports_a_server_that_is_not_there(tiny_workflow: Path) -> None:
    done = _run_client(str(tiny_workflow), "--server", "http://127.0.0.1:9", timeout=60)
    assert done.returncode == 1
    assert "no ComfyUI answers at http://127.0.0.1:9" in done.stderr


def _readme_curl_example() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO_ROOT / "README.md").read_text(), flags=re.DOTALL)
    matching = [block for block in blocks if "PROMPT_ID=" in block and "/view" in block]
    assert len(matching) == 1, "README.md should hold one curl example (a bash block with PROMPT_ID= and /view)"
    return matching[0]


@pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("jq")), reason="the README's curl example needs curl and jq"
)
def test_readme_curl_example_fetches_the_images(comfy_server, tiny_workflow: Path, tmp_path: Path) -> None:
    env = {**os.environ, "COMFY": comfy_server.url, "WORKFLOW": str(tiny_workflow)}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _readme_curl_example()],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    prompt_id = re.search(r"prompt (\S+)", done.stdout).group(1)
    on_server = _saved_on_server(comfy_server, _history(comfy_server.url, prompt_id))
    fetched = {path.name: path.read_bytes() for path in tmp_path.rglob("*.png")}
    assert fetched == on_server
