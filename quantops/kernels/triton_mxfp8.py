"""MXFP8 W8A8 on FP8 tensor cores without MX hardware (Hopper): e4m3 x e4m3 MMAs 32 deep, each partial product
multiplied by its activation-block and weight-block E8M0 scales and added into an fp32 accumulator -- per-32
promotion, what Blackwell's block-scaled MMA does in hardware. The kernel is the FP8 Triton GEMM's "mx" scaling
(triton_fp8_blockscaled.py: swap-AB tiles, split-K for small M). Activations are quantized to MXFP8 exactly as
the emulation kernel does (plain torch ops, fused by Inductor), so this runs the scheme's own numerics, where the
weight-only kernels keep bf16 activations.

Hardware: FP8 tensor cores, sm90 (tuned and measured on Hopper only; sm100+ ranks FlashInfer's native MX GEMM
first). Layout from prepare: weight [Np, K] e4m3, N zero-padded to 128; weight scales transposed to
[K/32, Np] E8M0 codes so that a K step reads them coalesced along N. K needs no padding (a multiple of 32).
"""

from __future__ import annotations

import torch

from .base import pad_2d, round_up
from .fp4_layouts import check_canonical, native_scheme_check, quantize_activation_linear
from .triton_fp8_blockscaled import N_ALIGN, Fp8TritonGemmKernel, fp8_gemm_op


# xq [M, K] e4m3 with x_scale [M, K/32] E8M0 codes; weight [Np, K] e4m3 with w_scale [K/32, Np] codes -> [M, n]
mxfp8_triton_mm = fp8_gemm_op("mx")


class Mxfp8TritonKernel(Fp8TritonGemmKernel):
    """MXFP8 W8A8 on FP8 tensor cores, scales applied every 32 K (Hopper's stand-in for block-scaled MMA)."""

    families = ("mxfp8",)

    @classmethod
    def can_implement(cls, config):
        return native_scheme_check(cls.kernel_name(), config.scheme, "mxfp8", 32, "MXFP8 W8A8")

    def __init__(self, config):
        super().__init__(config)
        self.np = round_up(config.n, N_ALIGN)

    def prepare(self, tensors):
        cfg = self.config
        check_canonical(tensors, self.scheme, cfg.n, cfg.k, f"{self.kernel_name()}.prepare")
        codes = tensors["weight_scale"].view(torch.uint8)
        return {
            "weight": pad_2d(tensors["weight"], self.np, cfg.k),
            # padded rows: zero weights under code 0 (0.0), so they add nothing; the output is sliced to N anyway
            "weight_scale": pad_2d(codes.t().contiguous(), cfg.k // 32, self.np),
        }

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        xq, xs = quantize_activation_linear(x, self.scheme, cfg.k)
        out = torch.ops.quantops.mxfp8_triton_mm(xq, xs, prepared["weight"], prepared["weight_scale"], cfg.n, cfg.dtype)
        return out if bias is None else out + bias
