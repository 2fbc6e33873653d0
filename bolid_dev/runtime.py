"""Finding the ComfyUI runtime and running a real ComfyUI server with this pack loaded.

Used by the README's main job (`python -m bolid_dev.run_example`) and by the test fixtures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "bolid-nodes"  # the folder name the pack gets inside custom_nodes
TEST_NODE_PACKS = REPO_ROOT / "tests" / "comfy_nodes"
SETUP_HINT = "Run `bash scripts/setup.sh` first, or set COMFYUI_PATH to the root of your ComfyUI."


class RuntimeSetupError(RuntimeError):
    """ComfyUI is missing, or the server could not start. The message says what to do."""


def comfyui_dir() -> Path:
    """The ComfyUI to run: $COMFYUI_PATH, else the one scripts/setup.sh unpacked."""
    configured = os.environ.get("COMFYUI_PATH")
    if configured:
        path = Path(configured).expanduser().resolve()
    else:
        marker = Path(sys.prefix) / ".bolid-comfyui-path"
        if not marker.is_file():
            raise RuntimeSetupError(f"No ComfyUI found for {sys.executable}. {SETUP_HINT}")
        path = Path(marker.read_text().strip())
    if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
        raise RuntimeSetupError(f"{path} is not a ComfyUI folder (no main.py and comfy/). {SETUP_HINT}")
    return path


def import_comfy_in_process(cpu: bool = True) -> Path:
    """Make the real `comfy` package importable here (CPU mode); returns the ComfyUI folder.

    ComfyUI's top-level `nodes` module must win over this pack's `nodes/` package, so ComfyUI goes
    first on sys.path and nothing may have imported a foreign `nodes` before.
    """
    path = comfyui_dir()
    for entry in (str(TEST_NODE_PACKS), str(path)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    loaded = sys.modules.get("nodes")
    if loaded is not None and not getattr(loaded, "__file__", "").startswith(str(path)):
        raise RuntimeSetupError("this pack's nodes/ was imported as a top-level module before ComfyUI's `nodes`")
    from comfy.cli_args import args

    args.cpu = cpu
    return path


def link_pack(custom_nodes: Path) -> Path:
    """Make this checkout visible as custom_nodes/bolid-nodes; refuse to replace anything else there."""
    custom_nodes.mkdir(parents=True, exist_ok=True)
    link = custom_nodes / PACK_NAME
    if link.is_symlink() and link.resolve() != REPO_ROOT:
        link.unlink()
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    elif link.resolve() != REPO_ROOT:
        raise RuntimeSetupError(
            f"{link} already holds another copy of the pack. Move it away so this checkout can be linked there."
        )
    return link


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ComfyServer:
    url: str
    base_directory: Path
    output_directory: Path
    log_path: Path
    process: subprocess.Popen

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeSetupError(
                f"The ComfyUI server exited with code {self.process.returncode}. "
                f"Last lines of {self.log_path}:\n{self.log_tail()}"
            )


def _test_models_config(folder: Path) -> Path:
    """An extra_model_paths.yaml that adds tests/comfy_nodes as a second custom_nodes folder."""
    yaml_path = folder / "bolid_test_models.yaml"
    yaml_path.write_text(f"bolid_test_models:\n  custom_nodes: {TEST_NODE_PACKS}\n")
    return yaml_path


def _wait_until_ready(server: ComfyServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            with urllib.request.urlopen(f"{server.url}/system_stats", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeSetupError(
        f"ComfyUI did not answer on {server.url} within {timeout_s:.0f} s. "
        f"Last lines of {server.log_path}:\n{server.log_tail()}"
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@contextlib.contextmanager
def comfy_server(
    base_directory: Path | None,
    *,
    with_test_models: bool,
    log_path: Path,
    with_pack: bool = True,
    startup_timeout_s: float = 180.0,
) -> Iterator[ComfyServer]:
    """Start ComfyUI on a free loopback port with this pack linked in; always stop it afterwards.

    `base_directory` holds models/, custom_nodes/, input/, output/ and user/; None uses the ComfyUI
    folder's own (a user's real install). `with_test_models` also loads tests/comfy_nodes;
    `with_pack=False` gives a baseline ComfyUI without this pack.
    """
    comfy_dir = comfyui_dir()
    root = Path(base_directory) if base_directory is not None else comfy_dir
    (root / "custom_nodes").mkdir(parents=True, exist_ok=True)
    if with_pack:
        link_pack(root / "custom_nodes")
    port = free_port()
    command = [
        sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--disable-auto-launch", "--database-url", f"sqlite:///{log_path.parent / 'comfyui.db'}",
    ]  # fmt: skip
    if base_directory is not None:
        command += ["--base-directory", str(root)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if with_test_models:
        command += ["--extra-model-paths-config", str(_test_models_config(log_path.parent))]
    offline = {"YOLO_OFFLINE": "true", "YOLO_AUTOINSTALL": "false", "HF_HUB_OFFLINE": "1"}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **offline}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, cwd=comfy_dir, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )  # fmt: skip
    output = root / "output"
    server = ComfyServer(f"http://127.0.0.1:{port}", root, output, log_path, process)
    try:
        _wait_until_ready(server, startup_timeout_s)
        yield server
    finally:
        _stop(process)
