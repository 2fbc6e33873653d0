"""Run a ComfyUI workflow headless: post an API-format workflow, wait until it has run, download its images.

    python examples/api_client.py workflows/api/bolid_keypoint_weighting.json
    python examples/api_client.py WORKFLOW.json --server http://127.0.0.1:8188 --out images --set 5.seed=7

Python's standard library only. `--set NODE.INPUT=VALUE` changes one widget value before queueing (NODE is the
node's id in the API file; VALUE is read as JSON when it parses, else as text). Exit status 0 when the images are
saved, 1 when the server refused or failed the workflow, 2 when it did not finish in time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path


class WorkflowFailed(RuntimeError):
    """The server refused the workflow or failed while running it; the message holds its own words."""


def call(server: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    # `server` is an http(s) address (server_url checks it), so no file: or other scheme is opened.
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(f"{server}{path}", data=data, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise WorkflowFailed(f"{path}: HTTP {error.code}: {_refusal(error.read())}") from None
    except urllib.error.URLError as error:
        raise WorkflowFailed(f"no ComfyUI answers at {server} ({error.reason}); start it, or pass --server") from None


def _refusal(body: bytes) -> str:
    """What /prompt says about a workflow it refuses: its error and each node's."""
    try:
        answer = json.loads(body)
    except json.JSONDecodeError:
        return body.decode(errors="replace")
    lines = [answer.get("error", {}).get("message", "refused")]
    for node_id, node in answer.get("node_errors", {}).items():
        for error in node.get("errors", []):
            lines.append(f"node {node_id} ({node.get('class_type')}): {error.get('message')}: {error.get('details')}")
    return "\n".join(lines)


def apply_settings(workflow: dict, settings: list[str]) -> None:
    for setting in settings:
        target, sep, raw = setting.partition("=")
        node_id, dot, name = target.partition(".")
        if not sep or not dot or node_id not in workflow:
            raise SystemExit(f"--set {setting!r}: write NODE.INPUT=VALUE with a node id of the workflow")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        workflow[node_id]["inputs"][name] = value


def queue(server: str, workflow: dict) -> str:
    return call(server, "/prompt", {"prompt": workflow, "client_id": uuid.uuid4().hex})["prompt_id"]


def wait(server: str, prompt_id: str, timeout_s: float) -> dict:
    """The prompt's /history entry once it has run; WorkflowFailed with the node's error if it failed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entry = call(server, f"/history/{prompt_id}").get(prompt_id)
        status = (entry or {}).get("status", {})
        if status.get("status_str") == "success":
            return entry
        if status.get("status_str") == "error":
            raise WorkflowFailed(_execution_error(status))
        time.sleep(0.5)
    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout_s:.0f} s; it may still be running")


def _execution_error(status: dict) -> str:
    for event, data in status.get("messages", []):
        if event == "execution_error":
            node = f"node {data.get('node_id')} ({data.get('node_type')})"
            return f"{node} raised {data.get('exception_type')}: {data.get('exception_message')}"
    return "the workflow failed; the server's log says why"


def download_images(server: str, entry: dict, out: Path, previews: bool) -> list[Path]:
    """Every image the run saved (and its previews, if asked) into `out`, keeping ComfyUI's subfolders."""
    saved = []
    for node_output in entry.get("outputs", {}).values():
        for image in node_output.get("images", []):
            if image.get("type") != "output" and not previews:
                continue
            query = urllib.parse.urlencode({key: image.get(key, "") for key in ("filename", "subfolder", "type")})
            with urllib.request.urlopen(f"{server}/view?{query}", timeout=60) as response:  # noqa: S310
                pixels = response.read()
            # Names come from the server: keep only plain path parts, so nothing lands outside `out`.
            parts = [p for p in image.get("subfolder", "").replace("\\", "/").split("/") if p not in ("", ".", "..")]
            path = out.joinpath(*parts, Path(image["filename"]).name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(pixels)
            saved.append(path)
    return saved


def server_url(text: str) -> str:
    """--server: an http(s) address, so urlopen never reads a file: or other URL."""
    if urllib.parse.urlsplit(text).scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"{text!r}: give ComfyUI's http:// or https:// address")
    return text.rstrip("/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Queue an API-format ComfyUI workflow and download its images.")
    parser.add_argument("workflow", type=Path, help="an API-format workflow, e.g. workflows/api/<name>.json")
    parser.add_argument("--server", type=server_url, default="http://127.0.0.1:8188", help="ComfyUI's address")
    parser.add_argument("--out", type=Path, default=Path("comfy_images"), help="folder for the images")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", help="change an input")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the run")
    parser.add_argument("--previews", action="store_true", help="also download preview images")
    args = parser.parse_args(argv)

    workflow = json.loads(args.workflow.read_text())
    apply_settings(workflow, args.set)
    server = args.server
    try:
        prompt_id = queue(server, workflow)
        print(f"queued prompt {prompt_id}")
        entry = wait(server, prompt_id, args.timeout)
        for path in download_images(server, entry, args.out, args.previews):
            print(f"saved image: {path}")
    except WorkflowFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except TimeoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
