#!/usr/bin/env bash
# Install vlm_envs with every extra the tests exercise, then run the whole test suite.
# torch comes first, pinned to the CPU build on these machines, so that no extra pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
# The alfworld extra compiles the fast-downward planner; CMake 4 needs this policy floor for it.
CMAKE_POLICY_VERSION_MINIMUM=3.5 python -m pip install --quiet --disable-pip-version-check -e ".[all]"
python -m pytest -q "$@"
