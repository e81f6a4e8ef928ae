"""MXFP8 W8A8 on FP8 tensor cores without MX hardware (Hopper): e4m3 x e4m3 MMAs 32 deep, each partial product
multiplied by its activation-block and weight-block E8M0 scales and added into an fp32 accumulator -- per-32
promotion, what Blackwell's block-scaled MMA does in hardware. The kernel is the FP8 Triton GEMM's "mx" scaling
(triton_fp8_blockscaled.py: swap-AB tiles, split-K for small M). Activations are quantized to MXFP8 exactly as
the emulation kernel does (plain torch ops, fused by Inductor), so this runs the scheme's own numerics, where the
weight-only kernels keep bf16 activations.

Hardware: FP8 tensor cores, sm90 (tuned and measured on Hopper only; sm100+ ranks FlashInfer's native MX GEMM
first). Layout from prepare: weight [Np, Kp] e4m3, N zero-padded to 128 and K to 128; weight scales as [Kp/128, Np]
int32, each the E8M0 codes of four consecutive 32-blocks of one row (byte j: block 4*k+j), so that a 128-deep K
step reads one 32-bit word per row, coalesced along N. Activations are padded to Kp before quantization (a copy,
only where K is not a multiple of 128).
"""

from __future__ import annotations

import torch

from .base import pad_2d, round_up
from .fp4_layouts import check_canonical, native_scheme_check, quantize_activation_linear
from .triton_fp8_blockscaled import MX_K_ALIGN, N_ALIGN, Fp8TritonGemmKernel, fp8_gemm_op
from .w8a8_prepare import pad_activation_k

# xq [M, Kp] e4m3 with x_scale [M, Kp/32] E8M0 codes; weight [Np, Kp] e4m3 with w_scale [Kp/128, Np] int32 (four
# codes each) -> [M, n]
mxfp8_triton_mm = fp8_gemm_op("mx")


class Mxfp8TritonKernel(Fp8TritonGemmKernel):
    """MXFP8 W8A8 on FP8 tensor cores, scales applied every 32 K (Hopper's stand-in for block-scaled MMA)."""

    families = ("mxfp8",)

    @classmethod
    def can_implement(cls, config):
        return native_scheme_check(cls.kernel_name(), config.scheme, "mxfp8", 32, "MXFP8 W8A8")

    def __init__(self, config):
        super().__init__(config)
        self.np, self.kp = round_up(config.n, N_ALIGN), round_up(config.k, MX_K_ALIGN)

    def prepare(self, tensors):
        cfg = self.config
        check_canonical(tensors, self.scheme, cfg.n, cfg.k, f"{self.kernel_name()}.prepare")
        # padded rows and K blocks: zero weights under code 0 (0.0), so they add nothing
        codes = pad_2d(tensors["weight_scale"].view(torch.uint8), self.np, self.kp // 32)
        return {
            "weight": pad_2d(tensors["weight"], self.np, self.kp),
            "weight_scale": codes.contiguous().view(torch.int32).t().contiguous(),  # little-endian: byte j = block 4k+j
        }

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        xq, xs = quantize_activation_linear(pad_activation_k(x, cfg.k, self.kp), self.scheme, self.kp)
        out = torch.ops.quantops.mxfp8_triton_mm(xq, xs, prepared["weight"], prepared["weight_scale"], cfg.n, cfg.dtype)
        return out if bias is None else out + bias
