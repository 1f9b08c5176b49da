#!/usr/bin/env bash
# The test command of the README: fast tests on CPU (slow ones: `pytest -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
python -m pytest -n 2 -q "$@"
