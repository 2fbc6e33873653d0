#!/usr/bin/env bash
# README command 2: set up if needed (chromium included), then lint and run all four test tiers.
# Extra arguments go to pytest. pytest exits 5 when it collects no test, which fails this script.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" --browser
cd "$ROOT"
PY="${BOLID_VENV:-$ROOT/.venv}/bin/python"
"$PY" -m ruff check .
"$PY" -m ruff format --check .
exec "$PY" -m pytest "$@"
