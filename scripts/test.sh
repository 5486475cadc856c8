#!/usr/bin/env bash
# Set up, lint, then run the whole test suite. Exits non-zero if any test fails or if
# no test ran at all (pytest's exit code 5).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export QT_QPA_PLATFORM=offscreen
.venv/bin/ruff check live_stack daemon viewer tests benchmarks || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
