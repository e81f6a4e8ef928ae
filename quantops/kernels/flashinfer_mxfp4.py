"""MXFP4 W4A4 on Blackwell through FlashInfer's `mm_fp4(..., block_size=32, use_nvfp4=False, backend="cute-dsl")`.

Written to FlashInfer 0.7.2's API; not yet run on Blackwell hardware (none is reachable from this project).

In FlashInfer 0.7.2 only the cuDNN and CuTe-DSL backends of mm_fp4 take MXFP4; vLLM runs the CuTe-DSL one, and so
do we. Its SM100 kernel (sm100/103/107; the sm120 CuTe-DSL path is NVFP4 only) needs the CuTe DSL
(nvidia-cutlass-dsl), K-major FP4 operands with K a multiple of 32 (every MXFP4 layer) and N a multiple of 8 (the
weight is zero-padded to 32 rows, the output sliced). Scales are E8M0 bytes in the 128x4 layout; there is no
global scale, so alpha is 1. The op is quantops::flashinfer_mm_fp4 (flashinfer_nvfp4.py), shared with NVFP4.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import OK, LinearKernel, check_all, needs_library
from .flashinfer_nvfp4 import flashinfer_mm_fp4  # noqa: F401  (registers quantops::flashinfer_mm_fp4)
from .fp4_layouts import native_scheme_check, check_canonical, fp4_weight_cutlass, needs_sm, quantize_activation_linear


def needs_cute_dsl():
    ok, why = needs_library("cutlass")  # nvidia-cutlass-dsl installs the `cutlass` (CuTe DSL) package
    return OK if ok else (False, f"CuTe DSL (nvidia-cutlass-dsl) missing: {why}")


class FlashInferCuteDslMxfp4Kernel(LinearKernel):
    """MXFP4 W4A4 GEMM: FlashInfer's CuTe-DSL mm_fp4 with E8M0 block-32 scales (sm100/103/107)."""

    backend = "flashinfer"
    families = ("mxfp4",)
    dtypes = (torch.bfloat16, torch.float16)
    activation_quantizer: ClassVar[str] = "torch"  # or "flashinfer" (see FlashInferCutlassNvfp4Kernel)

    @classmethod
    def is_supported(cls, capability):
        return check_all(
            needs_sm(capability, (100, 103, 107), "FlashInfer cute-dsl mm_fp4 (MXFP4)"),
            lambda: needs_library("flashinfer"),
            needs_cute_dsl,
        )

    @classmethod
    def can_implement(cls, config):
        return native_scheme_check(cls.kernel_name(), config.scheme, "mxfp4", 32, "MXFP4 W4A4")

    def prepare(self, tensors):
        cfg = self.config
        check_canonical(tensors, self.scheme, cfg.n, cfg.k, f"{self.kernel_name()}.prepare")
        packed, scale = fp4_weight_cutlass(tensors["weight_packed"], tensors["weight_scale"], cfg.n, cfg.k)
        alpha = torch.ones(1, dtype=torch.float32, device=packed.device)  # MX has no global scale
        return {"weight_packed": packed, "weight_scale": scale, "alpha": alpha}

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        if self.activation_quantizer == "flashinfer":
            xq, xs = torch.ops.quantops.flashinfer_quantize_128x4(x, None, "mxfp4", cfg.k)
        else:
            xq, xs = quantize_activation_linear(x, self.scheme, cfg.k)
        out = torch.ops.quantops.flashinfer_mm_fp4(
            xq, xs, self.activation_quantizer == "flashinfer", prepared["weight_packed"], prepared["weight_scale"],
            prepared["alpha"], cfg.n, "cute-dsl", 32, cfg.dtype,
        )
        return out if bias is None else out + bias
