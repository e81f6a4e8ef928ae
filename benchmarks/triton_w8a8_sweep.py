"""Tile-config sweep for the Triton W8A8 GEMMs (the ops alone, activations pre-quantized), against bf16
F.linear and the library GEMM of the same scheme. Timing as `quantops bench` (CUDA graph over rotated weight
copies, median of triton's do_bench). Run on the GPU machine:

    python benchmarks/triton_w8a8_sweep.py [--seconds 60]

Each config is (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, GROUP_M, num_warps, num_stages); SPLIT_K "auto" uses
the launcher's rule (about two programs per SM) scaled by a factor.
"""

from __future__ import annotations

import argparse
import time

import torch

from quantops import get_scheme, quantize_weight
from quantops.bench import Options, time_calls
from quantops.formats import quantize_activation
from quantops.kernels import cublas_int8  # noqa: F401  (registers quantops::int8_int_mm)
from quantops.kernels import triton_fp8_blockscaled as tfp8
from quantops.kernels import triton_int8 as tint8
from quantops.kernels.base import LinearConfig

LARGE = {  # M >= 128
    "128x128x128 w8 s4 (default)": (128, 128, 128, 1, 8, 8, 4),
    "128x256x128 w8 s3": (128, 256, 128, 1, 8, 8, 3),
    "256x128x128 w8 s3": (256, 128, 128, 1, 8, 8, 3),
    "128x256x64 w8 s4": (128, 256, 64, 1, 8, 8, 4),
}
DECODE = {  # M <= 16: (bm, bn, bk, split factor, group, warps, stages)
    "16x64x256 s5 split x1 (default)": (16, 64, 256, 1.0, 8, 4, 5),
    "16x128x256 s4 split x1": (16, 128, 256, 1.0, 8, 4, 4),
    "16x64x512 s3 split x1": (16, 64, 512, 1.0, 8, 4, 3),
    "16x64x256 s5 split x0.5": (16, 64, 256, 0.5, 8, 4, 5),
    "16x64x256 s5 split x2": (16, 64, 256, 2.0, 8, 4, 5),
}


def fixed(cfg, decode: bool):
    bm, bn, bk, split, group, warps, stages = cfg

    def config(m, n, kp, *rest):
        sms = rest[-1]
        s = split
        if decode:
            tiles = -(-m // bm) * -(-n // bn)
            s = max(1, min(int(-(-2 * sms * split // tiles)), (kp // bk) // 4, 32))
        return bm, bn, bk, int(s), group, warps, stages

    return config


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=90)
    args = p.parse_args()
    opts = Options(device=torch.device("cuda"), dtype=torch.bfloat16, compile=False, graph_max_m=1 << 30,
                   copies=None, warmup_ms=5, rep_ms=25, include_emulation=False)
    t0 = time.time()
    cases = [("W8A8", 8192, 8192, 4096, LARGE), ("FP8_DYNAMIC", 8192, 8192, 4096, LARGE),
             ("FP8_DYNAMIC", 8192, 8192, 1, DECODE), ("FP8_DYNAMIC", 4096, 14336, 1, DECODE)]
    for scheme_name, n, k, m, configs in cases:
        scheme = get_scheme(scheme_name)
        w = (torch.randn(n, k, device="cuda") / k**0.5).to(torch.bfloat16)
        x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
        t = quantize_weight(w, scheme)
        cfg = LinearConfig(scheme, n, k, torch.bfloat16)
        if scheme.act == "int8":
            kernel, module, op = tint8.Int8TritonKernel(cfg), tint8, torch.ops.quantops.int8_triton_mm
        else:
            from quantops.kernels.triton_fp8 import Fp8TritonKernel

            kernel, module, op = Fp8TritonKernel(cfg), tfp8, torch.ops.quantops.fp8_triton_mm
        copies = max(2, min(8, -(-(256 << 20) // (n * k))))
        prepared = [kernel.prepare({a: b.clone() for a, b in t.items()}) for _ in range(copies)]
        xq, params = quantize_activation(x, scheme, kernel.kp)
        ws = [torch.clone(w) for _ in range(max(2, min(8, -(-(256 << 20) // (2 * n * k)))))]
        bf16, _ = time_calls([lambda wc=wc: torch.nn.functional.linear(x, wc) for wc in ws], m, opts)
        print(f"{scheme_name} N={n} K={k} M={m}: bf16 F.linear {bf16:.1f}us", flush=True)
        if scheme.act == "int8":
            calls = [lambda p=p: op(xq, params[0], None, p["weight"], p["weight_scale"], None, n, torch.bfloat16) for p in prepared]
            lib = [lambda p=p: torch.ops.quantops.int8_int_mm(xq, p["weight"]) for p in prepared]
            lib_name = "torch._int_mm (int32 out, no epilogue)"
        else:
            calls = [lambda p=p: op(xq, params[0], p["weight"], p["weight_scale"], n, torch.bfloat16) for p in prepared]
            lib, lib_name = None, ""
            try:
                from quantops.kernels.fbgemm_fp8 import Fp8RowwiseFbgemmKernel

                fk = Fp8RowwiseFbgemmKernel(cfg)
                fp = [fk.prepare({a: b.clone() for a, b in t.items()}) for _ in range(copies)]
                lib = [lambda p=p: torch.ops.quantops.fbgemm_fp8_rowwise_mm(xq, params[0], p["weight"], p["weight_scale"], n)
                       for p in fp]
                lib_name = "FBGEMM f8f8bf16_rowwise"
            except Exception as e:  # FBGEMM missing: no reference line
                print(f"  (no FBGEMM reference: {type(e).__name__})")
        if lib:
            us, _ = time_calls(lib, m, opts)
            print(f"  {lib_name:40s} {us:8.1f}us {bf16 / us:5.2f}x", flush=True)
        original = module.gemm_config
        try:
            for name, c in configs.items():
                if time.time() - t0 > args.seconds:
                    print("  (time budget reached)")
                    break
                module.gemm_config = fixed(c, configs is DECODE)
                try:
                    us, _ = time_calls(calls, m, opts)
                    print(f"  triton {name:33s} {us:8.1f}us {bf16 / us:5.2f}x", flush=True)
                except Exception as e:
                    print(f"  triton {name:33s} failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
        finally:
            module.gemm_config = original
        del prepared, ws
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
