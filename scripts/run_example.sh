#!/usr/bin/env bash
# README command 1 (the main job): set up if needed, start ComfyUI with the pack on 127.0.0.1, queue
# the default example workflow through the HTTP API, wait, and print the saved image's path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "${BOLID_VENV:-$ROOT/.venv}/bin/python" -m bolid_dev.run_example "$@"
