"""FBGEMM GenAI's CUTLASS mixed-input GEMMs over int4 weights (Hopper), ranked alternatives:
- `bf16i4bf16_rowwise`: W4A16 / W4A16_ASYM, bf16 activations;
- `f8i4bf16_rowwise`: W4AFP8, activations quantized per token to fp8 (quantops.formats.activations, plain
  torch) and multiplied on fp8 tensor cores.

FBGEMM dequantizes w = q * scale + zero with q the signed nibble: our stored codes (q + 8) become two's
complement by flipping each nibble's top bit (byte ^ 0x88); zero = -zero_point * scale (0 when symmetric).
Scales and zeros are [K/g, N]. Byte layout (even element in the low nibble) is the same as ours.

Needs: CUDA sm_90, fbgemm_gpu GenAI (imported lazily), groups (no act-order), N and K multiples of 8 / 128.
"""

from __future__ import annotations

import functools

import torch

from ..formats.activations import quantize_activation
from ..formats.pack_quantized import unpack_zero_point
from .base import LinearKernel, check_all, needs_cuda, needs_library
from .weight_only_layout import check_activation


@functools.lru_cache(maxsize=None)
def _load_fbgemm() -> None:
    import fbgemm_gpu.experimental.gen_ai  # noqa: F401  (registers torch.ops.fbgemm.*)


def fbgemm_int4_operands(tensors, scheme, n, k, scale_dtype):
    wq = (tensors["weight_packed"].contiguous().view(torch.uint8) ^ 0x88).view(torch.int8)  # [N, K/2]
    scale = tensors["weight_scale"].float()
    if scheme.symmetric:
        zero = torch.zeros_like(scale)
    else:
        zero = -unpack_zero_point(tensors, scheme, n, k).float() * scale
    return wq.contiguous(), scale.t().contiguous().to(scale_dtype), zero.t().contiguous().to(scale_dtype)


def _int4_checks(config, act):
    s = config.scheme
    if s.weight != "int4" or s.act != act:
        return False, f"int4 weights with {'bf16' if act is None else act} activations only"
    if s.weight_strategy != "group" or s.actorder:
        return False, "needs groups without act-order"
    if config.n % 8 or config.k % 128:
        return False, f"N={config.n} must be a multiple of 8 and K={config.k} of 128"
    return True, None


@torch.library.custom_op("quantops::fbgemm_bf16i4bf16_rowwise", mutates_args=())
def fbgemm_bf16i4bf16_rowwise(x: torch.Tensor, wq: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, k: int) -> torch.Tensor:
    """x [M, K] bf16, wq int8 [N, K/2], scale/zero [K/g, N] -> [M, N] bf16."""
    check_activation("fbgemm_bf16i4bf16_rowwise", x, k, wq, (torch.bfloat16,))
    if x.shape[0] == 0:
        return x.new_empty((0, wq.shape[0]))
    _load_fbgemm()
    return torch.ops.fbgemm.bf16i4bf16_rowwise(x.contiguous(), wq, scale, zero)


@fbgemm_bf16i4bf16_rowwise.register_fake
def _(x, wq, scale, zero, k):
    return x.new_empty((x.shape[0], wq.shape[0]))


@torch.library.custom_op("quantops::fbgemm_f8i4bf16_rowwise", mutates_args=())
def fbgemm_f8i4bf16_rowwise(
    xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, k: int
) -> torch.Tensor:
    """xq e4m3 [M, K] with fp32 per-token scales [M, 1], wq int8 [N, K/2], scale/zero fp32 [K/g, N] -> bf16."""
    check_activation("fbgemm_f8i4bf16_rowwise", xq, k, wq, (torch.float8_e4m3fn,))
    if xq.shape[0] == 0:
        return torch.empty((0, wq.shape[0]), dtype=torch.bfloat16, device=xq.device)
    _load_fbgemm()
    return torch.ops.fbgemm.f8i4bf16_rowwise(xq.contiguous(), wq, x_scale.reshape(-1).contiguous(), scale, zero)


@fbgemm_f8i4bf16_rowwise.register_fake
def _(xq, x_scale, wq, scale, zero, k):
    return torch.empty((xq.shape[0], wq.shape[0]), dtype=torch.bfloat16, device=xq.device)


class Int4RowwiseFbgemmKernel(LinearKernel):
    backend = "fbgemm"
    families = ("wna16",)
    dtypes = (torch.bfloat16,)

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (9, 0), (9, 0)), lambda: needs_library("fbgemm"))

    @classmethod
    def can_implement(cls, config):
        return _int4_checks(config, None)

    def prepare(self, tensors):
        cfg = self.config
        wq, scale, zero = fbgemm_int4_operands(tensors, self.scheme, cfg.n, cfg.k, torch.bfloat16)
        return {"wq": wq, "scale": scale, "zero": zero}

    def apply_2d(self, x, prepared, bias):
        out = torch.ops.quantops.fbgemm_bf16i4bf16_rowwise(x, prepared["wq"], prepared["scale"], prepared["zero"], self.config.k)
        return out if bias is None else out + bias


class W4AFp8RowwiseFbgemmKernel(LinearKernel):
    backend = "fbgemm"
    families = ("w4afp8",)
    dtypes = (torch.bfloat16,)

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (9, 0), (9, 0)), lambda: needs_library("fbgemm"))

    @classmethod
    def can_implement(cls, config):
        return _int4_checks(config, "fp8")

    def prepare(self, tensors):
        cfg = self.config
        wq, scale, zero = fbgemm_int4_operands(tensors, self.scheme, cfg.n, cfg.k, torch.float32)
        return {"wq": wq, "scale": scale, "zero": zero}

    def apply_2d(self, x, prepared, bias):
        k = self.config.k
        xq, (x_scale,) = quantize_activation(x, self.scheme, k)
        out = torch.ops.quantops.fbgemm_f8i4bf16_rowwise(xq, x_scale, prepared["wq"], prepared["scale"], prepared["zero"], k)
        return out if bias is None else out + bias
