"""A small client for ComfyUI's HTTP API: queue a prompt, wait for it, read history and images."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from .runtime import ComfyServer


class WorkflowError(RuntimeError):
    """The server refused a prompt or failed to run it; the message carries the server's own words."""


def _describe_validation(body: dict) -> str:
    parts = [body.get("error", {}).get("message", "prompt refused")]
    for node_id, node in body.get("node_errors", {}).items():
        for error in node.get("errors", []):
            parts.append(f"node {node_id} ({node.get('class_type')}): {error.get('message')}: {error.get('details')}")
    return "\n".join(parts)


def _describe_execution_error(status: dict) -> str:
    for event, data in status.get("messages", []):
        if event == "execution_error":
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}) raised {data.get('exception_type')}: "
                f"{data.get('exception_message')}\n{''.join(data.get('traceback', []))}"
            )
        if event == "execution_interrupted":
            return f"execution interrupted at node {data.get('node_id')}"
    return f"status {status.get('status_str')}"


class ComfyClient:
    def __init__(self, server: ComfyServer) -> None:
        self.server = server
        self.client_id = uuid.uuid4().hex

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.server.url}{path}", timeout=30) as response:
            return json.loads(response.read())

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def queue(self, prompt: dict) -> str:
        data = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        request = urllib.request.Request(
            f"{self.server.url}/prompt", data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["prompt_id"]
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace")
            try:
                message = _describe_validation(json.loads(body))
            except (json.JSONDecodeError, AttributeError):
                message = body
            raise WorkflowError(f"ComfyUI refused the prompt (HTTP {error.code}): {message}") from None

    def wait(self, prompt_id: str, timeout_s: float) -> dict:
        """Poll /history until the prompt finished; raise WorkflowError if it failed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.server.check_alive()
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    raise WorkflowError(f"Prompt {prompt_id} failed: {_describe_execution_error(status)}")
                return entry
            time.sleep(0.25)
        raise WorkflowError(f"Prompt {prompt_id} did not finish within {timeout_s:.0f} s.")

    def run(self, prompt: dict, timeout_s: float = 300.0) -> dict:
        return self.wait(self.queue(prompt), timeout_s)

    @staticmethod
    def output_images(entry: dict, node_id: str | None = None) -> list[dict]:
        """Image references ({filename, subfolder, type}) a finished prompt produced, by output node."""
        outputs = entry.get("outputs", {})
        nodes = [node_id] if node_id is not None else sorted(outputs, key=lambda n: (len(n), n))
        return [image for node in nodes for image in outputs.get(node, {}).get("images", [])]

    def fetch_image(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        with urllib.request.urlopen(f"{self.server.url}/view?{query}", timeout=30) as response:
            return response.read()

    def saved_path(self, image: dict) -> Path:
        return self.server.output_directory / image["subfolder"] / image["filename"]
