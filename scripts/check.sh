#!/usr/bin/env bash
# Lint, format check, type check, the import layers, the documentation site (mkdocs build
# --strict: a broken link or a stale generated page fails), then the tests (after
# scripts/setup.sh --dev).
# --quick: unit tests only (no test marked integration), fewer examples per property test,
# on two pytest-xdist workers, for the inner loop; other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
marks=()
if [[ "${1:-}" == "--quick" ]]; then
    shift
    marks=(-m "not integration" -n 2)
    export FEDPET_HYPOTHESIS=quick
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy
.venv/bin/lint-imports
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet
.venv/bin/python -m pytest -q "${marks[@]}" "$@"
