#!/usr/bin/env bash
# Copy a finished study's report, results.csv and plots (no run directories, no checkpoints)
# into docs/results/ANALYSIS/, then refresh the README's and the home page's results table.
# Usage: scripts/publish-results.sh ANALYSIS STUDY_DIR
#   e.g. scripts/publish-results.sh heterogeneity studies/paper-heterogeneity
set -euo pipefail
cd "$(dirname "$0")/.."
analysis="$1" study="$2"
.venv/bin/fedpet report "$study" >/dev/null
mkdir -p "docs/results/$analysis"
rm -f "docs/results/$analysis"/*.png
cp "$study/report.md" "$study/results.csv" "$study/study.yaml" "$study"/*.png "docs/results/$analysis/"
.venv/bin/python -m fedpet.cli.pages
echo "published $study as docs/results/$analysis"
