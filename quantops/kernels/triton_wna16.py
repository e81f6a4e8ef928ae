"""Weight-only GEMM in Triton over the canonical 4-/8-bit layouts: W4A16 / W4A16_ASYM / W8A16 (groups, channel,
act-order g_idx read directly), W4AFP8 (activations rounded to fp8 first), NVFP4A16 / MXFP4A16 / MXFP8A16, and
NVFP4 / MXFP4 / MXFP8 checkpoints run weight-only on Hopper.

Each program loads a [BLOCK_K / per-word, BLOCK_N] tile of 32-bit words once, expands it to codes with shifts,
decodes and scales in fp32 and feeds bf16/fp16 tensor-core dots (fp32 accumulation). For small M the tile
count is too low to fill the GPU, so K is split over programs (partial sums in fp32, added by one torch sum).
Fixed configurations per M bucket (no autotuning: deterministic, no first-call tuning stalls).

Needs: CUDA sm_80+ and triton. On the CPU it runs under TRITON_INTERPRET=1 (tests), with fp32 dots.
"""

from __future__ import annotations

from typing import Optional

import torch

from .base import check_all, needs_cuda, needs_library
from .triton_common import interpreting, launch_sms
from .weight_only_layout import WeightOnlyKernel, check_activation, element_bits

try:  # triton is optional (absent on some platforms): its absence is a reason from is_supported
    import triton
    import triton.language as tl

    from .triton_common import grouped_tile
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None

_DTYPES = (torch.bfloat16, torch.float16)


if triton is not None:

    @triton.jit
    def decode_float_codes(code, FMT: tl.constexpr):
        """e2m1 (FMT 2) or e4m3 (FMT 3) codes (int32) -> fp32 values, exactly (no exp2 approximation)."""
        if FMT == 2:
            mag = code & 7
            e = mag >> 1
            m = (mag & 1).to(tl.float32)
            pow2 = ((e + 125) << 23).to(tl.float32, bitcast=True)  # 2^(e-2)
            v = tl.where(e == 0, m * 0.5, (2.0 + m) * pow2)
            return tl.where((code & 8) != 0, -v, v)
        else:
            e = (code >> 3) & 15
            m = (code & 7).to(tl.float32)
            pow2 = ((e + 117) << 23).to(tl.float32, bitcast=True)  # 2^(e-10)
            v = tl.where(e == 0, m * 0.001953125, (8.0 + m) * pow2)
            return tl.where((code & 128) != 0, -v, v)

    @triton.jit
    def weight_tile(
        w_ptr, s_ptr, z_ptr, g_ptr, offs_n, k0, N, K, G, stride_wn,
        FMT: tl.constexpr, BITS: tl.constexpr, PER: tl.constexpr, GROUP: tl.constexpr,
        HAS_ZP: tl.constexpr, HAS_GIDX: tl.constexpr, SCALE_ROW: tl.constexpr, BLOCK_K: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """Dequantized weights W[offs_n, k0:k0+BLOCK_K] transposed to [BLOCK_K, BLOCK_N], fp32 (0 outside)."""
        n_mask = offs_n < N
        kw = k0 // PER + tl.arange(0, BLOCK_K // PER)
        words = tl.load(
            w_ptr + offs_n[None, :] * stride_wn + kw[:, None],
            mask=n_mask[None, :] & (kw[:, None] < tl.cdiv(K, PER)),
            other=0,
        )
        shifts = tl.arange(0, PER) * BITS
        codes = (words[:, None, :] >> shifts[None, :, None]) & ((1 << BITS) - 1)
        codes = tl.reshape(codes, (BLOCK_K, BLOCK_N))
        kk = k0 + tl.arange(0, BLOCK_K)
        k_mask = kk < K
        if HAS_GIDX:
            grp = tl.load(g_ptr + kk, mask=k_mask, other=0)
        else:
            grp = kk // GROUP
        if SCALE_ROW:  # one group spans the whole k block
            sc = tl.load(s_ptr + offs_n * G + k0 // GROUP, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            sc = tl.where(k_mask[:, None], sc, 0.0)
        else:
            sc = tl.load(
                s_ptr + offs_n[None, :] * G + grp[:, None], mask=n_mask[None, :] & k_mask[:, None], other=0.0
            ).to(tl.float32)
        if FMT == 0 or FMT == 1:
            if HAS_ZP:
                zp = tl.load(
                    z_ptr + offs_n[None, :] * G + grp[:, None], mask=n_mask[None, :] & k_mask[:, None], other=0
                ).to(tl.int32)
            else:
                zp = 1 << (BITS - 1)
            vals = (codes - zp).to(tl.float32)
        else:
            vals = decode_float_codes(codes, FMT)
        return vals * sc

    @triton.jit
    def weight_only_gemm_kernel(
        x_ptr, w_ptr, s_ptr, z_ptr, g_ptr, out_ptr,
        M, N, K, G, stride_xm, stride_wn, stride_om, stride_split,
        FMT: tl.constexpr, BITS: tl.constexpr, PER: tl.constexpr, GROUP: tl.constexpr,
        HAS_ZP: tl.constexpr, HAS_GIDX: tl.constexpr, SCALE_ROW: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, FP32_DOT: tl.constexpr,
    ):
        pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        pid_k = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_mask = offs_m < M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            xt = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :], mask=m_mask[:, None] & (kk[None, :] < K), other=0.0)
            wt = weight_tile(
                w_ptr, s_ptr, z_ptr, g_ptr, offs_n, k0, N, K, G, stride_wn,
                FMT, BITS, PER, GROUP, HAS_ZP, HAS_GIDX, SCALE_ROW, BLOCK_K, BLOCK_N,
            )
            if FP32_DOT:  # the interpreter's bf16 dot is broken
                acc += tl.dot(xt.to(tl.float32), wt)
            else:
                acc += tl.dot(xt, wt.to(xt.dtype))
        mask = m_mask[:, None] & (offs_n[None, :] < N)
        ptrs = out_ptr + pid_k * stride_split + offs_m[:, None] * stride_om + offs_n[None, :]
        tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def gemm_config(m: int, n: int, k: int, bits: int, sms: int) -> dict:
    """Tile shapes per M bucket, and the K split that gives every SM a program for small M."""
    if interpreting():
        cfg = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=1)
        cfg["SPLIT_K"] = 2 if k >= 64 else 1  # exercise the split path on the CPU too
        return cfg
    if m <= 16:
        cfg = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=3)
    elif m <= 32:
        cfg = dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=4)
    elif m <= 64:
        cfg = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=4)
    elif m <= 128:
        cfg = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4)
    else:
        cfg = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)
    tiles = triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    split = 1
    while split < 16 and tiles * split < sms and k >= cfg["BLOCK_K"] * split * 4:
        split *= 2
    cfg["SPLIT_K"] = split
    return cfg


@torch.library.custom_op("quantops::weight_only_gemm_triton", mutates_args=())
def weight_only_gemm_triton(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    g_idx: Optional[torch.Tensor],
    fmt: int,
    group_size: int,
    n: int,
    k: int,
) -> torch.Tensor:
    """x [M, K] bf16/fp16 -> [M, N] in x's dtype over the common weight-only layout (weight_only_layout.py)."""
    check_activation("weight_only_gemm_triton", x, k, qweight, _DTYPES)
    m = x.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    x = x.contiguous()
    bits = element_bits(fmt)
    cfg = gemm_config(m, n, k, bits, launch_sms(x))
    split = cfg.pop("SPLIT_K")
    target = out if split == 1 else torch.empty((split, m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]), split)
    gs = group_size
    weight_only_gemm_kernel[grid](
        x, qweight, scales, zeros if zeros is not None else scales, g_idx if g_idx is not None else qweight, target,
        m, n, k, scales.shape[1], x.stride(0), qweight.stride(0), n, m * n,
        FMT=fmt, BITS=bits, PER=32 // bits, GROUP=gs, HAS_ZP=zeros is not None, HAS_GIDX=g_idx is not None,
        SCALE_ROW=g_idx is None and gs % cfg["BLOCK_K"] == 0, SPLIT_K=split, GROUP_M=8, FP32_DOT=interpreting(),
        **cfg,
    )
    if split > 1:
        out = target.sum(dim=0).to(x.dtype)
    return out


@weight_only_gemm_triton.register_fake
def _(x, qweight, scales, zeros, g_idx, fmt, group_size, n, k):
    return x.new_empty((x.shape[0], n))


class WeightOnlyGemmTritonKernel(WeightOnlyKernel):
    backend = "triton"
    dtypes = _DTYPES
    op = torch.ops.quantops.weight_only_gemm_triton

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (8, 0)), lambda: needs_library("triton"))


__all__ = ["WeightOnlyGemmTritonKernel", "weight_only_gemm_triton", "decode_float_codes", "weight_tile"]
