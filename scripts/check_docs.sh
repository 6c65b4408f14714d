#!/usr/bin/env bash
# Build the documentation site (mkdocs --strict) and fail on any warning: a page outside the
# nav, a link to a missing page or anchor, a stale generated page. Not --quiet: it raises
# mkdocs's log level above warnings, so strict mode never counts them (mkdocs issue #4126).
# Prints the warnings and errors, not the INFO lines. Usage: scripts/check_docs.sh [mkdocs.yml]
set -euo pipefail
config="$(realpath "${1:-$(dirname "$0")/../mkdocs.yml}")"
cd "$(dirname "$0")/.."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --config-file "$config" >"$log" 2>&1 || status=$?
grep -v '^INFO' "$log" >&2 || true
exit "$status"
