"""The CUDA weight-only kernels on the GPU: time each path of the op -- the GEMV (16 rows of x per launch, warps
splitting K), the GEMM (x shared by a block, K split over blocks) and, on sm_90, the wgmma GEMM -- for each launch
shape against bf16 F.linear, and report bytes moved per microsecond against the measured copy bandwidth.

    [SWEEP_MS=16,32,64] [SWEEP_PATHS=0,1,2] [SWEEP_SPLITS=0,1,2,4,8] python benchmarks/wna16_gemv_sweep.py [--out DIR]

Protocol as `quantops bench`: CUDA graphs over weight copies rotated so that no call finds its weight in L2,
median of triton.testing.do_bench. Bytes = packed weights + scales (+ zeros) + x + out, each once.
"""

from __future__ import annotations

import argparse
import math
import os

import torch

from quantops import get_scheme, quantize_weight
from quantops.kernels import cuda_ext
from quantops.bench import copy_bandwidth, graph_time, write_dict_csv
from quantops.kernels.base import LinearConfig
from quantops.kernels.cuda_wna16 import WeightOnlyGemvCudaKernel

SHAPES = [(8192, 8192), (6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]
EXTRA = ["NVFP4A16", "MXFP4A16", "W8A16", "MXFP8A16", "W4A16_ASYM"]  # on 8192x8192 only
MS = [int(m) for m in os.environ.get("SWEEP_MS", "1,4,8,16,32,64,128,256").split(",")]
# GEMV: warps per block splitting K; GEMM: blocks splitting K (0: the launcher's choice)
SPLITS = [int(s) for s in os.environ.get("SWEEP_SPLITS", "0,1,2,4,8").split(",")]
GEMV, GEMM, WGMMA = 0, 1, 2
PATH_NAMES = {GEMV: "gemv", GEMM: "gemm", WGMMA: "wgmma"}
PATHS = [int(p) for p in os.environ.get("SWEEP_PATHS", "0,1,2").split(",")]  # a subset, for a quicker run
FLUSH = 256 << 20


def configs(name: str, n: int, k: int, m: int) -> list[tuple[int, int]]:
    """(path, ksplit) to time: the GEMV up to 16 rows (32 to see the crossing), the GEMM from 8, on sm_90 the wgmma
    GEMM from 8; every split on the W4A16 shapes, the launcher's choice for the other formats."""
    every = name == "W4A16"
    splits = SPLITS if every else [0]
    out = [(GEMV, ks) for ks in splits if m <= 32 and GEMV in PATHS]
    out += [(GEMM, ks) for ks in splits if m >= 8 and GEMM in PATHS]
    if torch.cuda.get_device_capability() == (9, 0):
        out += [(WGMMA, ks) for ks in splits if m >= 8 and WGMMA in PATHS]
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    bw = copy_bandwidth(torch.device("cuda"))
    print(f"copy bandwidth: {bw:.2f} TB/s (read + write)")
    ext = cuda_ext.extension
    rows = []
    cases = [("W4A16", s) for s in SHAPES] + [(name, SHAPES[0]) for name in EXTRA]
    for name, (n, k) in cases:
        scheme = get_scheme(name)
        w = torch.randn(n, k, device="cuda") / math.sqrt(k)
        tensors = quantize_weight(w, scheme)
        kernel = WeightOnlyGemvCudaKernel(LinearConfig(scheme, n, k, torch.bfloat16))
        prepared = kernel.prepare(tensors)
        wbytes = sum(t.numel() * t.element_size() for key, t in prepared.items() if key != "perm")
        copies = max(2, min(16, math.ceil(FLUSH / wbytes)))
        preps = [{key: t.clone() for key, t in prepared.items()} for _ in range(copies)]
        wbf = w.to(torch.bfloat16)
        bf_copies = [wbf.clone() for _ in range(max(2, min(8, math.ceil(FLUSH / (wbf.numel() * 2)))))]
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            bf16_us = graph_time([lambda wc=wc: torch.nn.functional.linear(x, wc) for wc in bf_copies])
            moved = wbytes + x.numel() * 2 + m * n * 2
            best = None
            for path, ks in configs(name, n, k, m):
                calls = [
                    lambda pp=pp, ks=ks, path=path: ext.weight_only_gemv(
                        x, pp["qweight"], pp["scales"], pp.get("zeros"), pp.get("alpha"), kernel.fmt, kernel.group_size, n, k,
                        cuda_ext.stream_handle(x), ks, path,
                    )
                    for pp in preps
                ]
                us = graph_time(calls)
                row = dict(scheme=name, n=n, k=k, m=m, path=PATH_NAMES[path], ksplit=ks,
                           us=round(us, 2), bf16_us=round(bf16_us, 2), ratio=round(bf16_us / us, 2),
                           gbps=round(moved / us / 1e3, 1), pct_copy_bw=round(100 * moved / us / 1e6 / bw, 1))
                rows.append(row)
                if best is None or us < best["us"]:
                    best = row
            autos = [r for r in rows if (r["scheme"], r["n"], r["k"], r["m"], r["ksplit"]) == (name, n, k, m, 0)]
            line = " | ".join(f"{r['path']} {r['us']:6.1f}us {r['ratio']:4.2f}x ({r['pct_copy_bw']:4.1f}% copy)" for r in autos)
            print(f"{name:10s} {n:5d}x{k:<5d} M={m:<3d} bf16 {bf16_us:7.1f}us | {line} | best {best['path']} "
                  f"ks={best['ksplit']:<2d} {best['us']:6.1f}us {best['ratio']:4.2f}x", flush=True)
        del preps, bf_copies
        torch.cuda.empty_cache()
    path = os.path.join(args.out, "gemv_sweep.csv")
    write_dict_csv(rows, path)
    print("wrote", path)


if __name__ == "__main__":
    main()
