#!/usr/bin/env bash
# Create .venv and install midirwkv. Usage: scripts/install.sh [EXTRAS], e.g. "test" or "server,plot".
# torch is installed first at 2.13.0 (the CPU wheel this project is tested with); pyproject allows torch>=2.4.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true   # an old pip still works
.venv/bin/python -m pip install -q torch==2.13.0
if [ -n "$extras" ]; then spec=".[$extras]"; else spec="."; fi
.venv/bin/python -m pip install -q -e "$spec"
.venv/bin/python -c "import importlib.metadata as m, midirwkv; print('midirwkv', midirwkv.__version__, *(f'{p} {m.version(p)}' for p in ('torch', 'miditok', 'symusic')))"
