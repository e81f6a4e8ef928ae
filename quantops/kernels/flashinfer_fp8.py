"""FP8 W8A8 on FlashInfer (imported lazily; its kernels JIT-build on first use, ~25 s and ~80 s on an H200).

- `bmm_fp8` (backend "cublas"; on Hopper `mm_fp8` offers the same cuBLAS/cuDNN runners): per-tensor
  activation x per-tensor weight scales, as device tensors.
- `fp8_blockscale_gemm_sm90`: 1x128 activation groups x 128x128 weight blocks, TensorRT-LLM's DeepGEMM
  kernels (JIT-compiled per shape through NVRTC), with a swap-AB kernel below M = 32. Its activation
  scales are read M-major through TMA: a [K/128, round_up(M, 4)] fp32 buffer (the layout its own 1x128
  quantizer writes), not the [M, K/128] its docstring shows. Wants K % 128 == 0 and N % 64 == 0
  (padded in prepare); writes bf16.

Hardware: bmm_fp8's cuBLAS runner sm89+; fp8_blockscale_gemm_sm90 Hopper only.
"""

from __future__ import annotations

import functools

import torch

from ..formats import quantize_activation
from .base import LinearKernel, check_all, needs_cuda, needs_library, pad_2d, round_up
from .w8a8_prepare import check_canonical, pad_activation_k


@functools.cache
def _bmm_fp8():
    from flashinfer import bmm_fp8

    return bmm_fp8


@functools.cache
def _fp8_blockscale_gemm_sm90():
    from flashinfer.gemm import fp8_blockscale_gemm_sm90

    return fp8_blockscale_gemm_sm90


def _slice_n(out: torch.Tensor, n: int) -> torch.Tensor:
    return out if out.shape[1] == n else out[:, :n].contiguous()


# ---------------------------------------------------------------------------------------------------
# per-tensor


@torch.library.custom_op("quantops::flashinfer_fp8_bmm", mutates_args=())
def flashinfer_fp8_bmm(
    xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, n: int, out_dtype: torch.dtype
) -> torch.Tensor:
    """xq [M, Kp] e4m3, weight [Np, Kp] e4m3 (column-major B once transposed), scales [1] fp32 -> [M, n]."""
    m = xq.shape[0]
    if m == 0:
        return xq.new_empty((0, n), dtype=out_dtype)
    out = _bmm_fp8()(xq.unsqueeze(0), weight.t().unsqueeze(0), x_scale, w_scale, out_dtype, backend="cublas")
    return _slice_n(out[0], n)


@flashinfer_fp8_bmm.register_fake
def _(xq, x_scale, weight, w_scale, n, out_dtype):
    return xq.new_empty((xq.shape[0], n), dtype=out_dtype)


class Fp8FlashInferKernel(LinearKernel):
    """FP8 per-tensor weights x per-tensor (static or dynamic) activations on FlashInfer's bmm_fp8."""

    backend = "flashinfer"
    families = ("fp8",)
    dtypes = (torch.bfloat16, torch.float16)

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (9, 0)), lambda: needs_library("flashinfer"))

    @classmethod
    def can_implement(cls, config):
        s = config.scheme
        if s.weight_strategy != "tensor" or s.act_strategy != "tensor":
            return False, "per-tensor weight and activation scales only (bmm_fp8 takes one scale each)"
        return True, None

    def __init__(self, config):
        super().__init__(config)
        self.np, self.kp = round_up(config.n, 16), round_up(config.k, 16)

    def prepare(self, tensors):
        names = ["weight", "weight_scale"] + ([] if self.scheme.act_dynamic else ["input_scale"])
        check_canonical(self.kernel_name(), self.config, tensors, names)
        out = {
            "weight": pad_2d(tensors["weight"], self.np, self.kp),
            "weight_scale": tensors["weight_scale"].float().reshape(1).clone(),
        }
        if not self.scheme.act_dynamic:
            out["input_scale"] = tensors["input_scale"].float().reshape(1).clone()
        return out

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        x = pad_activation_k(x, cfg.k, self.kp)
        xq, (xs,) = quantize_activation(x, self.scheme, self.kp, prepared)
        out = torch.ops.quantops.flashinfer_fp8_bmm(xq, xs, prepared["weight"], prepared["weight_scale"], cfg.n, cfg.dtype)
        return out if bias is None else out + bias


# ---------------------------------------------------------------------------------------------------
# block-scaled (1x128 x 128x128)


@torch.library.custom_op("quantops::flashinfer_fp8_blockscale_mm", mutates_args=())
def flashinfer_fp8_blockscale_mm(
    xq: torch.Tensor, x_scale_t: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, n: int
) -> torch.Tensor:
    """xq [M, Kp] e4m3 with x_scale_t [Kp/128, M]; weight [Np, Kp] e4m3 with w_scale [Np/128, Kp/128]
    -> bf16 [M, n]."""
    m = xq.shape[0]
    if m == 0:
        return xq.new_empty((0, n), dtype=torch.bfloat16)
    x_scale_t = x_scale_t.contiguous()
    mp = round_up(m, 4)
    if mp != m:  # the kernels' TMA reads scale rows of round_up(M, 4) floats
        x_scale_t = torch.nn.functional.pad(x_scale_t, (0, mp - m), value=1.0)
    out = _fp8_blockscale_gemm_sm90()(xq, weight, x_scale_t, w_scale, out_dtype=torch.bfloat16)
    return _slice_n(out, n)


@flashinfer_fp8_blockscale_mm.register_fake
def _(xq, x_scale_t, weight, w_scale, n):
    return xq.new_empty((xq.shape[0], n), dtype=torch.bfloat16)


class Fp8BlockScaledFlashInferKernel(LinearKernel):
    """FP8 128x128 weight blocks x 1x128 activation groups on FlashInfer's fp8_blockscale_gemm_sm90
    (DeepGEMM; swap-AB below M = 32)."""

    backend = "flashinfer"
    families = ("fp8",)
    dtypes = (torch.bfloat16,)

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (9, 0), (9, 0)), lambda: needs_library("flashinfer"))

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
        self.np, self.kp = round_up(config.n, 64), round_up(config.k, 128)

    def prepare(self, tensors):
        check_canonical(self.kernel_name(), self.config, tensors, ["weight", "weight_scale"])
        return {
            "weight": pad_2d(tensors["weight"], self.np, self.kp),
            "weight_scale": tensors["weight_scale"].float().contiguous(),
        }

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        x = pad_activation_k(x, cfg.k, self.kp)
        xq, (xs,) = quantize_activation(x, self.scheme, self.kp)
        out = torch.ops.quantops.flashinfer_fp8_blockscale_mm(
            xq, xs.t().contiguous(), prepared["weight"], prepared["weight_scale"], cfg.n)
        return out if bias is None else out + bias
