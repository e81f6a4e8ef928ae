"""Decode-batch GEMV over 4-/8-bit weights in CUDA C++ (csrc/weight_only_gemv*.cu): W4A16 / W4A16_ASYM /
W8A16 (groups, channel, act-order), W4AFP8 (activations rounded to fp8 first), NVFP4A16 / MXFP4A16 /
MXFP8A16, and NVFP4 / MXFP4 / MXFP8 checkpoints run weight-only on Hopper.

Memory-bound at M <= 16: prepare() stores the weights in tiles of 16 rows x 1024 bytes so that every warp
load is 512 contiguous bytes and each warp streams one contiguous range; lanes dequantize in registers
(magic-number int4/int8 conversion, bit-placed e2m1/e4m3) and feed bf16/fp16 tensor-core MMAs (m16n8k16)
whose 16 rows are weight rows and whose 8 columns are the batch ("swap AB"); group scales of g128 and
per-channel integers (and, for bf16 int4, the zero point) go on the fp32 accumulators. Warps of a block split
K and reduce in shared memory; weights stream through a per-warp cp.async ring in shared memory. One launch
covers M <= 16.

Past 16 rows the same op runs a GEMM over the same tiles (csrc/weight_only_gemm.cuh): a block of 8 warps covers
256 weight rows and stages each x tile (up to 64 rows) once in shared memory for all of them, K split over
blocks with an in-kernel, fixed-order reduction. On Hopper (sm_90) the op runs a wgmma GEMM there instead
(csrc/weight_only_wgmma.cuh): blocks of one warpgroup dequantize 128 weight rows into wgmma's register A operand
for chunks of up to 64 rows of x (staged in shared memory, its k order matched once per call). One prepared copy
of the weights serves all three.

Needs: CUDA sm_80+, the quantops_cuda extension (built from csrc/ on first use; see cuda_ext.py).
"""

from __future__ import annotations

from typing import Optional

import torch

from .base import check_all, needs_cuda, needs_library, pad_2d, round_up
from .weight_only_layout import (
    FMT_FP4,
    FMT_FP8,
    FMT_INT4,
    FMT_INT8,
    WeightOnlyKernel,
    act_order_to_contiguous_groups,
    check_activation,
    element_bits,
    element_format,
    group_size,
    interleave_nibbles,
    prepare_weight_only,
    weight_only_activations,
)

_DTYPES = (torch.bfloat16, torch.float16)
TILE_N = 16  # rows of one tile (the MMA's A rows)


def tile_k(bits: int) -> int:
    """Columns of one 1024-byte tile: 4 lanes x one 16-byte chunk."""
    return 4 * 128 // bits


def tile_weights(words: torch.Tensor, bits: int, n_pad: int, k_pad: int) -> torch.Tensor:
    """int32 [N, K*bits/32] (row-major codes) -> the kernel's tiles, as int32 [n_pad, k_pad*bits/32]: tiles of 16
    rows x tile_k(bits) columns, 1024 bytes each, ordered (band of 16 rows, tile along K); inside a tile, bytes
    [16*l, +16) hold row l//4, chunk l%4 (16 bytes of that row's codes) and bytes [512 + 16*l, +16) row 8 + l//4,
    chunk l%4. Padding is zero codes."""
    padded = pad_2d(words, n_pad, k_pad * bits // 32)
    tiles = padded.view(n_pad // TILE_N, 2, 8, k_pad // tile_k(bits), 4, 4)  # band, half, g, tile, chunk, word
    return tiles.permute(0, 3, 1, 2, 4, 5).contiguous().view(n_pad, k_pad * bits // 32)


def mx_post_factor(codes: torch.Tensor, fmt: int) -> torch.Tensor:
    """The op's `alpha` for MX weights: 2^p, fp32 [1]. The kernels decode e2m1 (e4m3) codes as bf16 bit patterns worth
    the value times 2^-126 (2^-120) and multiply each by 2^(c - 127 + 126 - p) (e8m0 code c; 120 for e4m3), then the
    result by 2^p: p = max(0, max c + 126 - 254) keeps that multiplier a finite bf16 for every block (p = 0 unless a
    block scale exceeds 2 (e2m1) / 128 (e4m3)). NaN codes (255) are left out: they stay NaN. No host sync."""
    shift = 126 if fmt == FMT_FP4 else 120
    finite = codes.masked_fill(codes == 255, 0)
    p = (finite.max().int() + (shift - 254)).clamp(min=0)
    return torch.exp2(p.float()).reshape(1)


@torch.library.custom_op("quantops::weight_only_gemv_cuda", mutates_args=())
def weight_only_gemv_cuda(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    alpha: Optional[torch.Tensor],
    perm: Optional[torch.Tensor],
    fmt: int,
    group_size: int,
    n: int,
    k: int,
) -> torch.Tensor:
    """x [M, K] bf16/fp16 -> [M, N] in x's dtype. qweight/scales/zeros/alpha as WeightOnlyGemvCudaKernel.prepare
    makes them; perm (act-order) gathers x's columns into the weights' column order first."""
    check_activation("weight_only_gemv_cuda", x, k, qweight, _DTYPES if fmt in (FMT_INT4, FMT_INT8) else (torch.bfloat16,))
    if perm is not None:
        x = x.index_select(1, perm)
    x = x.contiguous()
    from . import cuda_ext

    return cuda_ext.extension.weight_only_gemv(
        x, qweight, scales, zeros, alpha, fmt, group_size, n, k, cuda_ext.stream_handle(x)
    )


@weight_only_gemv_cuda.register_fake
def _(x, qweight, scales, zeros, alpha, perm, fmt, group_size, n, k):
    return x.new_empty((x.shape[0], n))


class WeightOnlyGemvCudaKernel(WeightOnlyKernel):
    backend = "cuda"
    dtypes = _DTYPES

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (8, 0)), lambda: needs_library("quantops_cuda"))

    @classmethod
    def can_implement(cls, config):
        ok, why = super().can_implement(config)
        if not ok:
            return ok, why
        scheme, k = config.scheme, config.k
        fmt = element_format(scheme)
        vpc = 128 // element_bits(fmt)  # values in one 16-byte load
        if k % vpc:
            return False, f"K={k} is not a multiple of {vpc} (one 16-byte chunk of weights)"
        gs = group_size(scheme, k)
        if gs % vpc and not (fmt == FMT_FP4 and gs == 16):
            return False, f"group size {gs} is not a multiple of {vpc}"
        if scheme.weight_strategy != "channel" and gs & (gs - 1):
            return False, f"group size {gs} is not a power of two"
        if fmt in (FMT_FP4, FMT_FP8) and config.dtype != torch.bfloat16:
            return False, "FP4/FP8 weights need bf16 activations here (their scales can leave fp16's range)"
        return True, None

    def prepare(self, tensors):
        cfg = self.config
        scale_dtype = cfg.dtype if self.fmt in (FMT_INT4, FMT_INT8) else None
        prepared = prepare_weight_only(tensors, self.scheme, cfg.n, cfg.k, scale_dtype)
        if "g_idx" in prepared:
            prepared = act_order_to_contiguous_groups(prepared, self.scheme, cfg.n, cfg.k)
        bits = element_bits(self.fmt)
        if bits == 4:
            prepared["qweight"] = interleave_nibbles(prepared["qweight"])
        if self.fmt in (FMT_FP4, FMT_FP8):  # scales as stored (1 byte per block), decoded in the kernel
            prepared["scales"] = tensors["weight_scale"].contiguous().view(torch.uint8)
            if self.scheme.weight == "nvfp4":
                prepared["alpha"] = (1.0 / tensors["weight_global_scale"].float()).reshape(1).contiguous()
            else:
                prepared["alpha"] = mx_post_factor(prepared["scales"], self.fmt)
        n_pad, k_pad = round_up(cfg.n, TILE_N), round_up(cfg.k, tile_k(bits))
        prepared["qweight"] = tile_weights(prepared["qweight"], bits, n_pad, k_pad)
        groups = 1 if prepared["scales"].shape[1] == 1 else -(-k_pad // self.group_size)
        for key in ("scales", "zeros"):  # padded rows and groups are zeros: they meet zero weights or zero x
            if key in prepared:
                prepared[key] = pad_2d(prepared[key], n_pad, groups)
        return prepared

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        x = weight_only_activations(x, self.scheme, cfg.k)
        out = torch.ops.quantops.weight_only_gemv_cuda(
            x,
            prepared["qweight"],
            prepared["scales"],
            prepared.get("zeros"),
            prepared.get("alpha"),
            prepared.get("perm"),
            self.fmt,
            self.group_size,
            cfg.n,
            cfg.k,
        )
        return out if bias is None else out + bias


__all__ = ["WeightOnlyGemvCudaKernel", "weight_only_gemv_cuda"]
