#!/usr/bin/env bash
# Configures and builds llmq into ./build (or $BUILD_DIR). Without a GPU and without an explicit
# CMAKE_CUDA_ARCHITECTURES it builds for Hopper (90a) only, which is enough to check that all code compiles.
set -euo pipefail
cd "$(dirname "$0")/.."
CMAKE=$(bash scripts/setup.sh)
export PATH=/usr/local/cuda/bin:$PATH
BUILD_DIR=${BUILD_DIR:-build}
args=(-S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release)
if [ -n "${CMAKE_CUDA_ARCHITECTURES:-}" ]; then
  args+=("-DCMAKE_CUDA_ARCHITECTURES=$CMAKE_CUDA_ARCHITECTURES")
elif ! nvidia-smi -L >/dev/null 2>&1 && [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  args+=("-DCMAKE_CUDA_ARCHITECTURES=90a")
fi
"$CMAKE" "${args[@]}"
"$CMAKE" --build "$BUILD_DIR" --parallel "${JOBS:-$(nproc)}"
