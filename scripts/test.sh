#!/usr/bin/env bash
# The README test command: set up (idempotent), build the C++ kernels once, run the default suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RECON_TEST_DATA=${RECON_TEST_DATA:-$(cd .. && pwd)/shared/data}
python3 -m pytest -m "not slow and not gpu" -q "$@"
