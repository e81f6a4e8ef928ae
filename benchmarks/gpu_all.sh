#!/usr/bin/env bash
# Every GPU test of the project in one go, the CPU tests on the GPU machine's torch, and the main job compiled
# with CUDA graphs; logs under $OUT.    source .devkit/env.sh; bash benchmarks/gpu_all.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  python3 -c "import quantops.kernels.cuda_ext" && echo "quantops_cuda built"
} >"$OUT/env.log" 2>&1
echo "env+build: $(( $(date +%s) - t0 ))s"; cat "$OUT/env.log" | head -4

timeout "${TEST_TIMEOUT:-400}" python3 -m pytest -m gpu tests -q -rs -p no:cacheprovider --durations=15 \
  >"$OUT/gpu_tests.log" 2>&1
echo "gpu tests: exit $? after $(( $(date +%s) - t0 ))s"
grep -E "passed|failed" "$OUT/gpu_tests.log" | tail -1
grep -E "^(FAILED|ERROR)|^SKIPPED" "$OUT/gpu_tests.log" | cut -c1-220 | head -30

CUDA_VISIBLE_DEVICES= timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_cpu.py \
  tests/test_opcheck.py tests/test_registry.py tests/test_modules.py tests/test_formats.py >"$OUT/cpu_tests_torch211.log" 2>&1
echo "cpu tests on this torch: exit $? after $(( $(date +%s) - t0 ))s"; tail -1 "$OUT/cpu_tests_torch211.log"

timeout 120 python3 -m quantops run --mode reduce-overhead >"$OUT/run.log" 2>&1
echo "quantops run --mode reduce-overhead: exit $? after $(( $(date +%s) - t0 ))s"; tail -12 "$OUT/run.log"
