"""Tier 3: the shipped training workflow on a real server: it trains on the tiny models and writes an adapter the
loader reads, sends its loss over the websocket, and Cancel leaves a checkpoint that resume continues."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import urllib.request

import numpy as np
import pytest

from bolid_core.adapter import Source, load_adapter
from bolid_core.train.state import latest_checkpoint, load_checkpoint
from bolid_dev.client import WorkflowError
from bolid_dev.workflows import load_api_workflow, with_tiny_models

WORKFLOW = "train_bolid_adapter"
DATASET = "bolid_example_people"
LOSS_EVENT = "bolid.training.loss"


@pytest.fixture(scope="module")
def dataset(comfy_server):
    """Installed by conftest's _install_test_assets before the server starts, so the combo lists it."""
    return comfy_server.base_directory / "input" / "bolid_datasets" / DATASET


class LossListener:
    """The "bolid.training.loss" messages the server sends, read on a thread of its own."""

    def __init__(self, server, client_id: str) -> None:
        self.url = server.url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
        self.messages: list[dict] = []
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)
        self._thread.start()
        assert self.ready.wait(30), "the websocket did not connect"

    async def _listen(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as socket:
            self.ready.set()
            while not self._stop.is_set():
                try:
                    message = await socket.receive(timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                if message.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(message.data)
                    if data.get("type") == LOSS_EVENT:
                        self.messages.append(data["data"])
                elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return

    def steps(self, adapter: str) -> list[int]:
        return [m["step"] for m in self.messages if m.get("adapter") == adapter]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture()
def listener(comfy_server, client):
    listening = LossListener(comfy_server, client.client_id)
    yield listening
    listening.close()


def training_prompt(name: str, steps: int, resume: str = "none", checkpoint_every: int = 1000) -> dict:
    workflow = with_tiny_models(load_api_workflow(WORKFLOW))
    node = next(node for node in workflow.values() if node["class_type"] == "BoLIDTrainAdapter")
    node["inputs"].update(
        dataset=DATASET, adapter_name=name, steps=steps, resume=resume, resolution=64, batch_size=1,
        grad_accumulation=1, checkpoint_every=checkpoint_every, learning_rate=1e-3,
    )  # fmt: skip
    return workflow


def test_shipped_workflow_trains_an_adapter_the_loader_reads(client, comfy_server, dataset, listener) -> None:
    entry = client.run(training_prompt("trained_tiny", steps=3), timeout_s=600)
    path = comfy_server.base_directory / "models" / "bolid" / "trained_tiny.safetensors"
    adapter = load_adapter(path)
    assert adapter.spec.sources == (Source.IMAGE,) and adapter.spec.clip_dim == 1024
    assert client.output_images(entry), "the loss plot was not previewed"
    deadline = time.monotonic() + 10
    while listener.steps("trained_tiny") != [1, 2, 3] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert listener.steps("trained_tiny") == [1, 2, 3]
    assert all(np.isfinite(m["terms"]["loss"]) and m["max"] == 3 for m in listener.messages)

    again = client.run(training_prompt("trained_tiny", steps=3), timeout_s=600)
    cached = [data["nodes"] for event, data in again["status"]["messages"] if event == "execution_cached"]
    assert any("3" in nodes for nodes in cached), "the same inputs and dataset trained again"

    sampling = with_tiny_models(load_api_workflow("bolid_reference_adapter"))
    loader = next(node for node in sampling.values() if node["class_type"] == "BoLIDAdapterLoader")
    loader["inputs"]["adapter_name"] = "bolid/trained_tiny.safetensors"
    for node in sampling.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        elif node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    assert client.output_images(client.run(sampling, timeout_s=600)), "sampling with the trained adapter failed"


def test_cancel_keeps_a_checkpoint_and_resume_finishes(client, comfy_server, dataset, listener) -> None:
    name = "cancelled_tiny"
    prompt_id = client.queue(training_prompt(name, steps=500))
    deadline = time.monotonic() + 300
    while len(listener.steps(name)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(listener.steps(name)) >= 2, "training sent no loss"
    request = urllib.request.Request(f"{comfy_server.url}/interrupt", data=b"{}", method="POST")
    urllib.request.urlopen(request, timeout=30).close()
    with pytest.raises(WorkflowError, match="interrupted"):
        client.wait(prompt_id, timeout_s=300)
    checkpoint = latest_checkpoint(comfy_server.output_directory / "bolid_training" / name / "checkpoints")
    assert checkpoint is not None, "Cancel left no checkpoint"
    saved = load_checkpoint(checkpoint).state.step
    assert 2 <= saved < 500
    assert not (comfy_server.base_directory / "models" / "bolid" / f"{name}.safetensors").exists()

    before = len(listener.messages)
    client.run(training_prompt(name, steps=saved + 2, resume=name), timeout_s=600)
    resumed = [m["step"] for m in listener.messages[before:] if m.get("adapter") == name]
    assert resumed == [saved + 1, saved + 2], "resume did not continue from the checkpoint"
    assert load_adapter(comfy_server.base_directory / "models" / "bolid" / f"{name}.safetensors").spec.tokens


def test_bad_numbers_and_names_are_refused(client, dataset) -> None:
    prompt = training_prompt("nan_rate", steps=2)
    next(n for n in prompt.values() if n["class_type"] == "BoLIDTrainAdapter")["inputs"]["learning_rate"] = math.nan
    with pytest.raises(WorkflowError, match=r"(?s)HTTP 400.*learning_rate is nan"):
        client.queue(prompt)
    with pytest.raises(WorkflowError, match="not a plain file name"):
        client.run(training_prompt("../escape", steps=2), timeout_s=300)
