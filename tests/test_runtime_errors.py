"""The README commands stop with a message saying what to do: no ComfyUI, a server that dies or hangs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bolid_dev.runtime import RuntimeSetupError, comfy_server, comfyui_dir, link_pack

REPO_ROOT = Path(__file__).resolve().parent.parent


def fake_comfyui(folder: Path, main_py: str) -> Path:
    (folder / "comfy").mkdir(parents=True)
    (folder / "main.py").write_text(main_py)
    return folder


def test_missing_comfyui_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(RuntimeSetupError, match=r"not a ComfyUI folder.*scripts/setup.sh.*COMFYUI_PATH"):
        comfyui_dir()


def test_server_that_exits_reports_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    comfy = fake_comfyui(tmp_path / "comfy", "import sys\nprint('broken install: no module named x')\nsys.exit(3)\n")
    monkeypatch.setenv("COMFYUI_PATH", str(comfy))
    started = time.monotonic()
    with pytest.raises(RuntimeSetupError, match=r"(?s)exited with code 3.*broken install"):
        with comfy_server(tmp_path / "base", with_test_models=False, log_path=tmp_path / "log" / "c.log"):
            pass
    assert time.monotonic() - started < 60


def test_server_that_never_answers_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    comfy = fake_comfyui(tmp_path / "comfy", "import time\nprint('stuck', flush=True)\ntime.sleep(600)\n")
    monkeypatch.setenv("COMFYUI_PATH", str(comfy))
    started = time.monotonic()
    with pytest.raises(RuntimeSetupError, match=r"(?s)did not answer .* within 3 s.*stuck"):
        with comfy_server(
            tmp_path / "base", with_test_models=False, log_path=tmp_path / "log" / "c.log", startup_timeout_s=3
        ):
            pass
    assert time.monotonic() - started < 30


def test_link_pack_refuses_to_replace_another_copy(tmp_path: Path) -> None:
    custom_nodes = tmp_path / "custom_nodes"
    (custom_nodes / "bolid-nodes").mkdir(parents=True)
    with pytest.raises(RuntimeSetupError, match="already holds another copy"):
        link_pack(custom_nodes)
    other = tmp_path / "fresh"
    assert link_pack(other).resolve() == REPO_ROOT


def test_setup_stops_on_a_bad_comfyui_path(tmp_path: Path) -> None:
    env = {**os.environ, "COMFYUI_PATH": str(tmp_path / "nowhere"), "BOLID_VENV": str(Path(sys.prefix))}
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "setup.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "COMFYUI_PATH" in result.stderr and "is not a directory" in result.stderr


def test_main_job_reports_a_missing_comfyui(tmp_path: Path) -> None:
    env = {**os.environ, "COMFYUI_PATH": str(tmp_path / "nowhere")}
    result = subprocess.run(
        [sys.executable, "-m", "bolid_dev.run_example"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "ERROR:" in result.stderr and "not a ComfyUI folder" in result.stderr
