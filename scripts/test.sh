#!/usr/bin/env bash
# Install vlm_envs with every extra the tests exercise, then run the whole test suite.
# torch comes first, pinned to the CPU build on these machines, so that no extra pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -e ".[test,human]"
python -m pytest -q "$@"
