#!/usr/bin/env bash
# Kernel checks on a CUDA machine, in at most 6 minutes, everything written under $OUT:
#   1. the GPU-marked kernel tests (Triton vs float64 references on the device)   <= 200 s
#   2. the kernel sweep: benchbed kernels bench --out $OUT/kernels                <= 130 s
#      (kernels.parquet is rewritten after every case, so a cut-short sweep keeps its rows)
#   3. the AOT resource report for this GPU's arch and sm_80                      <=  25 s
# Needs a CUDA build of torch in the Python it runs ($PYTHON, default: python3) with benchbed
# importable. The Triton cache goes to $TRITON_CACHE_DIR (default under /tmp, never under $OUT).
# scripts/gpu_check.sh runs all of this and more on a fresh GPU image. Exit status: 0 when every
# step passed, 1 when a step failed or timed out (the others still run), 2 without CUDA.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
OUT="${OUT:?set OUT to the directory for results}"
mkdir -p "$OUT/kernels"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/benchbed-triton-cache}"
unset TRITON_INTERPRET

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_kernels: torch in '$PYTHON' sees no CUDA device; nothing measured" | tee "$OUT/kernels/NOT_MEASURED.txt"
  exit 2
fi
"$PYTHON" - <<'PY' | tee "$OUT/kernels/device.txt"
import torch, triton
p = torch.cuda.get_device_properties(0)
print(f"device={p.name} cc={p.major}{p.minor} sms={p.multi_processor_count} mem_bytes={p.total_memory} "
      f"torch={torch.__version__} triton={triton.__version__}")
PY

status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/kernels/NAME.log
  local name="$1" limit="$2"
  shift 2
  local started=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$OUT/kernels/$name.log" 2>&1
  local rc=$?
  echo "gpu_kernels: $name rc=$rc in $((SECONDS - started)) s (log: $OUT/kernels/$name.log)"
  tail -n 5 "$OUT/kernels/$name.log"
  [ "$rc" -eq 0 ] || status=1
}

step tests 200 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider \
  --junitxml="$OUT/kernels/tests-gpu.xml" tests/test_kernels_triton.py tests/test_kernels.py \
  tests/test_kernels_compile.py
step bench 130 "$PYTHON" -m benchbed.kernels.cli bench --out "$OUT/kernels" --repeats 10
arch="$("$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(p.major * 10 + p.minor)')"
case "$arch" in 90 | 80) archs="$arch" ;; *) archs="90" ;; esac
[ "$archs" = 80 ] || archs="$archs,80"
step aot-report 25 "$PYTHON" -m benchbed.kernels.cli report --arch "$archs" --json "$OUT/kernels/aot.json"

exit "$status"
