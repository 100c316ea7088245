#!/usr/bin/env bash
# Install recon (editable) with a CPU build of torch pinned first, so no multi-GB CUDA build is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[dev]"
# open3d (the reference the mesh tests compare against) needs libusb on Debian/Ubuntu.
if ! "$PY" -c "import open3d" 2>/dev/null && command -v apt-get >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q libusb-1.0-0 >/dev/null; }
fi
# Khronos glTF validator (tests/test_gltf_validator.py, scripts/gltf_validate.mjs), pinned, into the git-ignored
# .cache/npm; needs node and npm (Debian's nodejs + npm when they are missing).
GLTF_VALIDATOR_VERSION=2.0.0-dev.3.10
if ! { command -v node && command -v npm; } >/dev/null && command -v apt-get >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get install -y -q nodejs npm >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q nodejs npm >/dev/null; }
fi
if command -v npm >/dev/null && [ "$(node -p "require(process.cwd() + '/.cache/npm/node_modules/gltf-validator/package.json').version" 2>/dev/null)" != "$GLTF_VALIDATOR_VERSION" ]; then
  npm install --prefix .cache/npm --no-audit --no-fund --silent "gltf-validator@$GLTF_VALIDATOR_VERSION" >/dev/null
fi
