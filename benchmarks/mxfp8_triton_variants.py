"""Experiment: why is the MX scaling of the FP8 Triton GEMM slow on Hopper, and what fixes it.

V0 is the shipped kernel (launch_fp8_gemm, scaling "mx": BLOCK_K = 32, one uint8 scale code per weight row and per
token each step). V1 takes 128 of K per step as four 32-deep MMAs, with the four codes of a row packed into one
int32 (weight codes [K/128, Np] int32, activation codes [M, K/128] int32 = a free view of [M, K/32] uint8), so
that every load in the loop is at least 32 bits wide. Timed with triton.testing.do_bench (median), against the
epilogue-scaled FP8 GEMM (the same kernel without promotion) and bf16 torch.matmul on the same shape.

    python benchmarks/mxfp8_triton_variants.py [--out DIR]        (GPU; TRITON_INTERPRET=1 on the CPU: tiny check)
"""

from __future__ import annotations

import argparse
import csv
import os

import torch
import triton
import triton.language as tl

from quantops.kernels.triton_common import grouped_tile
from quantops.kernels.triton_fp8_blockscaled import launch_fp8_gemm


@triton.jit
def _mx_v1_kernel(x_ptr, xs_ptr, w_ptr, ws_ptr, out_ptr, M, N, K, stride_xm, stride_xs_m, stride_wn, stride_ws_k,
                  stride_om, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, 32)
    mask_m = offs_m < M
    w_ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]
    x_ptrs = x_ptr + offs_m.to(tl.int64)[None, :] * stride_xm + offs_k[:, None]
    ws_ptrs = ws_ptr + offs_n
    xs_ptrs = xs_ptr + offs_m * stride_xs_m
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for _ in range(0, K // 128):
        wsp = tl.load(ws_ptrs)
        xsp = tl.load(xs_ptrs, mask=mask_m, other=0)
        for j in tl.static_range(4):
            w = tl.load(w_ptrs + 32 * j)
            x = tl.load(x_ptrs + 32 * j, mask=mask_m[None, :], other=0.0)
            ws = (((wsp >> (8 * j)) & 0xFF) << 23).to(tl.float32, bitcast=True)
            xs = (((xsp >> (8 * j)) & 0xFF) << 23).to(tl.float32, bitcast=True)
            acc += tl.dot(w, x) * (ws[:, None] * xs[None, :])
        w_ptrs += 128
        x_ptrs += 128
        ws_ptrs += stride_ws_k
        xs_ptrs += 1
    out_ptrs = out_ptr + offs_m.to(tl.int64)[None, :] * stride_om + offs_n[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[None, :] & (offs_n[:, None] < N))


def launch_v1(xq, xs_codes, w, ws_packed, n, out_dtype, bm, bn, warps, stages):
    m, k = xq.shape
    xs_packed = xs_codes.view(torch.int32)  # [M, K/128]: byte j of word kb is block 4*kb + j (little-endian)
    out = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    h = _mx_v1_kernel[grid](xq, xs_packed, w, ws_packed, out, m, n, k, xq.stride(0), xs_packed.stride(0), w.stride(0),
                            ws_packed.stride(0), n, BLOCK_M=bm, BLOCK_N=bn, GROUP_M=8, num_warps=warps,
                            num_stages=stages)
    return out, h


def operands(m, n, k, device):
    g = torch.Generator().manual_seed(0)
    xq = (torch.randn(m, k, generator=g) * 8).to(torch.float8_e4m3fn)
    w = (torch.randn(n, k, generator=g) * 8).to(torch.float8_e4m3fn)
    xs = torch.randint(120, 134, (m, k // 32), generator=g, dtype=torch.uint8)
    ws = torch.randint(115, 125, (n, k // 32), generator=g, dtype=torch.uint8)
    ref = None
    if m * n * k <= 2**28:
        dx = xq.float() * torch.exp2(xs.float() - 127).repeat_interleave(32, 1)
        dw = w.float() * torch.exp2(ws.float() - 127).repeat_interleave(32, 1)
        ref = dx @ dw.t()
    to = dict(device=device)
    return (xq.to(**to), xs.to(**to), w.to(**to), ws.t().contiguous().to(**to),
            ws.view(torch.int32).t().contiguous().to(**to), ref)


def rel(a, b):
    return ((a.float().cpu() - b).norm() / b.norm()).item()


def ir_stats(handle):
    """Loads in the kernel's TTGIR that became async copies vs plain loads (Hopper pipelining)."""
    if handle is None or not hasattr(handle, "asm") or "ttgir" not in handle.asm:
        return ""
    ir = handle.asm["ttgir"]
    return (f"async_copy={ir.count('async_copy_global_to_local')} tma={ir.count('async_tma_copy')} "
            f"tt.load={ir.count('tt.load')} wgmma={ir.count('warp_group_dot')} wait={ir.count('warp_group_dot_wait')}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    device = "cpu" if interp else "cuda"
    if interp:  # correctness of V1 in the interpreter, tiny shapes
        for m, n, k in [(5, 64, 256), (33, 128, 384)]:
            xq, xs, w, ws_t, ws_p, ref = operands(m, n, k, device)
            out, _ = launch_v1(xq, xs, w, ws_p, n, torch.float32, 16, 64, 4, 2)
            print(f"interp V1 m={m} n={n} k={k} rel={rel(out, ref):.2e}")
            assert rel(out, ref) < 1e-5
        return
    rows = []
    shapes = [(8192, 8192), (28672, 4096)]
    configs = [(64, 128, 4, 4), (128, 128, 8, 3), (128, 128, 8, 4), (64, 128, 4, 6), (128, 64, 4, 4)]
    for n, k in shapes:
        for m in (16, 128, 512, 2048, 4096):
            xq, xs, w, ws_t, ws_p, ref = operands(m, n, k, device)
            a = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            b = torch.randn(n, k, device=device, dtype=torch.bfloat16)
            t_bf16 = triton.testing.do_bench(lambda: a @ b.t(), warmup=10, rep=50)
            base = launch_fp8_gemm(xq, xs, w, ws_t, n, torch.bfloat16, "mx")
            t_v0 = triton.testing.do_bench(lambda: launch_fp8_gemm(xq, xs, w, ws_t, n, torch.bfloat16, "mx"), warmup=10, rep=50)
            one = torch.ones(1, device=device)
            t_epi = triton.testing.do_bench(lambda: launch_fp8_gemm(xq, one, w, one, n, torch.bfloat16, "epilogue"), warmup=10, rep=50)
            row = dict(n=n, k=k, m=m, bf16_us=t_bf16 * 1e3, v0_us=t_v0 * 1e3, fp8_epilogue_us=t_epi * 1e3)
            print(f"n={n} k={k} m={m}: bf16 {row['bf16_us']:.1f} us, V0 {row['v0_us']:.1f}, fp8 epilogue {row['fp8_epilogue_us']:.1f}"
                  + (f", V0 rel vs fp32 {rel(base, ref):.1e}" if ref is not None else ""), flush=True)
            for bm, bn, warps, stages in configs:
                if m <= 16 and bm > 64:
                    continue
                try:
                    out, h = launch_v1(xq, xs, w, ws_p, n, torch.bfloat16, bm, bn, warps, stages)
                    t = triton.testing.do_bench(lambda: launch_v1(xq, xs, w, ws_p, n, torch.bfloat16, bm, bn, warps, stages), warmup=10, rep=50)
                    err = rel(out, base.float().cpu())
                    row[f"v1_{bm}x{bn}w{warps}s{stages}_us"] = t * 1e3
                    print(f"   V1 {bm}x{bn} w{warps} s{stages}: {t * 1e3:.1f} us ({t_bf16 / t:.2f}x bf16) rel vs V0 {err:.1e} {ir_stats(h)}", flush=True)
                except Exception as e:  # noqa: BLE001 (an experiment: report and go on)
                    print(f"   V1 {bm}x{bn} w{warps} s{stages}: {type(e).__name__}: {str(e)[:200]}", flush=True)
            rows.append(row)
    # the shipped kernel's IR, for the pipelining question
    xq, xs, w, ws_t, ws_p, _ = operands(512, 8192, 8192, device)
    from quantops.kernels import triton_fp8_blockscaled as mod
    cache = mod._fp8_gemm_kernel.device_caches[torch.cuda.current_device()][0] if hasattr(mod._fp8_gemm_kernel, "device_caches") else {}
    for key, h in list(cache.items())[:8]:
        print("V0 compiled variant:", ir_stats(h))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        keys = sorted({k for r in rows for k in r}, key=lambda s: (s not in ("n", "k", "m"), s))
        with open(os.path.join(args.out, "mxfp8_variants.csv"), "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=keys)
            wr.writeheader()
            wr.writerows(rows)


if __name__ == "__main__":
    main()
