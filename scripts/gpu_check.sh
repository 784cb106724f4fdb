#!/usr/bin/env bash
# Every GPU check in one run, at most about 9 minutes, everything written under $OUT:
#   1. scripts/gpu_kernels.sh: kernel GPU tests, the kernel sweep, the AOT report        <= 6 min
#   2. the other GPU-marked tests (real NVML path, hardware techniques, CUDA profiling) <= 90 s
#   3. a small GPU scenario: the quick matrix on the GPU -> $OUT/quick (Parquet tables)   <= 90 s
# Needs a CUDA build of torch in $PYTHON (default: python) with benchbed installed or importable
# from this checkout. Copy $OUT to results/reference/<gpu>-<date>/ to give the dashboard real
# GPU data. Exit 0 when every step passed, 1 when one failed or timed out, 2 without CUDA.
set -uo pipefail
cd "$(dirname "$0")/.."

export PYTHON="${PYTHON:-python}"
export OUT="${OUT:?set OUT to the directory for results}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: torch in '$PYTHON' sees no CUDA device; nothing measured" | tee "$OUT/NOT_MEASURED.txt"
  exit 2
fi

status=0
bash scripts/gpu_kernels.sh || status=1

started=$SECONDS
timeout --kill-after=10 90 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider \
  --junitxml="$OUT/tests-gpu-other.xml" tests/test_telemetry_gpu.py tests/test_techniques_train.py tests/test_profile.py \
  >"$OUT/tests-gpu-other.log" 2>&1 || status=1
echo "gpu_check: other GPU tests in $((SECONDS - started)) s"; tail -n 3 "$OUT/tests-gpu-other.log"

started=$SECONDS
timeout --kill-after=10 90 "$PYTHON" -m benchbed.cli run quick --device cuda --out "$OUT/quick" --quiet \
  >"$OUT/quick.log" 2>&1 || status=1
echo "gpu_check: quick scenario on the GPU in $((SECONDS - started)) s"; tail -n 12 "$OUT/quick.log"

exit "$status"
