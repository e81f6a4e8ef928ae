"""MXFP8 W8A8 on Blackwell through FlashInfer's CUTLASS `mm_mxfp8`.

Written to FlashInfer 0.7.2's API; not yet run on Blackwell hardware (none is reachable from this project).

`mm_mxfp8(a, b, a_descale, b_descale, out_dtype=..., backend="cutlass")`: a = e4m3 [M, K], b = the e4m3 weight
*transposed* (a column-major [K, N] view of the row-major [N, K] weight), both scales E8M0 bytes as *flat*
128x4-swizzled buffers (lengths ceil(M/128)*128 * ceil(K/32/4)*4 and the same for N); no alpha (MX has no global
scale); output bf16/fp16. FlashInfer refuses N < 128 or K < 128 (the output "may contain NaN/Inf"), which
can_implement reports; like vLLM we pad M to a multiple of 128 (zero rows) and slice the output back; N is
zero-padded to a multiple of 32 (sm120's CUTLASS path requires it), the output sliced.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import OK, LinearKernel, check_all, needs_library, pad_2d, round_up
from .fp4_layouts import native_scheme_check, SF_ROWS, check_canonical, mxfp8_weight_cutlass, needs_sm, quantize_activation_linear
from .fp4_layouts import swizzle_128x4

MIN_N = 128
MIN_K = 128


@torch.library.custom_op("quantops::flashinfer_mm_mxfp8", mutates_args=())
def flashinfer_mm_mxfp8(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    x_scale_swizzled: bool,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    n: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """xq e4m3 [M, K]; x_scale uint8 [M, K/32] (canonical) or already swizzled; weight e4m3 [N', K]; weight_scale
    the flat uint8 128x4 buffer from prepare() -> [M, n] in out_dtype."""
    m, k = xq.shape
    if m == 0:
        return xq.new_empty((0, n), dtype=out_dtype)
    from flashinfer import mm_mxfp8

    m_padded = round_up(m, SF_ROWS)
    sf = x_scale if x_scale_swizzled else swizzle_128x4(x_scale)  # already ceil(M/128)*128 rows
    out = mm_mxfp8(
        pad_2d(xq, m_padded, k).contiguous(),
        weight.t(),
        sf.reshape(-1).view(torch.uint8),
        weight_scale,
        out_dtype=out_dtype,
        backend="cutlass",
    )
    if out.shape == (m, n):
        return out
    return out[:m, :n].contiguous()


@flashinfer_mm_mxfp8.register_fake
def _(xq, x_scale, x_scale_swizzled, weight, weight_scale, n, out_dtype):
    return xq.new_empty((xq.shape[0], n), dtype=out_dtype)


class FlashInferCutlassMxfp8Kernel(LinearKernel):
    """MXFP8 W8A8 GEMM: FlashInfer's CUTLASS mm_mxfp8 (sm100/103/107/110/120/121), N >= 128 and K >= 128."""

    backend = "flashinfer"
    families = ("mxfp8",)
    dtypes = (torch.bfloat16, torch.float16)
    activation_quantizer: ClassVar[str] = "torch"  # or "flashinfer" (see FlashInferCutlassNvfp4Kernel)

    @classmethod
    def is_supported(cls, capability):
        return check_all(
            needs_sm(capability, (100, 103, 107, 110, 120, 121), "FlashInfer cutlass mm_mxfp8"),
            lambda: needs_library("flashinfer"),
        )

    @classmethod
    def can_implement(cls, config):
        ok = native_scheme_check(cls.kernel_name(), config.scheme, "mxfp8", 32, "MXFP8 W8A8")
        if not ok[0]:
            return ok
        if config.k < MIN_K:
            return False, f"mm_mxfp8 needs K >= {MIN_K} (smaller K may give NaN/Inf), got K={config.k}"
        if config.n < MIN_N:
            return False, f"mm_mxfp8 needs N >= {MIN_N} (smaller N may give NaN/Inf), got N={config.n}"
        return OK

    def prepare(self, tensors):
        cfg = self.config
        check_canonical(tensors, self.scheme, cfg.n, cfg.k, f"{self.kernel_name()}.prepare")
        weight, scale = mxfp8_weight_cutlass(tensors["weight"], tensors["weight_scale"], cfg.n, cfg.k)
        return {"weight": weight, "weight_scale": scale}

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        if self.activation_quantizer == "flashinfer":
            xq, xs = torch.ops.quantops.flashinfer_quantize_128x4(x, None, "mxfp8", cfg.k)
        else:
            xq, xs = quantize_activation_linear(x, self.scheme, cfg.k)
        out = torch.ops.quantops.flashinfer_mm_mxfp8(
            xq, xs, self.activation_quantizer == "flashinfer", prepared["weight"], prepared["weight_scale"], cfg.n,
            cfg.dtype,
        )
        return out if bias is None else out + bias
