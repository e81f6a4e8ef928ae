#!/usr/bin/env bash
# Weight-only kernels (W4A16, W8A16, W4AFP8, NVFP4A16, MXFP4A16, MXFP8A16, W4A4 on Hopper) on the GPU machine:
# build csrc/, the GPU tests, the GEMV launch-shape sweep, then `quantops bench`; logs and CSVs under $OUT
# (at most 7 files: build.log gpu_tests.log gemv_sweep.log gemv_sweep.csv bench.log bench.csv bench2.csv).
#
#   source .devkit/env.sh; bash benchmarks/gpu_wna16.sh            # from the repo root
#
# Environment: OUT (default ./gpu-out); PHASES (default "build tests sweep bench bench2"); TEST_TIMEOUT (s,
# default 240); BENCH_SECONDS (default 120); SCHEMES/SHAPES (bench: default W4A16 on square-8192,llama3-8b) and
# SCHEMES2/SHAPES2 (bench2: the other weight-only schemes on square-8192); MS (batch sizes); BENCH_ARGS (extra
# arguments of the first bench, e.g. "--kernels Gemv"); TEST_K (a pytest -k expression for the tests); SWEEP_MS
# and SWEEP_TIMEOUT (the sweep's batch sizes, default 1,4,8,16,32,64,128,256, and time limit, default 120 s);
# SWEEP_PATHS / SWEEP_SPLITS (the op's paths and K splits the sweep times, default 0,1,2 and 0,1,2,4,8).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PHASES=${PHASES:-build tests sweep bench bench2}
MS=${MS:-1,16,64,128,512,2048,4096}
t0=$(date +%s)
has() { [[ " $PHASES " == *" $1 "* ]]; }
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  QUANTOPS_VERBOSE_BUILD=1 python3 -c "
import time; t = time.time()
import quantops.kernels.cuda_ext as e
print('quantops_cuda built/loaded in %.1f s' % (time.time() - t))"
} >"$OUT/build.log" 2>&1
echo "build: exit $? after $(( $(date +%s) - t0 ))s"; head -3 "$OUT/build.log"; tail -2 "$OUT/build.log"

if has tests; then
  timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -m gpu tests/test_gpu_wna16.py -q -p no:cacheprovider \
    --durations=8 ${TEST_K:+-k "$TEST_K"} >"$OUT/gpu_tests.log" 2>&1
  echo "gpu tests: exit $? after $(( $(date +%s) - t0 ))s"
  grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -2
  grep -E "^(FAILED|ERROR)|^E  " "$OUT/gpu_tests.log" | cut -c1-200 | head -40
fi

if has sweep; then
  timeout "${SWEEP_TIMEOUT:-120}" python3 benchmarks/wna16_gemv_sweep.py --out "$OUT" >"$OUT/gemv_sweep.log" 2>&1
  echo "gemv sweep: exit $? after $(( $(date +%s) - t0 ))s"
fi

: >"$OUT/bench.log"
if has bench; then
  python3 -m quantops.bench --schemes "${SCHEMES:-W4A16}" --shapes "${SHAPES:-square-8192,llama3-8b}" --m "$MS" \
    --out "$OUT" --no-compile --warmup-ms 5 --rep-ms 20 --max-seconds "${BENCH_SECONDS:-120}" ${BENCH_ARGS:-} \
    >>"$OUT/bench.log" 2>&1
  echo "bench: exit $? after $(( $(date +%s) - t0 ))s"
fi
if has bench2; then
  mkdir -p "$OUT/b2"
  python3 -m quantops.bench --schemes "${SCHEMES2:-NVFP4A16,MXFP4A16,W8A16,MXFP8A16,W4AFP8,NVFP4}" \
    --shapes "${SHAPES2:-square-8192}" --m "$MS" --out "$OUT/b2" --no-compile --warmup-ms 5 --rep-ms 20 \
    --max-seconds "${BENCH2_SECONDS:-90}" >>"$OUT/bench.log" 2>&1
  echo "bench2: exit $? after $(( $(date +%s) - t0 ))s"
  mv "$OUT/b2/bench.csv" "$OUT/bench2.csv" 2>/dev/null; rm -rf "$OUT/b2"
fi
rm -f "$OUT"/*.png
cut -c1-160 "$OUT/gemv_sweep.log" 2>/dev/null | grep -v "^wrote"
grep -v -E "^    skip|^ *$" "$OUT/bench.log" | cut -c1-170 | tail -110
