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

    from .triton_wna16 import decode_float_codes
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

if triton is not None:

    @triton.jit
    def per_column(v, GROUPING: tl.constexpr, GROUPS: tl.constexpr, GROUP: tl.constexpr):
        """Per-group values [BLOCK_N, GROUPS] -> one per column [BLOCK_N, GROUPS * GROUP] (GROUPING 1); the other
        groupings already broadcast against the tile."""
        if GROUPING == 1:
            v = tl.reshape(tl.broadcast_to(v[:, :, None], (v.shape[0], GROUPS, GROUP)), (v.shape[0], GROUPS * GROUP))
        return v

    @triton.jit
    def dequantize_weight_kernel(
        w_ptr, s_ptr, z_ptr, g_ptr, out_ptr, N, K, G, stride_wn,
        FMT: tl.constexpr, BITS: tl.constexpr, PER: tl.constexpr, GROUP: tl.constexpr, HAS_ZP: tl.constexpr,
        HAS_GIDX: tl.constexpr, GROUPING: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """W[n, k] tile [BLOCK_N, BLOCK_K] in the weight's own row-major order, so that the packed words are read
        and the output written along K in wide, coalesced accesses. GROUPING 0: the tile lies in one group of
        each row (one scale per row); 1: it holds BLOCK_K // GROUP whole groups (scales broadcast over each);
        2: a group index per column (act-order g_idx, or groups that do not tile BLOCK_K)."""
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        k0 = tl.program_id(1) * BLOCK_K
        n_mask = offs_n < N
        kw = k0 // PER + tl.arange(0, BLOCK_K // PER)
        words = tl.load(w_ptr + offs_n[:, None] * stride_wn + kw[None, :],
                        mask=n_mask[:, None] & (kw[None, :] < tl.cdiv(K, PER)), other=0)
        shifts = tl.arange(0, PER) * BITS  # element j of a word sits at bits [j*BITS, (j+1)*BITS)
        codes = tl.reshape((words[:, :, None] >> shifts[None, None, :]) & ((1 << BITS) - 1), (BLOCK_N, BLOCK_K))
        kk = k0 + tl.arange(0, BLOCK_K)
        k_mask = kk < K
        mask = n_mask[:, None] & k_mask[None, :]
        gi = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP if GROUPING == 1 else 1)  # the tile's groups
        if GROUPING == 2:
            grp = tl.load(g_ptr + kk, mask=k_mask, other=0) if HAS_GIDX else kk // GROUP
            at = offs_n[:, None] * G + grp[None, :]
        else:
            at = offs_n[:, None] * G + gi[None, :]
        at_mask = mask if GROUPING == 2 else n_mask[:, None] & (gi[None, :] < G)
        sc = per_column(tl.load(s_ptr + at, mask=at_mask, other=0.0).to(tl.float32), GROUPING, BLOCK_K // GROUP, GROUP)
        if FMT == 0 or FMT == 1:
            zp = 1 << (BITS - 1)  # symmetric ints: codes are stored offset by half the range
            if HAS_ZP:
                zp = per_column(tl.load(z_ptr + at, mask=at_mask, other=0).to(tl.int32), GROUPING, BLOCK_K // GROUP, GROUP)
            vals = (codes - zp).to(tl.float32)
        else:
            vals = decode_float_codes(codes, FMT)
        tl.store(out_ptr + offs_n[:, None] * K + kk[None, :], (vals * sc).to(out_ptr.dtype.element_ty), mask=mask)


def dequantize(qweight, scales, zeros, g_idx, fmt: int, gs: int, n: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """The weight [N, K] in `dtype` from the common weight-only layout."""
    w = torch.empty((n, k), dtype=dtype, device=qweight.device)
    bits = element_bits(fmt)
    block_n, block_k = 32, 128
    if scales.shape[1] == 1:  # per channel: one group spanning every tile
        gs = triton.cdiv(k, block_k) * block_k
    grouping = 2 if g_idx is not None or (gs % block_k and block_k % gs) else 0 if gs % block_k == 0 else 1
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    dequantize_weight_kernel[grid](
        qweight, scales, zeros if zeros is not None else scales, g_idx if g_idx is not None else qweight, w,
        n, k, scales.shape[1], qweight.stride(0),
        FMT=fmt, BITS=bits, PER=32 // bits, GROUP=gs, HAS_ZP=zeros is not None, HAS_GIDX=g_idx is not None,
        GROUPING=grouping, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
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
