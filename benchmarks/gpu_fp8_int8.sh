#!/usr/bin/env bash
# FP8 / INT8 W8A8 on the GPU machine: the GPU tests, then `quantops bench`, logs and CSV under $OUT.
#
#   source .devkit/env.sh; bash benchmarks/gpu_fp8_int8.sh            # from the repo root
#
# Environment: OUT (default ./gpu-out), TEST_TIMEOUT (s, default 300), BENCH_SECONDS (s: no new layer is
# started after it; default 330), SCHEMES, SHAPES, MS (bench arguments). The tests run first because they
# also pay FlashInfer's one-time JIT builds (~80 s + ~25 s on an H200), which the bench then reuses.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SCHEMES=${SCHEMES:-FP8_DYNAMIC,FP8_BLOCK,W8A8,FP8}
SHAPES=${SHAPES:-square-8192,llama3-8b,llama3-70b}
MS=${MS:-1,16,64,128,512,2048,4096}
t0=$(date +%s)
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  python3 -c "import fbgemm_gpu.experimental.gen_ai, flashinfer; print('fbgemm', fbgemm_gpu.__version__, 'flashinfer', flashinfer.__version__)" 2>&1 | tail -1
} 2>&1 | tee "$OUT/env.log"

timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -m gpu tests/test_gpu_fp8_int8.py -q -s -p no:cacheprovider \
  --durations=10 >"$OUT/gpu_tests.log" 2>&1
echo "gpu tests: exit $? after $(( $(date +%s) - t0 ))s"
grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -3
grep -E "^(FAILED|ERROR)" "$OUT/gpu_tests.log" | head -20

python3 -m quantops.bench --schemes "$SCHEMES" --shapes "$SHAPES" --m "$MS" --out "$OUT" \
  --warmup-ms 5 --rep-ms 25 --max-seconds "${BENCH_SECONDS:-330}" >"$OUT/bench.log" 2>&1
echo "bench: exit $? after $(( $(date +%s) - t0 ))s"
sed -n '/^summary/,$p' "$OUT/bench.log"
