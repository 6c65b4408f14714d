#!/usr/bin/env bash
# Lint, format check, type check, the import layers, the documentation site
# (scripts/check_docs.sh: any warning fails it, e.g. a page outside the nav, a broken link, a
# stale generated page), then the tests (after scripts/setup.sh --dev).
# The tests run on two pytest-xdist workers, one thread each (tests/conftest.py), taking work
# from each other as they finish. --quick: unit tests only (no test marked integration), fewer
# examples per property test, for the inner loop; other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
marks=(-n 2 --dist worksteal)
if [[ "${1:-}" == "--quick" ]]; then
    shift
    marks+=(-m "not integration")
    export FEDPET_QUICK=1
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy
.venv/bin/lint-imports
scripts/check_docs.sh
.venv/bin/python -m pytest -q "${marks[@]}" "$@"
