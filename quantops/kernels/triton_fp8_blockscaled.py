"""FP8 W8A8 GEMM in Triton: 128x128 weight blocks x 1x128 activation groups (DeepSeek-style), and, through
the same launcher, per-tensor / per-channel weights x per-tensor / per-token activations (triton_fp8.py) and
MXFP8's 1x32 E8M0 blocks on both operands (triton_mxfp8.py).

Swap-AB tiling: a program computes out^T tiles [BLOCK_N, BLOCK_M], so the weight rows fill the MMA's large
dimension and a decode batch (M = 1..16) only pads the small one. Block scaling multiplies each 128-deep
partial product by its weight-block and activation-group scales (promotion into the fp32 accumulator every
128 K, as DeepGEMM does); MX scaling does the same every 32 K (a 128-deep step is four 32-deep MMAs, the two E8M0
codes of each decoded by a shift into fp32's exponent); epilogue scaling applies per-row / per-column scales once at
the end. Small M splits K across programs (fp32 partials, then one reduction kernel that also applies epilogue
scales).

Hardware: FP8 tensor cores, sm89+ (tuned for Hopper). Layout: N padded to 128 and K to 256 (128 for MX) in prepare
(so the main loop has no masks on the weight); activations are padded along K before quantization.
"""

from __future__ import annotations

import torch

from ..formats import quantize_activation
from .base import LinearKernel, check_all, needs_cuda, needs_library, pad_2d, round_up
from .triton_common import launch_sms
from .w8a8_prepare import check_canonical, pad_activation_k

try:  # Triton is optional (absent on some platforms): its absence is a reason from is_supported
    import triton
    import triton.language as tl

    from .triton_common import grouped_tile
except ImportError:  # pragma: no cover
    triton = None

N_ALIGN = 128  # one weight-scale block per BLOCK_N <= 128 tile
K_ALIGN = 256  # every BLOCK_K (128 or 256) divides the padded K
MX_BLOCK = 32  # MX scaling: one MMA per 32-deep block, four per 128-deep step
MX_K_ALIGN = 128  # MX scale codes are read packed four to an int32 (a 128-deep step): K is padded to 128
SCALINGS = ("epilogue", "block", "mx")


if triton is not None:

    @triton.jit
    def _fp8_gemm_kernel(
        x_ptr, xs_ptr, w_ptr, ws_ptr, out_ptr,
        M, N, K,
        stride_xm, stride_xs_m, stride_xs_k, stride_wn, stride_ws_n, stride_ws_k, stride_om, stride_split,
        SCALING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        SUB_K: tl.constexpr, SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        pid_k = tl.program_id(1)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, SUB_K)  # one MMA's depth: BLOCK_K, or the MX block (BLOCK_K // SUB_K MMAs per step)
        mask_m = offs_m < M
        k_tiles = K // BLOCK_K
        tiles_per_split = tl.cdiv(k_tiles, SPLIT_K)
        k_first = pid_k * tiles_per_split
        k_last = tl.minimum(k_first + tiles_per_split, k_tiles)

        w_ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn + (k_first * BLOCK_K + offs_k)[None, :]
        x_ptrs = x_ptr + offs_m.to(tl.int64)[None, :] * stride_xm + (k_first * BLOCK_K + offs_k)[:, None]
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        if SCALING != 0:  # promotion: each K step's partial product times its scales, added in fp32
            if SCALING == 1:
                # BLOCK_K == 128 == the group size; BLOCK_N <= 128 divides 128: one weight scale per tile and step
                ws_ptrs = ws_ptr + ((pid_n * BLOCK_N) // 128) * stride_ws_n + k_first * stride_ws_k
            else:
                # BLOCK_K == 128: four MX blocks, their codes packed in one int32 (byte j: block j of the step), so
                # every load is 32 bits wide and the pipeliner makes it an async copy (uint8 loads of 1-byte codes
                # every 32 K ran 1.6-1.9x slower, H200). Weight [Kp/128, Np] (coalesced along N), activation [M, Kp/128]
                ws_ptrs = ws_ptr + offs_n * stride_ws_n + k_first * stride_ws_k
            xs_ptrs = xs_ptr + offs_m * stride_xs_m + k_first * stride_xs_k
            for _ in range(k_first, k_last):
                if SCALING == 1:
                    w = tl.load(w_ptrs)
                    x = tl.load(x_ptrs, mask=mask_m[None, :], other=0.0)
                    ws = tl.load(ws_ptrs)
                    xs = tl.load(xs_ptrs, mask=mask_m, other=0)
                    acc += tl.dot(w, x) * (xs[None, :] * ws)
                else:
                    ws = tl.load(ws_ptrs)
                    xs = tl.load(xs_ptrs, mask=mask_m, other=0)
                    for j in tl.static_range(BLOCK_K // SUB_K):
                        w = tl.load(w_ptrs + j * SUB_K)
                        x = tl.load(x_ptrs + j * SUB_K, mask=mask_m[None, :], other=0.0)
                        # code << 23 is 2^(code-127) as an fp32 bit pattern (code 0, a zero block, decodes to 0.0)
                        wj = (((ws >> (8 * j)) & 0xFF) << 23).to(tl.float32, bitcast=True)
                        xj = (((xs >> (8 * j)) & 0xFF) << 23).to(tl.float32, bitcast=True)
                        acc += tl.dot(w, x) * (wj[:, None] * xj[None, :])
                w_ptrs += BLOCK_K
                x_ptrs += BLOCK_K
                ws_ptrs += stride_ws_k
                xs_ptrs += stride_xs_k
        else:
            for _ in range(k_first, k_last):
                w = tl.load(w_ptrs)
                x = tl.load(x_ptrs, mask=mask_m[None, :], other=0.0)
                acc = tl.dot(w, x, acc)
                w_ptrs += BLOCK_K
                x_ptrs += BLOCK_K
            if SPLIT_K == 1:  # per-token (or per-tensor: stride 0) x per-channel (or per-tensor) scales
                xs = tl.load(xs_ptr + offs_m * stride_xs_m, mask=mask_m, other=0.0)
                ws = tl.load(ws_ptr + offs_n * stride_ws_n)
                acc = acc * xs[None, :] * ws[:, None]

        out_ptrs = out_ptr + pid_k * stride_split + offs_m.to(tl.int64)[None, :] * stride_om + offs_n[:, None]
        mask = mask_m[None, :] & (offs_n[:, None] < N)
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _splitk_reduce_kernel(
        p_ptr, xs_ptr, ws_ptr, out_ptr, M, N, stride_split, stride_xs_m, stride_ws_n,
        SPLIT_K: tl.constexpr, APPLY_SCALES: tl.constexpr, BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M * N
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in tl.static_range(SPLIT_K):
            acc += tl.load(p_ptr + s * stride_split + offs, mask=mask, other=0.0)
        if APPLY_SCALES:
            m = offs // N
            n = offs % N
            acc *= tl.load(xs_ptr + m * stride_xs_m, mask=mask, other=0.0)
            acc *= tl.load(ws_ptr + n * stride_ws_n, mask=mask, other=0.0)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def gemm_config(m: int, n: int, kp: int, scaling: str, sms: int):
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, GROUP_M, num_warps, num_stages) for this problem."""
    block_scaled = scaling != "epilogue"
    if scaling == "mx":
        # H200, 8192^2 and 28672x4096, M = 128..4096: 64 tokens x 128 weight rows with one warpgroup beat 128x128
        # with two by 1.4-1.9x (the second tile of fp32 partial products the promotion needs costs registers)
        bm, bn, warps, stages = (16, 64, 4, 4) if m <= 16 else (32, 64, 4, 4) if m <= 32 else (64, 128, 4, 4)
        bk = 128
    elif m <= 16:  # decode: weight streaming; deep pipelines of thin tiles, split K to fill the machine
        bm, bn, bk, warps, stages = 16, 64, 128 if block_scaled else 256, 4, 5
    elif m <= 32:
        bm, bn, bk, warps, stages = 32, 64, 128, 4, 5
    elif m <= 64:
        bm, bn, bk, warps, stages = 64, 128, 128, 4, 4
    elif m <= 512 or block_scaled:
        bm, bn, bk, warps, stages = 128, 128, 128, 8, 4
    else:  # H200, 8192^3 FP8_DYNAMIC GEMM: 426 us with 128x128 tiles, 384 us with 256 tokens x 128 weight rows
        bm, bn, bk, warps, stages = 256, 128, 128, 8, 3
    tiles = -(-m // bm) * -(-n // bn)
    k_tiles = kp // bk
    split = 1
    if tiles < sms:  # fill the machine, at least 4 K steps per program
        # programs per SM: one for the epilogue-scaled GEMM (H200, M=1: 23.8 -> 23.1 us at 8192^2, 21.9 -> 20.8 us
        # at 4096x14336 against two), two for the block-scaled one (not re-measured)
        per_sm = 2 if block_scaled else 1
        split = max(1, min(-(-per_sm * sms // tiles), k_tiles // 4, 16))
    return bm, bn, bk, split, 8, warps, stages


def check_operands(xq, x_scale, weight, w_scale, n: int, scaling: str) -> None:
    """Clear errors before any launch: the kernel reads whole weight tiles and K steps without masks. (On every call,
    so the messages are only built on failure.)"""

    def fail(what: str):
        raise ValueError(f"FP8 Triton GEMM ({scaling} scaling): {what}")

    f8 = torch.float8_e4m3fn
    if xq.dim() != 2 or weight.dim() != 2 or xq.dtype != f8 or weight.dtype != f8:
        fail(f"activation and weight must be 2-D e4m3, got {tuple(xq.shape)} {xq.dtype} and {tuple(weight.shape)} "
             f"{weight.dtype}")
    (m, kp), (np_, kw) = xq.shape, weight.shape
    step = MX_K_ALIGN if scaling == "mx" else K_ALIGN
    if kw != kp or kp % step or np_ % N_ALIGN or not 0 < n <= np_ or weight.stride(1) != 1:
        fail(f"weight must be [Np, Kp] with Np a multiple of {N_ALIGN} and >= n={n}, Kp the activation's K and a "
             f"multiple of {step}, unit stride along K; got activation {tuple(xq.shape)}, weight {tuple(weight.shape)} "
             f"strides {weight.stride()}")
    want = {"block": (((m, kp // 128), torch.float32), ((np_ // 128, kp // 128), torch.float32)),
            "mx": (((m, kp // MX_BLOCK), torch.uint8), ((kp // MX_K_ALIGN, np_), torch.int32))}.get(scaling)
    if want is None:  # epilogue: one scale, or one per token / per weight row
        ok = x_scale.numel() in (1, m) and w_scale.numel() in (1, np_) and x_scale.dtype == w_scale.dtype == torch.float32
    else:
        ok = all(tuple(t.shape) == shape and t.dtype == dtype for t, (shape, dtype) in zip((x_scale, w_scale), want))
    if not ok:
        expected = (f"x_scale [1] or [{m}, 1], w_scale [1] or [{np_}], float32" if want is None
                    else f"x_scale {want[0][0]} and w_scale {want[1][0]} {want[0][1]}")
        fail(f"expected {expected}; got x_scale {tuple(x_scale.shape)} {x_scale.dtype}, w_scale "
             f"{tuple(w_scale.shape)} {w_scale.dtype}")
    if len({xq.device, x_scale.device, weight.device, w_scale.device}) != 1:
        fail("operands on different devices")


def launch_fp8_gemm(xq, x_scale, weight, w_scale, n: int, out_dtype, scaling: str):
    """xq [M, Kp] e4m3 x weight [Np, Kp] e4m3 -> [M, n] out_dtype.

    scaling "block": x_scale [M, Kp/128], w_scale [Np/128, Kp/128] fp32. "mx": x_scale [M, Kp/32] E8M0 codes (uint8)
    and w_scale [Kp/128, Np] int32, the codes of four consecutive K blocks packed in each (byte j: block 4*k+j;
    Kp a multiple of 128). "epilogue": x_scale [M, 1] or [1] and w_scale [Np] or [1] (one element:
    per-tensor, read with stride 0)."""
    check_operands(xq, x_scale, weight, w_scale, n, scaling)
    block_scaled = scaling != "epilogue"
    m, kp = xq.shape
    out = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    if m == 0:
        return out
    xq = xq.contiguous()  # no-op for the quantizer's output; the kernel assumes unit stride along K
    bm, bn, bk, split, group_m, warps, stages = gemm_config(m, n, kp, scaling, launch_sms(xq))
    if scaling == "block":
        (stride_xs_m, stride_xs_k), (stride_ws_n, stride_ws_k) = x_scale.stride(), w_scale.stride()
    elif scaling == "mx":  # the activation's codes read four at a time: [M, Kp/32] uint8 as [M, Kp/128] int32
        x_scale = x_scale.contiguous().view(torch.int32)
        (stride_xs_m, stride_xs_k), (stride_ws_k, stride_ws_n) = x_scale.stride(), w_scale.stride()
    else:
        x_scale, w_scale = x_scale.contiguous(), w_scale.contiguous()
        stride_xs_m, stride_xs_k = (0 if x_scale.numel() == 1 else 1), 0
        stride_ws_n, stride_ws_k = (0 if w_scale.numel() == 1 else 1), 0
    target = out if split == 1 else torch.empty((split, m, n), dtype=torch.float32, device=xq.device)
    grid = (-(-m // bm) * -(-n // bn), split)
    _fp8_gemm_kernel[grid](
        xq, x_scale, weight, w_scale, target, m, n, kp,
        xq.stride(0), stride_xs_m, stride_xs_k, weight.stride(0), stride_ws_n, stride_ws_k, n, m * n,
        SCALING=SCALINGS.index(scaling), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SUB_K=MX_BLOCK if scaling == "mx" else bk,
        SPLIT_K=split, GROUP_M=group_m,
        num_warps=warps, num_stages=stages,
    )
    if split > 1:
        block = 1024
        _splitk_reduce_kernel[(-(-m * n // block),)](
            target, x_scale, w_scale, out, m, n, m * n, stride_xs_m, stride_ws_n,
            SPLIT_K=split, APPLY_SCALES=not block_scaled, BLOCK=block, num_warps=4,
        )
    return out


def fp8_gemm_op(scaling: str):
    """quantops::<name>: the launcher for one scaling as a torch.library op -- xq [M, Kp] e4m3, x_scale, weight
    [Np, Kp] e4m3, w_scale (as launch_fp8_gemm documents per scaling), n, out_dtype -> [M, n]."""
    name = {"epilogue": "fp8_triton_mm", "block": "fp8_blockscaled_triton_mm", "mx": "mxfp8_triton_mm"}[scaling]

    @torch.library.custom_op(f"quantops::{name}", mutates_args=())
    def op(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, n: int,
           out_dtype: torch.dtype) -> torch.Tensor:
        return launch_fp8_gemm(xq, x_scale, weight, w_scale, n, out_dtype, scaling)

    @op.register_fake
    def _(xq, x_scale, weight, w_scale, n, out_dtype):
        return xq.new_empty((xq.shape[0], n), dtype=out_dtype)

    return op


fp8_blockscaled_triton_mm = fp8_gemm_op("block")


class Fp8TritonGemmKernel(LinearKernel):
    """What the kernels over this launcher share: Triton on FP8 tensor cores, tuned on Hopper."""

    backend = "triton"
    dtypes = (torch.bfloat16, torch.float16, torch.float32)

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (9, 0)), lambda: needs_library("triton"))


class Fp8BlockScaledTritonKernel(Fp8TritonGemmKernel):
    """FP8 128x128 weight blocks x 1x128 activation groups, Triton (swap-AB tiles, split-K for decode)."""

    families = ("fp8",)

    @classmethod
    def can_implement(cls, config):
        s = config.scheme
        if s.weight_strategy != "block" or tuple(s.block_size) != (128, 128):
            return False, "128x128 weight blocks only"
        if s.act_strategy != "group" or s.act_group_size != 128 or not s.act_dynamic:
            return False, "dynamic 1x128 activation groups only"
        return True, None

    def __init__(self, config):
        super().__init__(config)
        self.np, self.kp = round_up(config.n, N_ALIGN), round_up(config.k, K_ALIGN)

    def prepare(self, tensors):
        check_canonical(self.kernel_name(), self.config, tensors, ["weight", "weight_scale"])
        ws = tensors["weight_scale"].float()
        return {
            "weight": pad_2d(tensors["weight"], self.np, self.kp),
            # padded K blocks multiply zero weights and zero activations: any finite scale will do
            "weight_scale": pad_2d(ws, self.np // 128, self.kp // 128).contiguous(),
        }

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        x = pad_activation_k(x, cfg.k, self.kp)
        xq, (xs,) = quantize_activation(x, self.scheme, self.kp)
        out = torch.ops.quantops.fp8_blockscaled_triton_mm(
            xq, xs, prepared["weight"], prepared["weight_scale"], cfg.n, cfg.dtype)
        return out if bias is None else out + bias
