#!/usr/bin/env bash
# Static checks, run by .ci/run before the tests: lint (ruff), types (mypy), and the layering of
# the packages (no import cycle, no lower layer importing a higher one). Needs scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "ruff:"
.venv/bin/ruff check core ingest alerts tiers lifecycle analytics fabtier dashboard simulator tests scripts
echo "mypy:"
.venv/bin/mypy
echo "layering:"
.venv/bin/python scripts/import_graph.py --check
