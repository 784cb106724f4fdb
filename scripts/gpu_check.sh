#!/usr/bin/env bash
# Every GPU check in one run, at most about 9 minutes, everything written under $OUT:
#   1. scripts/gpu_kernels.sh: kernel GPU tests, the kernel sweep, the AOT report        <= 6 min
#   2. the other GPU-marked tests (telemetry's real NVML path, hardware techniques)      <= 90 s
#   3. a small GPU scenario: quick-gpu.toml (cells forked by the fork server) -> $OUT/quick   <= 90 s
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
  --junitxml="$OUT/tests-gpu-other.xml" tests/test_telemetry_gpu.py tests/test_techniques_train.py \
  >"$OUT/tests-gpu-other.log" 2>&1 || status=1
echo "gpu_check: other GPU tests in $((SECONDS - started)) s"; tail -n 3 "$OUT/tests-gpu-other.log"

started=$SECONDS
timeout --kill-after=10 90 "$PYTHON" -m benchbed.cli run quick-gpu --out "$OUT/quick" --quiet \
  >"$OUT/quick.log" 2>&1 || status=1
echo "gpu_check: quick scenario on the GPU in $((SECONDS - started)) s"; tail -n 12 "$OUT/quick.log"
# every cell forked by the fork server (not a fallback) and reaching its target on the GPU
"$PYTHON" - "$OUT/quick/cells.parquet" <<'PY' || status=1
import sys
import pandas as pd
cells = pd.read_parquet(sys.argv[1])
print("gpu_check: quick-gpu launchers", cells["launcher"].value_counts().to_dict(),
      "statuses", cells["status"].value_counts().to_dict())
sys.exit(0 if (cells["launcher"] == "fork").all() and (cells["status"] == "reached").all() else 1)
PY

exit "$status"
