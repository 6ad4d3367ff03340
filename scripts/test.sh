#!/usr/bin/env bash
# Builds everything and runs the whole test suite: `cpu` tests always, `gpu` tests on a machine
# with an NVIDIA GPU (elsewhere they are reported as skipped). Ends with "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
CTEST="$(dirname "$(bash scripts/setup.sh)")/ctest"
BUILD_DIR=${BUILD_DIR:-build}
set +e
(cd "$BUILD_DIR" && "$CTEST" --output-on-failure ${CTEST_ARGS:-} 2>&1) | tee "$BUILD_DIR/ctest.log"
rc=${PIPESTATUS[0]}
set -e
python3 scripts/ci_summary.py "$BUILD_DIR/ctest.log"
exit "$rc"
