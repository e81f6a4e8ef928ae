"""One shape of the CUDA weight-only op, launched a few times for a profiler (ncu), nothing else:

    ncu --kernel-name regex:weight_only --launch-skip 2 --launch-count 1 --section SpeedOfLight \
        python benchmarks/weight_only_profile.py --scheme W4A16 --n 8192 --k 8192 --m 64 --path 1
"""

from __future__ import annotations

import argparse
import math

import torch

from quantops import get_scheme, quantize_weight
from quantops.kernels import cuda_ext
from quantops.kernels.base import LinearConfig
from quantops.kernels.cuda_wna16 import WeightOnlyGemvCudaKernel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--scheme", default="W4A16")
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--k", type=int, default=8192)
    p.add_argument("--m", type=int, default=64)
    p.add_argument("--path", type=int, default=-1, help="-1 the op's choice, 0 GEMV, 1 GEMM")
    p.add_argument("--ksplit", type=int, default=0)
    p.add_argument("--launches", type=int, default=4)
    a = p.parse_args()
    scheme = get_scheme(a.scheme)
    w = torch.randn(a.n, a.k, device="cuda") / math.sqrt(a.k)
    kernel = WeightOnlyGemvCudaKernel(LinearConfig(scheme, a.n, a.k, torch.bfloat16))
    pp = kernel.prepare(quantize_weight(w, scheme))
    x = torch.randn(a.m, a.k, device="cuda", dtype=torch.bfloat16)
    for _ in range(a.launches):
        cuda_ext.extension.weight_only_gemv(
            x, pp["qweight"], pp["scales"], pp.get("zeros"), pp.get("alpha"), kernel.fmt, kernel.group_size, a.n, a.k,
            cuda_ext.stream_handle(x), a.ksplit, a.path,
        )
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
