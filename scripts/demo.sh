#!/usr/bin/env bash
# Installs everything (scripts/setup.sh) and runs `fabtier demo`; extra arguments go to it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fabtier demo "$@"
