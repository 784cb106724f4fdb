#!/usr/bin/env bash
# Every GPU check in one run on a fresh CUDA machine, at most 8 minutes, results under $OUT.
#
# Written for the GPU image: python3 (no `python`), torch with CUDA, Triton, nvcc, pandas, pyarrow,
# nvidia-ml-py, pytest, pytest-benchmark -- no plotly, streamlit, rich or scipy, no network. So it
# installs benchbed offline with --no-deps (or, if that cannot build, imports it from a shadow tree
# of this checkout), and runs only code paths that import none of those packages.
#
# Steps (each with its own time limit; one failing does not stop the others):
#   install       pip install --no-deps --no-build-isolation -e . (fallback: shadow tree)     <=  30 s
#   tests         every gpu-marked test: kernels vs float64, CUDA C++ Lion, telemetry, training <= 120 s
#   bench         the kernel sweep (benchbed kernels bench) -> kernels.parquet                <=  70 s
#   aot           the ahead-of-time report for this GPU's arch and sm_80 -> aot.json           <=  50 s
#   scenario      lm-tiny on the GPU with every hardware technique in training, NVML energy  <= 170 s
# (440 s of step limits, plus a few seconds of device probing and archiving: under 8 minutes)
#
# $OUT receives at most 8 files, none in a subfolder: summary.txt, tests-gpu.xml, kernels.parquet,
# aot.json, scenario.tar.gz (the results directory), logs.tar.gz (every step's log). The Triton and
# extension caches live under $WORK (default /tmp/benchbed-gpu-check), never under $OUT.
# Exit 0 when every step passed, 1 when one failed or timed out, 2 without CUDA.
#
# GPU_CHECK_DEVICE=cpu runs the same steps on a CPU, small, labelled and with 3x the time limits
# (tests/test_gpu_check.py uses it to check this script where no GPU is); nothing it writes is a GPU
# measurement.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"

PYTHON="${PYTHON:-python3}"
OUT="${OUT:?set OUT to the directory for results}"
WORK="${WORK:-/tmp/benchbed-gpu-check}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export TRITON_CACHE_DIR="$WORK/triton-cache" BENCHBED_EXTENSIONS_DIR="$WORK/extensions"
unset TRITON_INTERPRET
mkdir -p "$OUT" "$WORK/logs" "$TRITON_CACHE_DIR"
OUT="$(cd "$OUT" && pwd)"
# Python runs from $WORK, never from the checkout: there `import benchbed` would find the bare
# benchbed/ folder first, without the kernels/ and techniques/ it installs as subpackages
cd "$WORK"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
started_all=$SECONDS

say() { echo "gpu_check: $*" | tee -a "$SUMMARY"; }

# a CPU rehearsal gets 3x the limits: it starts Python and torch on 2 possibly shared cores, which
# says nothing about the GPU machine's 16; the limits above are the GPU image's
scale=1
[ "$DEVICE" = cuda ] || scale=3
status=0
step() {  # step NAME SECONDS CMD...: time-limited, logged to $WORK/logs/NAME.log, tail in the summary
  local name="$1" limit="$(($2 * scale))"
  shift 2
  local started=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
  local rc=$?
  say "$name rc=$rc in $((SECONDS - started)) s (limit $limit s)"
  tail -n 8 "$WORK/logs/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

# -- install -----------------------------------------------------------------------------------------
install_shadow_tree() {  # benchbed's package-dir mapping by symlinks, importable through PYTHONPATH
  local site="$WORK/site"
  rm -rf "$site" && mkdir -p "$site/benchbed"
  for entry in "$REPO"/benchbed/*; do ln -s "$entry" "$site/benchbed/$(basename "$entry")"; done
  for sub in techniques kernels scenarios dashboard; do ln -s "$REPO/$sub" "$site/benchbed/$sub"; done
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
}
if ! step install 30 "$PYTHON" -m pip install --no-deps --no-build-isolation --no-index -e "$REPO"; then
  say "install: pip could not install the checkout; importing it from a shadow tree instead"
  install_shadow_tree
  status=0  # the fallback is not a failure of the check
fi
if ! "$PYTHON" -c 'import benchbed.kernels, benchbed.techniques' >>"$WORK/logs/install.log" 2>&1; then
  say "install: benchbed does not import; see logs.tar.gz (install.log)"
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
  exit 1
fi

if [ "$DEVICE" = cuda ]; then
  if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    say "torch in '$PYTHON' sees no CUDA device; nothing measured"
    exit 2
  fi
fi
"$PYTHON" - "$DEVICE" <<'PY' | tee -a "$SUMMARY"
import sys, torch, triton
from benchbed.kernels.cuda_lion import cuda_extension_status
if sys.argv[1] == "cuda":
    p = torch.cuda.get_device_properties(0)
    print(f"device={p.name} cc={p.major}{p.minor} sms={p.multi_processor_count} mem_bytes={p.total_memory}")
else:
    print("device=cpu (GPU_CHECK_DEVICE=cpu: a rehearsal of this script, not a GPU measurement)")
print(f"python={sys.version.split()[0]} torch={torch.__version__} cuda={torch.version.cuda} triton={triton.__version__}")
print("cuda C++ extension: %s (%s)" % cuda_extension_status())
try:
    import torchao  # noqa: F401
    print(f"torchao={torchao.__version__}")
except Exception as exc:
    print(f"torchao: not importable ({type(exc).__name__}); no torchao float8 rows")
PY

# -- tests -------------------------------------------------------------------------------------------
tests=(test_kernels_triton.py test_kernels.py test_kernels_compile.py test_telemetry_gpu.py test_techniques_train.py test_profile.py)
step tests 120 "$PYTHON" -m pytest -v --tb=short -m gpu -p no:cacheprovider -c "$REPO/pyproject.toml" --rootdir "$REPO" \
  --junitxml="$OUT/tests-gpu.xml" "${tests[@]/#/$REPO/tests/}"

# -- kernel sweep ------------------------------------------------------------------------------------
if [ "$DEVICE" = cuda ]; then
  step bench 70 "$PYTHON" -m benchbed.kernels.cli bench --out "$WORK/bench" --repeats 10
else
  step bench 70 "$PYTHON" -m benchbed.kernels.cli bench --out "$WORK/bench" --repeats 2 --cpu \
    --ops block_sparse_attention,fp8_linear,int8_linear
fi
[ -f "$WORK/bench/kernels.parquet" ] && cp "$WORK/bench/kernels.parquet" "$OUT/kernels.parquet"

# -- ahead-of-time report ------------------------------------------------------------------------------
archs=90,80
if [ "$DEVICE" = cuda ]; then
  arch="$("$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(p.major * 10 + p.minor)')"
  case "$arch" in 80) archs=80 ;; 90) archs=90,80 ;; *) archs=90,80 ;; esac
  step aot 50 "$PYTHON" -m benchbed.kernels.cli report --arch "$archs" --jobs "$(nproc)" --json "$OUT/aot.json"
else
  step aot 50 "$PYTHON" -m benchbed.kernels.cli report --arch 90 --op int8_linear --jobs 2 --json "$OUT/aot.json"
fi

# -- the quick workload with every hardware technique in training ---------------------------------------
scenario="$WORK/quick-hardware.toml"
if [ "$DEVICE" = cuda ]; then
  budget='seconds = 3'
  techniques='"adamw", "fused_optimizer+flash_attention+fused_norm+fused_cross_entropy",
  "adamw+block_sparse_attention+fp8_linear", "adamw+int8_linear", "adamw+semi_structured_sparsity",
  "adamw+bf16_autocast+fp8_linear"'
  optimizer_axis='"fused_optimizer.backend" = ["triton", "cuda"]'
  low_precision_backend='auto'
else  # the CPU runs references; 2:4 sparsity and the CUDA C++ step are refused there by design
  budget='steps = 2'
  techniques='"adamw", "fused_optimizer+flash_attention+fused_norm+fused_cross_entropy",
  "adamw+block_sparse_attention+fp8_linear", "adamw+int8_linear"'
  optimizer_axis=''
  low_precision_backend='reference'
fi
cat >"$scenario" <<TOML
name = "quick-hardware"
description = "lm-tiny on $DEVICE with every hardware technique in training (written by scripts/gpu_check.sh)"
workload = "lm-tiny"
device = "$DEVICE"
seeds = [0]
baseline = "adamw"
stop_at_target = true
timeout_s = 60

[budget]
$budget

[matrix]
techniques = [$techniques]
$optimizer_axis

[techniques.fused_optimizer]
algorithm = "lion"

[techniques.block_sparse_attention]
block = 16
global_blocks = 1
random_blocks = 1

[techniques.fp8_linear]
backend = "$low_precision_backend"

[techniques.int8_linear]
backend = "$low_precision_backend"
TOML
# the runner API directly: `benchbed run` would print its table with rich, which the image lacks
step scenario 170 "$PYTHON" - "$scenario" "$WORK/scenario" <<'PY'
import sys
from benchbed import plan
from benchbed.results import store
from benchbed.run.runner import run_scenario

scenario = plan.load(sys.argv[1])
run_scenario(scenario, sys.argv[2], progress=False)
cells = store.load(sys.argv[2]).cells
columns = [c for c in ("variant", "status", "launcher", "steps", "train_time_s", "final_val_loss", "energy_j",
                       "energy_source", "peak_mem_bytes") if c in cells.columns]
print(cells[columns].to_string(max_colwidth=48))
failed = cells[cells["status"].isin(["error", "timeout", "oom"])]
for _, row in failed.iterrows():
    print(f"{row['status']} in {row['variant']}: {str(row.get('error'))[-600:]}")
# on a GPU every cell is forked by the fork server (run/zygote.py), not a plain-subprocess fallback
on_gpu = any(c.device == "cuda" for c in scenario.cells)
unforked = cells[cells["launcher"] != "fork"] if on_gpu else cells.iloc[:0]
for _, row in unforked.iterrows():
    print(f"not forked: {row['variant']} ran with launcher {row['launcher']!r}")
sys.exit(1 if len(failed) or len(unforked) else 0)
PY
[ -d "$WORK/scenario" ] && tar -czf "$OUT/scenario.tar.gz" -C "$WORK" scenario

say "total $((SECONDS - started_all)) s; exit $status"
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
exit "$status"
