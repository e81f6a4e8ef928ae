"""NVFP4 W4A4 on Blackwell through FBGEMM GenAI's CUTLASS `f4f4bf16`.

Written to FBGEMM GenAI 1.6.0's op; not yet run on Blackwell hardware (none is reachable from this project).

Schema in 1.6.0: `fbgemm::f4f4bf16(XQ, WQ, x_scale, w_scale, output=None, global_scale=None) -> bf16 [M, N]`.
XQ [M, K/2] and WQ [N, K/2] are row-major FP4 bytes (the weight is *not* transposed); the scales are the flat
128x4-swizzled e4m3 buffers viewed as uint8; NVFP4 is selected by passing `global_scale` (fp32, read on the
device as alpha = 1 / (input_global_scale * weight_global_scale)) — without it the op runs MXFP4. Pass it by
keyword: older releases had `use_mx` where 1.6.0 has `output`. The CUTLASS kernels are sm100 (ArchTag Sm100, shipped
as sm_100a code) with 32-element alignment of A/B, so N and K are zero-padded to multiples of 32 and the output sliced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LinearKernel, check_all, needs_library, round_up
from .fp4_layouts import native_scheme_check, CUTLASS_FP4_ALIGN, check_canonical, fp4_weight_cutlass, needs_sm, quantize_activation_linear
from .fp4_layouts import swizzle_128x4


@torch.library.custom_op("quantops::fbgemm_nvfp4_mm", mutates_args=())
def fbgemm_nvfp4_mm(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    n: int,
) -> torch.Tensor:
    """xq [M, K'/2] uint8, x_scale [M, K/16] e4m3 (canonical layout), weight [N', K'/2] uint8, weight_scale the
    flat uint8 128x4 buffer, alpha fp32 [1] -> bf16 [M, n]."""
    if xq.shape[0] == 0:
        return xq.new_empty((0, n), dtype=torch.bfloat16)
    x_sf = swizzle_128x4(x_scale).reshape(-1).view(torch.uint8)
    out = torch.ops.fbgemm.f4f4bf16(xq, weight, x_sf, weight_scale, global_scale=alpha)
    return out if out.shape[1] == n else out[:, :n].contiguous()


@fbgemm_nvfp4_mm.register_fake
def _(xq, x_scale, weight, weight_scale, alpha, n):
    return xq.new_empty((xq.shape[0], n), dtype=torch.bfloat16)


class FbgemmNvfp4Kernel(LinearKernel):
    """NVFP4 W4A4 GEMM: FBGEMM GenAI's CUTLASS f4f4bf16 (sm100; bf16 output)."""

    backend = "fbgemm"
    families = ("nvfp4",)
    dtypes = (torch.bfloat16,)  # f4f4bf16 writes bf16 only

    @classmethod
    def is_supported(cls, capability):
        # the 1.6.0 wheel carries its Blackwell CUTLASS kernels as sm_100a code: arch-specific, so sm100 only
        return check_all(needs_sm(capability, (100,), "FBGEMM GenAI 1.6.0 f4f4bf16"), lambda: needs_library("fbgemm"))

    @classmethod
    def can_implement(cls, config):
        return native_scheme_check(cls.kernel_name(), config.scheme, "nvfp4", 16, "NVFP4 W4A4")

    def prepare(self, tensors):
        cfg = self.config
        check_canonical(tensors, self.scheme, cfg.n, cfg.k, f"{self.kernel_name()}.prepare")
        packed, scale = fp4_weight_cutlass(tensors["weight_packed"], tensors["weight_scale"], cfg.n, cfg.k)
        igs = tensors["input_global_scale"].float().reshape(1)
        alpha = 1.0 / (igs * tensors["weight_global_scale"].float().reshape(1))
        # FBGEMM takes the scale buffer flat, as bytes
        return {
            "weight_packed": packed,
            "weight_scale": scale.reshape(-1).view(torch.uint8),
            "input_global_scale": igs,
            "alpha": alpha,
        }

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        xq, xs = quantize_activation_linear(x, self.scheme, cfg.k, prepared["input_global_scale"])
        k_padded = round_up(cfg.k, CUTLASS_FP4_ALIGN)
        if k_padded != cfg.k:
            xq = F.pad(xq, (0, (k_padded - cfg.k) // 2))
        out = torch.ops.quantops.fbgemm_nvfp4_mm(
            xq, xs, prepared["weight_packed"], prepared["weight_scale"], prepared["alpha"], cfg.n
        )
        return out if bias is None else out + bias
