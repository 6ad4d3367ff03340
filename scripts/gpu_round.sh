#!/usr/bin/env bash
# Developer script for the lent GPU machine: builds a source tree there with all 16 cores and runs
# scripts/gpu_check.sh on it. The machine has no cuDNN frontend headers and no network, so the
# caller carries them (CUDNN_FRONTEND_INCLUDE_DIR, default .carry/fe/include) and optional wheels
# in .whl/ (installed to /tmp/site). cuDNN comes from PyTorch's wheel (9.19, newer than the system's).
#   bash scripts/gpu_round.sh SRC_DIR STAGE...     (logs under $OUT)
set -uo pipefail
SRC=$(cd "${1:?source dir}" && pwd); shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/gpu_logs}; mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$REPO"/.whl/*.whl &&
    export PYTHONPATH=/tmp/site
fi
TC=$(python3 -c "import nvidia.cudnn,os;print(list(nvidia.cudnn.__path__)[0])")
mkdir -p /tmp/cudnn/lib; ln -sfn "$TC/include" /tmp/cudnn/include
for f in "$TC"/lib/libcudnn*.so.9; do ln -sf "$f" /tmp/cudnn/lib/; ln -sf "$f" "/tmp/cudnn/lib/$(basename "$f" .9)"; done
export CUDNN_PATH=/tmp/cudnn CUDNN_FRONTEND_INCLUDE_DIR=${CUDNN_FRONTEND_INCLUDE_DIR:-$REPO/.carry/fe/include}
BUILD=/tmp/b
cmake -S "$SRC" -B $BUILD -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90a -DLLMQ_WITH_MPI=OFF >"$OUT/configure.log" 2>&1 ||
  { tail -30 "$OUT/configure.log"; exit 1; }
start=$(date +%s)
ninja -C $BUILD -j16 -k 0 >"$OUT/build.log" 2>&1; rc=$?
echo "build rc=$rc in $(( $(date +%s) - start )) s"
grep -E "error|FAILED" "$OUT/build.log" | head -30
export LD_LIBRARY_PATH=/tmp/cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
cd "$SRC" && OUT=$OUT bash scripts/gpu_check.sh $BUILD "$@"
