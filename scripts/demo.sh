#!/usr/bin/env bash
# The main job on built-in sample data: set up, then run `live-stack demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/live-stack demo "$@"
