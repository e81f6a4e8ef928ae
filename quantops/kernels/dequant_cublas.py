"""Dequantize-then-cuBLAS for large batches: one Triton pass writes the weight in the activation dtype, then
cuBLAS multiplies. At large M the GEMM's arithmetic dwarfs the extra pass over the weight (it reads 0.5-1 and
writes 2 bytes per element), so this stays within a few percent of bf16 F.linear where fused kernels fall
behind cuBLAS. Covers every weight-only format of weight_only_layout.py, act-order read directly, and fp32
activations too.

Needs: CUDA sm_80+ and triton (the dequantize pass). On the CPU it runs under TRITON_INTERPRET=1 (tests).
"""

from __future__ import annotations

from typing import Optional

import torch

from .base import check_all, needs_cuda, needs_library
from .weight_only_layout import WeightOnlyKernel, check_activation, element_bits

try:
    import triton
    import triton.language as tl

    from .triton_wna16 import weight_tile
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

if triton is not None:

    @triton.jit
    def dequantize_weight_kernel(
        w_ptr, s_ptr, z_ptr, g_ptr, out_ptr, N, K, G, stride_wn,
        FMT: tl.constexpr, BITS: tl.constexpr, PER: tl.constexpr, GROUP: tl.constexpr,
        HAS_ZP: tl.constexpr, HAS_GIDX: tl.constexpr, SCALE_ROW: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        k0 = tl.program_id(1) * BLOCK_K
        wt = weight_tile(
            w_ptr, s_ptr, z_ptr, g_ptr, offs_n, k0, N, K, G, stride_wn,
            FMT, BITS, PER, GROUP, HAS_ZP, HAS_GIDX, SCALE_ROW, BLOCK_K, BLOCK_N,
        )  # [BLOCK_K, BLOCK_N]
        kk = k0 + tl.arange(0, BLOCK_K)
        mask = (kk[:, None] < K) & (offs_n[None, :] < N)
        tl.store(out_ptr + offs_n[None, :] * K + kk[:, None], wt.to(out_ptr.dtype.element_ty), mask=mask)


def dequantize(qweight, scales, zeros, g_idx, fmt: int, gs: int, n: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """The weight [N, K] in `dtype` from the common weight-only layout."""
    w = torch.empty((n, k), dtype=dtype, device=qweight.device)
    bits = element_bits(fmt)
    block_n, block_k = 64, 128
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    dequantize_weight_kernel[grid](
        qweight, scales, zeros if zeros is not None else scales, g_idx if g_idx is not None else qweight, w,
        n, k, scales.shape[1], qweight.stride(0),
        FMT=fmt, BITS=bits, PER=32 // bits, GROUP=gs, HAS_ZP=zeros is not None, HAS_GIDX=g_idx is not None,
        SCALE_ROW=g_idx is None and gs % block_k == 0, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
    )
    return w


@torch.library.custom_op("quantops::dequant_cublas_mm", mutates_args=())
def dequant_cublas_mm(
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
    """x [M, K] -> x @ dequantize(W)^T [M, N] in x's dtype."""
    check_activation("dequant_cublas_mm", x, k, qweight, _DTYPES)
    if x.shape[0] == 0:
        return x.new_empty((0, n))
    w = dequantize(qweight, scales, zeros, g_idx, fmt, group_size, n, k, x.dtype)
    return torch.mm(x, w.t())


@dequant_cublas_mm.register_fake
def _(x, qweight, scales, zeros, g_idx, fmt, group_size, n, k):
    return x.new_empty((x.shape[0], n))


class WeightOnlyDequantCublasKernel(WeightOnlyKernel):
    backend = "cublas"
    dtypes = _DTYPES
    op = torch.ops.quantops.dequant_cublas_mm

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (8, 0)), lambda: needs_library("triton"))


__all__ = ["WeightOnlyDequantCublasKernel", "dequant_cublas_mm", "dequantize"]
