#!/usr/bin/env bash
# One-command set-up: a virtual environment with the pinned requirements and this package (Python 3.11; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements.txt
.venv/bin/pip install -q --no-deps -e .   # this package (editable): `import explorer` anywhere, the safety-explorer CLI
