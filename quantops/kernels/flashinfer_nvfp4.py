"""NVFP4 W4A4 on Blackwell through FlashInfer's `mm_fp4`: backends "cutlass", "trtllm" and "cudnn".

Written to FlashInfer 0.7.2's API; not yet run on Blackwell hardware (none is reachable from this project).

`mm_fp4(a, b, a_descale, b_descale, alpha, out_dtype, block_size=16, use_nvfp4=True, backend=...)` takes
a = activation FP4 bytes [M, K/2], b = the weight's bytes *transposed*, i.e. a column-major [K/2, N] view of the
row-major [N, K/2] weight, the activation scales in the 128x4 layout [ceil(M/128)*128, ceil(K/16/4)*4] and the
weight's likewise, transposed. alpha = 1 / (input_global_scale * weight_global_scale) (fp32 [1]): FlashInfer's
global scales are compressed-tensors' multipliers, so the product of the two dequantizations is x·w·alpha.
Output bf16/fp16 [M, N]; trtllm only bf16.

Per backend, the weight layout `prepare()` produces (quantops.kernels.fp4_layouts):
- cutlass, cudnn: N and K zero-padded to multiples of 32, scales swizzled 128x4; the output is sliced to N.
- trtllm: N padded to 128, K to 32, weight rows and scale rows shuffled in blocks of 32 (FlashInfer's
  shuffle_matrix_a / shuffle_matrix_sf_a with epilogue tile 128), scales then swizzled; scales passed as e4m3.
Activations are quantized by quantops.formats' NVFP4 quantizer (plain torch: Inductor fuses it with the producer,
and it matches emulation bit for bit); the 128x4 swizzle, which pads M, runs inside the op.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import OK, LinearKernel, check_all, needs_library
from .fp4_layouts import (
    CUTLASS_FP4_ALIGN,
    native_scheme_check,
    check_canonical,
    fp4_weight_cutlass,
    fp4_weight_trtllm,
    needs_sm,
    quantize_activation_linear,
    round_up,
    swizzle_128x4,
)

E4M3 = torch.float8_e4m3fn


@torch.library.custom_op("quantops::flashinfer_mm_fp4", mutates_args=())
def flashinfer_mm_fp4(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    x_scale_swizzled: bool,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    alpha: torch.Tensor,
    n: int,
    backend: str,
    block_size: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """FP4 x FP4 -> [M, n] with FlashInfer's mm_fp4 (NVFP4 block 16, or MXFP4 block 32).

    xq [M, K'/2] uint8; x_scale [M, K/block] (canonical layout) or already 128x4-swizzled; weight [N', K'/2]
    uint8 row-major and weight_scale [ceil(N/128)*128, ceil(K/block/4)*4] as prepare() made them (N' >= n)."""
    m = xq.shape[0]
    if m == 0:  # nothing to launch; FlashInfer's tuner does not take empty problems
        return xq.new_empty((0, n), dtype=out_dtype)
    from flashinfer import mm_fp4

    sf = x_scale if x_scale_swizzled else swizzle_128x4(x_scale)
    # trtllm reads e4m3 scale tensors; cutlass, cudnn and cute-dsl take the same bytes as uint8
    sf_dtype = E4M3 if backend == "trtllm" else torch.uint8
    out = mm_fp4(
        xq,
        weight.t(),
        sf.view(sf_dtype),
        weight_scale.view(sf_dtype).t(),
        alpha,
        out_dtype,
        block_size=block_size,
        use_nvfp4=block_size == 16,
        backend=backend,
    )
    return out if out.shape[1] == n else out[:, :n].contiguous()


@flashinfer_mm_fp4.register_fake
def _(xq, x_scale, x_scale_swizzled, weight, weight_scale, alpha, n, backend, block_size, out_dtype):
    return xq.new_empty((xq.shape[0], n), dtype=out_dtype)


class _FlashInferNvfp4Kernel(LinearKernel):
    """One FlashInfer mm_fp4 backend for NVFP4 W4A4 (subclasses name the backend and where it is built)."""

    backend = "flashinfer"
    families = ("nvfp4",)
    dtypes = (torch.bfloat16, torch.float16)  # mm_fp4 writes bf16/fp16 only
    mm_backend: ClassVar[str] = "?"
    supported_sm: ClassVar[tuple[int, ...]] = ()
    # "torch": quantops.formats' quantizer (fused by Inductor, bit-exact with emulation); "flashinfer": its fused
    # CUDA quantizer (one launch in eager mode; scales may differ from emulation in the last bit).
    activation_quantizer: ClassVar[str] = "torch"

    @classmethod
    def is_supported(cls, capability):
        return check_all(
            needs_sm(capability, cls.supported_sm, f"FlashInfer {cls.mm_backend} mm_fp4"),
            lambda: needs_library("flashinfer"),
        )

    @classmethod
    def can_implement(cls, config):
        return native_scheme_check(cls.kernel_name(), config.scheme, "nvfp4", 16, "NVFP4 W4A4")

    def _weight_layout(self, packed, scale, n, k):
        packed, scale = fp4_weight_cutlass(packed, scale, n, k)
        return packed, scale.view(torch.uint8)

    def prepare(self, tensors):
        cfg = self.config
        check_canonical(tensors, self.scheme, cfg.n, cfg.k, f"{self.kernel_name()}.prepare")
        packed, scale = self._weight_layout(tensors["weight_packed"], tensors["weight_scale"], cfg.n, cfg.k)
        igs = tensors["input_global_scale"].float().reshape(1)
        alpha = 1.0 / (igs * tensors["weight_global_scale"].float().reshape(1))
        return {"weight_packed": packed, "weight_scale": scale, "input_global_scale": igs, "alpha": alpha}

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        k_padded = round_up(cfg.k, CUTLASS_FP4_ALIGN)
        if self.activation_quantizer == "flashinfer":
            xq, xs = torch.ops.quantops.flashinfer_quantize_128x4(x, prepared["input_global_scale"], "nvfp4", k_padded)
        else:
            xq, xs = quantize_activation_linear(x, self.scheme, cfg.k, prepared["input_global_scale"])
            if k_padded != cfg.k:  # the weight's K padding, as zero FP4 codes (static: recorded as a plain pad)
                xq = F.pad(xq, (0, (k_padded - cfg.k) // 2))
        out = torch.ops.quantops.flashinfer_mm_fp4(
            xq, xs, self.activation_quantizer == "flashinfer", prepared["weight_packed"], prepared["weight_scale"],
            prepared["alpha"], cfg.n, self.mm_backend, 16, cfg.dtype,
        )
        return out if bias is None else out + bias


class FlashInferCutlassNvfp4Kernel(_FlashInferNvfp4Kernel):
    """NVFP4 W4A4 GEMM: FlashInfer's CUTLASS mm_fp4 (sm100/103/107/110/120/121)."""

    mm_backend = "cutlass"
    supported_sm = (100, 103, 107, 110, 120, 121)


class FlashInferTrtllmNvfp4Kernel(_FlashInferNvfp4Kernel):
    """NVFP4 W4A4 GEMM: FlashInfer's TensorRT-LLM-gen mm_fp4 (sm100/103/107 only; bf16 output)."""

    mm_backend = "trtllm"
    supported_sm = (100, 103, 107)
    dtypes = (torch.bfloat16,)

    def _weight_layout(self, packed, scale, n, k):
        packed, scale = fp4_weight_trtllm(packed, scale, n, k)
        return packed, scale.view(E4M3)


class FlashInferCudnnNvfp4Kernel(_FlashInferNvfp4Kernel):
    """NVFP4 W4A4 GEMM: FlashInfer's cuDNN mm_fp4 (sm100/103/107/110/120/121; needs nvidia-cudnn-frontend)."""

    mm_backend = "cudnn"
    supported_sm = (100, 103, 107, 110, 120, 121)

    @classmethod
    def is_supported(cls, capability):
        return check_all(super().is_supported(capability), needs_cudnn_frontend)


def needs_cudnn_frontend():
    # FlashInfer's cuDNN GEMMs go through the cuDNN frontend's Python graph API (module `cudnn`)
    ok, why = needs_library("cudnn")
    return OK if ok else (False, f"cuDNN frontend (nvidia-cudnn-frontend) missing: {why}")
