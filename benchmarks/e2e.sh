#!/usr/bin/env bash
# End-to-end benchmark (issue 8): a Llama-3-8B-architecture model (random seeded bf16 weights, no download),
# every quantops scheme that has a real kernel on this GPU (backend "quantops") against bf16 and torchao 0.17
# (Inductor), all compiled with mode="reduce-overhead": decode tokens/s at batch 1 and 16 (static KV cache, CUDA
# graphs), prefill tokens/s of a 2048-token prompt, logits error vs bf16. Writes e2e.csv, e2e.md, e2e.png and
# e2e_env.json (GPU, driver, torch and library versions) to $OUT (default: bench_e2e_out).
#
#   benchmarks/e2e.sh                       # the full 32-layer model (16 GB of bf16 weights per variant)
#   benchmarks/e2e.sh --layers 4            # a quick run: reported as 4 of 32 layers, plus projected columns
#   benchmarks/e2e.sh --variants bf16,W4A16,torchao-int4-tinygemm
#
# On the project's GPU machine, .devkit/ (FBGEMM GenAI, FlashInfer, torchao) is installed first when present.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .devkit/env.sh ]; then
  set +u
  source .devkit/env.sh
  set -u
fi
export PYTHONUNBUFFERED=1
out=${OUT:-bench_e2e_out}
mkdir -p "$out"
python3 -m quantops.bench_e2e --out "$out" "$@" 2>&1 | tee "$out/e2e_log.txt"
