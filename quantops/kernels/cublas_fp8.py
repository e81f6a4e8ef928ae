"""FP8 W8A8 on cuBLAS through `torch._scaled_mm`: per-tensor, row-wise (per-token x per-channel) and
DeepSeek-style block scaling (1x128 activation groups x 128x128 weight blocks).

Hardware: tensor-wise and row-wise scaling need sm89+; block-wise scaling exists only on Hopper (sm90)
with CUDA >= 12.9. cuBLAS wants K and N multiples of 16 (padded in prepare). Row-wise and block-wise
scaling write bf16 only.

Block-wise layouts (checked by torch before it calls cuBLASLt): the activation scale is [M, K/128] with
strides (1, M) (M-major, built here from a [K/128, M] buffer); the weight scale is the transpose of a row-
major [N/128, K/128] matrix. cuBLASLt wants the weight scale's K/128 rows padded to 4 blocks (it answers
wrongly otherwise), while torch 2.11 insists on an unpadded row stride ("Invalid scaling configuration" for
K = 328, seen on an H200): K is padded to a multiple of 512 so that both hold. cuBLASLt fails for M = 1 on
Hopper (torch 2.11 + CUDA 13.0), so M is padded to a multiple of 4 inside the op.
"""

from __future__ import annotations

import torch

from ..formats import quantize_activation
from .base import LinearKernel, check_all, needs_cuda, pad_2d, round_up
from .w8a8_prepare import check_canonical, pad_activation_k, pad_vector

ALIGN = 16  # cuBLASLt FP8: leading dimensions in multiples of 16 bytes


def _cuda_at_least(major: int, minor: int):
    version = torch.version.cuda
    if version is None:
        return False, "torch is not built with CUDA"
    have = tuple(int(p) for p in version.split(".")[:2])
    return (True, None) if have >= (major, minor) else (False, f"needs CUDA >= {major}.{minor}, torch has {version}")


# ---------------------------------------------------------------------------------------------------
# per-tensor and row-wise


@torch.library.custom_op("quantops::fp8_scaled_mm", mutates_args=())
def fp8_scaled_mm(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    w_scale: torch.Tensor,
    rowwise: bool,
    n: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """xq [M, Kp] e4m3, weight [Np, Kp] e4m3 -> [M, n]. Tensor-wise: both scales hold one value.
    Row-wise: x_scale [M, 1] (or [1], broadcast), w_scale [1, Np]."""
    m = xq.shape[0]
    if m == 0:
        return xq.new_empty((0, n), dtype=out_dtype)
    if rowwise:
        sa = x_scale.reshape(-1, 1)
        if sa.shape[0] != m:  # static per-tensor activation scale with per-channel weights
            sa = sa.expand(m, 1)
        sa, sb = sa.contiguous(), w_scale
    else:
        sa, sb = x_scale.reshape(()), w_scale.reshape(())
    out = torch._scaled_mm(xq, weight.t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype)
    return out if out.shape[1] == n else out[:, :n].contiguous()


@fp8_scaled_mm.register_fake
def _(xq, x_scale, weight, w_scale, rowwise, n, out_dtype):
    return xq.new_empty((xq.shape[0], n), dtype=out_dtype)


class Fp8ScaledMMKernel(LinearKernel):
    """FP8 per-tensor / per-channel weights x per-tensor / per-token activations on torch._scaled_mm."""

    backend = "cublas"
    families = ("fp8",)
    dtypes = (torch.bfloat16, torch.float16, torch.float32)

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (8, 9)))

    @classmethod
    def can_implement(cls, config):
        s = config.scheme
        if s.weight_strategy not in ("tensor", "channel") or s.act_strategy not in ("tensor", "token"):
            return False, f"per-tensor/per-channel weights with per-tensor/per-token activations only, not {s.key()}"
        if cls._rowwise(s) and config.dtype != torch.bfloat16:
            return False, "cuBLAS row-wise FP8 scaling writes bf16 only"
        return True, None

    @staticmethod
    def _rowwise(scheme) -> bool:
        return scheme.weight_strategy == "channel" or scheme.act_strategy == "token"

    def __init__(self, config):
        super().__init__(config)
        self.np, self.kp = round_up(config.n, ALIGN), round_up(config.k, ALIGN)
        self.rowwise = self._rowwise(self.scheme)

    def prepare(self, tensors):
        names = ["weight", "weight_scale"] + ([] if self.scheme.act_dynamic else ["input_scale"])
        check_canonical(self.kernel_name(), self.config, tensors, names)
        out = {"weight": pad_2d(tensors["weight"], self.np, self.kp)}
        ws = tensors["weight_scale"].float().reshape(-1)
        if self.rowwise:  # [1, Np]; a per-tensor weight scale is broadcast to every row
            ws = pad_vector(ws.expand(self.config.n) if ws.numel() == 1 else ws, self.np).reshape(1, self.np)
        out["weight_scale"] = ws.contiguous() if self.rowwise else ws.clone()
        if not self.scheme.act_dynamic:
            out["input_scale"] = tensors["input_scale"].float().reshape(1).clone()
        return out

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        x = pad_activation_k(x, cfg.k, self.kp)
        xq, (xs,) = quantize_activation(x, self.scheme, self.kp, prepared)
        out = torch.ops.quantops.fp8_scaled_mm(
            xq, xs, prepared["weight"], prepared["weight_scale"], self.rowwise, cfg.n, cfg.dtype)
        return out if bias is None else out + bias


# ---------------------------------------------------------------------------------------------------
# block-wise (1x128 x 128x128)


@torch.library.custom_op("quantops::fp8_blockwise_scaled_mm", mutates_args=())
def fp8_blockwise_scaled_mm(
    xq: torch.Tensor,
    x_scale_t: torch.Tensor,
    weight: torch.Tensor,
    w_scale: torch.Tensor,
    n: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """xq [M, Kp] e4m3 with x_scale_t [Kp/128, M] (one scale per token and 128-column group, stored
    M-major); weight [Np, Kp] e4m3 with w_scale [ceil(Np/128), Kp/128] (Kp a multiple of 512) -> [M, n]."""
    m = xq.shape[0]
    if m == 0:
        return xq.new_empty((0, n), dtype=out_dtype)
    x_scale_t = x_scale_t.contiguous()  # [K/128, M] with unit stride along M (a no-op for apply_2d's tensor)
    mp = round_up(m, 4)
    if mp != m:  # cuBLASLt's block-scaled kernels fail for M = 1 on Hopper; keep M-major scales aligned
        xq = pad_2d(xq, mp, xq.shape[1])
        x_scale_t = torch.nn.functional.pad(x_scale_t, (0, mp - m), value=1.0)
    out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale_t.t(), scale_b=w_scale.t(), out_dtype=out_dtype)
    return out[:m, :n].contiguous()


@fp8_blockwise_scaled_mm.register_fake
def _(xq, x_scale_t, weight, w_scale, n, out_dtype):
    return xq.new_empty((xq.shape[0], n), dtype=out_dtype)


class Fp8BlockScaledMMKernel(LinearKernel):
    """FP8 128x128 weight blocks x 1x128 activation groups on torch._scaled_mm (cuBLASLt, Hopper only)."""

    backend = "cublas"
    families = ("fp8",)
    dtypes = (torch.bfloat16,)

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (9, 0), (9, 0)), lambda: _cuda_at_least(12, 9))

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
        self.np, self.kp = round_up(config.n, ALIGN), round_up(config.k, 512)  # K/128 a multiple of 4

    def prepare(self, tensors):
        check_canonical(self.kernel_name(), self.config, tensors, ["weight", "weight_scale"])
        ws = tensors["weight_scale"].float()
        return {
            "weight": pad_2d(tensors["weight"], self.np, self.kp),
            # padded K blocks multiply zero weights and zero activations: their scale value does not matter
            "weight_scale": pad_2d(ws, ws.shape[0], self.kp // 128).contiguous(),
        }

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        x = pad_activation_k(x, cfg.k, self.kp)
        xq, (xs,) = quantize_activation(x, self.scheme, self.kp)
        out = torch.ops.quantops.fp8_blockwise_scaled_mm(
            xq, xs.t().contiguous(), prepared["weight"], prepared["weight_scale"], cfg.n, cfg.dtype)
        return out if bias is None else out + bias
