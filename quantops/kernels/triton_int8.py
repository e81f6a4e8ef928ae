"""INT8 W8A8 GEMM in Triton with the whole epilogue fused: int32 accumulation, the asymmetric-activation
correction, both scales and the cast to the model dtype happen before the single store.

    out[m, n] = (acc[m, n] - zp_x[m] * wsum[n]) * s_x[m] * s_w[n]      acc = sum_k q_x q_w   (exact, int32)

Swap-AB tiles (weight rows on the MMA's large dimension), split-K for small M (fp32 partials of the exact
int32 sums, then one reduction kernel that applies the same epilogue). Compared with `_int_mm` + an
Inductor epilogue it saves the int32 round trip through memory (8 bytes per output element).

Hardware: INT8 tensor cores (sm80+; tuned for Hopper). N and K padded to 256 in prepare.
"""

from __future__ import annotations

import torch

from ..formats import quantize_activation
from .base import LinearKernel, check_all, needs_cuda, needs_library, pad_2d, round_up
from .triton_common import launch_sms
from .w8a8_prepare import check_canonical, pad_activation_k, pad_vector

try:  # Triton is optional: its absence is a reason from is_supported
    import triton
    import triton.language as tl

    from .triton_common import grouped_tile
except ImportError:  # pragma: no cover
    triton = None

N_ALIGN = 256  # the large-M tile spans 256 weight rows; the main loop reads the weight unmasked
K_ALIGN = 256


if triton is not None:

    @triton.jit
    def _int8_gemm_kernel(
        x_ptr, xs_ptr, xzp_ptr, w_ptr, ws_ptr, wsum_ptr, out_ptr,
        M, N, K,
        stride_xm, stride_xs_m, stride_ws_n, stride_wn, stride_om, stride_split,
        ASYMMETRIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        pid_k = tl.program_id(1)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        k_tiles = K // BLOCK_K
        tiles_per_split = tl.cdiv(k_tiles, SPLIT_K)
        k_first = pid_k * tiles_per_split
        k_last = tl.minimum(k_first + tiles_per_split, k_tiles)

        w_ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn + (k_first * BLOCK_K + offs_k)[None, :]
        x_ptrs = x_ptr + offs_m.to(tl.int64)[None, :] * stride_xm + (k_first * BLOCK_K + offs_k)[:, None]
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
        for _ in range(k_first, k_last):
            w = tl.load(w_ptrs)
            x = tl.load(x_ptrs, mask=mask_m[None, :], other=0)
            acc = tl.dot(w, x, acc, out_dtype=tl.int32)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        out = acc.to(tl.float32)
        if SPLIT_K == 1:
            if ASYMMETRIC:
                zp = tl.load(xzp_ptr + offs_m * stride_xs_m, mask=mask_m, other=0).to(tl.float32)
                out -= zp[None, :] * tl.load(wsum_ptr + offs_n)[:, None]
            xs = tl.load(xs_ptr + offs_m * stride_xs_m, mask=mask_m, other=0.0)
            ws = tl.load(ws_ptr + offs_n * stride_ws_n)
            out = out * xs[None, :] * ws[:, None]
        out_ptrs = out_ptr + pid_k * stride_split + offs_m.to(tl.int64)[None, :] * stride_om + offs_n[:, None]
        mask = mask_m[None, :] & (offs_n[:, None] < N)
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _int8_splitk_epilogue_kernel(
        p_ptr, xs_ptr, xzp_ptr, ws_ptr, wsum_ptr, out_ptr, M, N, stride_split, stride_xs_m, stride_ws_n,
        ASYMMETRIC: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M * N
        m = offs // N
        n = offs % N
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in tl.static_range(SPLIT_K):
            acc += tl.load(p_ptr + s * stride_split + offs, mask=mask, other=0.0)
        if ASYMMETRIC:
            zp = tl.load(xzp_ptr + m * stride_xs_m, mask=mask, other=0).to(tl.float32)
            acc -= zp * tl.load(wsum_ptr + n, mask=mask, other=0.0)
        acc *= tl.load(xs_ptr + m * stride_xs_m, mask=mask, other=0.0)
        acc *= tl.load(ws_ptr + n * stride_ws_n, mask=mask, other=0.0)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def gemm_config(m: int, n: int, kp: int, sms: int):
    if m <= 16:
        bm, bn, bk, warps, stages = 16, 64, 256, 4, 5
    elif m <= 32:
        bm, bn, bk, warps, stages = 32, 64, 128, 4, 5
    elif m <= 64:
        bm, bn, bk, warps, stages = 64, 128, 128, 4, 4
    elif m <= 512:
        bm, bn, bk, warps, stages = 128, 128, 128, 8, 4
    else:  # H200, 8192^3 W8A8 GEMM: 556 us with 128x128 tiles, 473 us with 128 tokens x 256 weight rows
        bm, bn, bk, warps, stages = 128, 256, 128, 8, 3
    tiles = -(-m // bm) * -(-n // bn)
    split = 1
    if tiles < sms:
        split = max(1, min(-(-2 * sms // tiles), (kp // bk) // 4, 16))
    return bm, bn, bk, split, 8, warps, stages


@torch.library.custom_op("quantops::int8_triton_mm", mutates_args=())
def int8_triton_mm(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor | None,
    weight: torch.Tensor,
    w_scale: torch.Tensor,
    w_sum: torch.Tensor | None,
    n: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """xq [M, Kp] int8 with x_scale (and x_zero_point, int32) [M, 1] or [1]; weight [Np, Kp] int8 with
    w_scale [Np] or [1] and w_sum [Np] (fp32, for the zero-point correction) -> [M, n] out_dtype."""
    m, kp = xq.shape
    out = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    if m == 0:
        return out
    xq, x_scale, w_scale = xq.contiguous(), x_scale.contiguous(), w_scale.contiguous()
    bm, bn, bk, split, group_m, warps, stages = gemm_config(m, n, kp, launch_sms(xq))
    asym = x_zero_point is not None
    zp = x_zero_point.contiguous() if asym else x_scale  # an unused pointer when symmetric
    wsum = w_sum if asym else w_scale
    stride_xs_m = 0 if x_scale.numel() == 1 else 1
    stride_ws_n = 0 if w_scale.numel() == 1 else 1
    target = out if split == 1 else torch.empty((split, m, n), dtype=torch.float32, device=xq.device)
    _int8_gemm_kernel[(-(-m // bm) * -(-n // bn), split)](
        xq, x_scale, zp, weight, w_scale, wsum, target, m, n, kp,
        xq.stride(0), stride_xs_m, stride_ws_n, weight.stride(0), n, m * n,
        ASYMMETRIC=asym, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, GROUP_M=group_m,
        num_warps=warps, num_stages=stages,
    )
    if split > 1:
        block = 1024
        _int8_splitk_epilogue_kernel[(-(-m * n // block),)](
            target, x_scale, zp, w_scale, wsum, out, m, n, m * n, stride_xs_m, stride_ws_n,
            ASYMMETRIC=asym, SPLIT_K=split, BLOCK=block, num_warps=4,
        )
    return out


@int8_triton_mm.register_fake
def _(xq, x_scale, x_zero_point, weight, w_scale, w_sum, n, out_dtype):
    return xq.new_empty((xq.shape[0], n), dtype=out_dtype)


class Int8TritonKernel(LinearKernel):
    """INT8 per-channel (or per-tensor) weights x per-token or static int8 activations, symmetric or
    asymmetric, Triton GEMM with the scales and zero-point correction in its epilogue."""

    backend = "triton"
    families = ("int8",)
    dtypes = (torch.bfloat16, torch.float16, torch.float32)

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (8, 0)), lambda: needs_library("triton"))

    @classmethod
    def can_implement(cls, config):
        s = config.scheme
        if s.weight_strategy not in ("channel", "tensor") or s.act_strategy not in ("token", "tensor"):
            return False, f"per-channel/per-tensor weights with per-token/per-tensor activations only, not {s.key()}"
        return True, None

    def __init__(self, config):
        super().__init__(config)
        self.np, self.kp = round_up(config.n, N_ALIGN), round_up(config.k, K_ALIGN)

    def prepare(self, tensors):
        s = self.scheme
        static = [] if s.act_dynamic else ["input_scale"] + ([] if s.act_symmetric else ["input_zero_point"])
        check_canonical(self.kernel_name(), self.config, tensors, ["weight", "weight_scale"] + static)
        w = tensors["weight"]
        ws = tensors["weight_scale"].float().reshape(-1)
        out = {
            "weight": pad_2d(w, self.np, self.kp),
            "weight_scale": ws.clone() if ws.numel() == 1 else pad_vector(ws, self.np),
        }
        if not s.act_symmetric:
            out["weight_sum"] = pad_vector(w.float().sum(dim=1), self.np, value=0.0)
        for name in static:
            out[name] = tensors[name].float() if name == "input_scale" else tensors[name].clone()
        return out

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        x = pad_activation_k(x, cfg.k, self.kp)
        xq, params = quantize_activation(x, self.scheme, self.kp, prepared)
        zp = params[1] if len(params) == 2 else None
        out = torch.ops.quantops.int8_triton_mm(
            xq, params[0], zp, prepared["weight"], prepared["weight_scale"], prepared.get("weight_sum"), cfg.n, cfg.dtype)
        return out if bias is None else out + bias
