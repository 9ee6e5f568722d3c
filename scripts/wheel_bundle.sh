#!/usr/bin/env bash
# The offline bundle for a GPU machine without the package index: see scripts/wheel_bundle.py (same arguments).
#   bash scripts/wheel_bundle.sh [DIR]     # default .bundle (git-ignored); run from tuner's .venv or with it on PATH
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
exec "$PYTHON" scripts/wheel_bundle.py "$@"
