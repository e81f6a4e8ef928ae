"""FP8 W8A8 on FBGEMM GenAI's CUTLASS GEMMs (`fbgemm_gpu.experimental.gen_ai`, imported lazily).

- `f8f8bf16_rowwise`: per-token activation x per-channel weight scales (a per-tensor side is broadcast).
- `f8f8bf16` (the tensor-wise GEMM with a device scale; `f8f8bf16_tensorwise` takes a host float, which
  would bake one layer's scale into a compiled graph): per-tensor x per-tensor.
- `f8f8bf16_groupwise`: 1x128 activation groups x 128x128 weight blocks. Its scales are MN-major:
  x_scale [K/128, M] and w_scale [K/128, N/128], contiguous. (`f8f8bf16_blockwise` is not used: it scales
  activations per 128x128 block, [ceil(M/128), K/128], a coarser format than FP8_BLOCK's 1x128 groups.)

Hardware: sm90 (the groupwise kernels are Hopper-only CUTLASS); bf16 output only; `use_fast_accum=True`
(FBGEMM's default) for the row-wise and tensor-wise GEMMs. N and K padded in prepare (16 / 128 for the
groupwise GEMM), M padded to a multiple of 4 for the M-major groupwise scales.
"""

from __future__ import annotations

import functools

import torch

from ..formats import quantize_activation
from .base import LinearKernel, check_all, needs_cuda, needs_library, pad_2d, round_up
from .w8a8_prepare import check_canonical, pad_activation_k, pad_vector


@functools.cache
def _fbgemm():
    import fbgemm_gpu.experimental.gen_ai  # noqa: F401  (registers torch.ops.fbgemm.f8f8bf16_*)

    return torch.ops.fbgemm


def _slice_n(out: torch.Tensor, n: int) -> torch.Tensor:
    return out if out.shape[1] == n else out[:, :n].contiguous()


# ---------------------------------------------------------------------------------------------------
# row-wise and tensor-wise


@torch.library.custom_op("quantops::fbgemm_fp8_rowwise_mm", mutates_args=())
def fbgemm_fp8_rowwise_mm(
    xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, n: int
) -> torch.Tensor:
    """xq [M, Kp] e4m3 with x_scale [M, 1] or [1]; weight [Np, Kp] e4m3 with w_scale [Np] -> bf16 [M, n]."""
    m = xq.shape[0]
    if m == 0:
        return xq.new_empty((0, n), dtype=torch.bfloat16)
    xs = x_scale.reshape(-1)
    if xs.numel() != m:  # static per-tensor activation scale
        xs = xs.expand(m).contiguous()
    return _slice_n(_fbgemm().f8f8bf16_rowwise(xq, weight, xs, w_scale, use_fast_accum=True), n)


@fbgemm_fp8_rowwise_mm.register_fake
def _(xq, x_scale, weight, w_scale, n):
    return xq.new_empty((xq.shape[0], n), dtype=torch.bfloat16)


@torch.library.custom_op("quantops::fbgemm_fp8_tensorwise_mm", mutates_args=())
def fbgemm_fp8_tensorwise_mm(xq: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, n: int) -> torch.Tensor:
    """xq [M, Kp] e4m3, weight [Np, Kp] e4m3, scale [1] = x_scale * w_scale (fp32, on the device) -> bf16 [M, n]."""
    m = xq.shape[0]
    if m == 0:
        return xq.new_empty((0, n), dtype=torch.bfloat16)
    return _slice_n(_fbgemm().f8f8bf16(xq, weight, scale, use_fast_accum=True), n)


@fbgemm_fp8_tensorwise_mm.register_fake
def _(xq, scale, weight, n):
    return xq.new_empty((xq.shape[0], n), dtype=torch.bfloat16)


class _Fp8FbgemmBase(LinearKernel):
    backend = "fbgemm"
    families = ("fp8",)
    dtypes = (torch.bfloat16,)
    tensorwise = False

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (9, 0)), lambda: needs_library("fbgemm"))

    def __init__(self, config):
        super().__init__(config)
        self.np, self.kp = round_up(config.n, 16), round_up(config.k, 16)

    def prepare(self, tensors):
        names = ["weight", "weight_scale"] + ([] if self.scheme.act_dynamic else ["input_scale"])
        check_canonical(self.kernel_name(), self.config, tensors, names)
        ws = tensors["weight_scale"].float().reshape(-1)
        if not self.tensorwise:  # one scale per (padded) output row; a per-tensor weight scale is broadcast
            ws = pad_vector(ws.expand(self.config.n) if ws.numel() == 1 else ws, self.np)
        out = {"weight": pad_2d(tensors["weight"], self.np, self.kp), "weight_scale": ws.clone()}
        if not self.scheme.act_dynamic:
            out["input_scale"] = tensors["input_scale"].float().reshape(1).clone()
        return out

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        x = pad_activation_k(x, cfg.k, self.kp)
        xq, (xs,) = quantize_activation(x, self.scheme, self.kp, prepared)
        if self.tensorwise:
            out = torch.ops.quantops.fbgemm_fp8_tensorwise_mm(xq, xs * prepared["weight_scale"], prepared["weight"], cfg.n)
        else:
            out = torch.ops.quantops.fbgemm_fp8_rowwise_mm(xq, xs, prepared["weight"], prepared["weight_scale"], cfg.n)
        return out if bias is None else out + bias


class Fp8RowwiseFbgemmKernel(_Fp8FbgemmBase):
    """FP8 per-channel weights and/or per-token activations (the other side may be per-tensor, broadcast)
    on FBGEMM's CUTLASS f8f8bf16_rowwise."""

    @classmethod
    def can_implement(cls, config):
        s = config.scheme
        if s.weight_strategy not in ("tensor", "channel") or s.act_strategy not in ("tensor", "token"):
            return False, f"per-tensor/per-channel weights with per-tensor/per-token activations only, not {s.key()}"
        if s.weight_strategy == "tensor" and s.act_strategy == "tensor":
            return False, "per-tensor x per-tensor goes to the tensor-wise GEMMs"
        return True, None


class Fp8TensorwiseFbgemmKernel(_Fp8FbgemmBase):
    """FP8 per-tensor weights x per-tensor activations on FBGEMM's CUTLASS f8f8bf16 (device scale)."""

    tensorwise = True

    @classmethod
    def can_implement(cls, config):
        s = config.scheme
        if s.weight_strategy != "tensor" or s.act_strategy != "tensor":
            return False, "per-tensor weight and activation scales only"
        return True, None


# ---------------------------------------------------------------------------------------------------
# groupwise (1x128 x 128x128)


@torch.library.custom_op("quantops::fbgemm_fp8_groupwise_mm", mutates_args=())
def fbgemm_fp8_groupwise_mm(
    xq: torch.Tensor, x_scale_t: torch.Tensor, weight: torch.Tensor, w_scale_t: torch.Tensor, n: int
) -> torch.Tensor:
    """xq [M, Kp] e4m3 with x_scale_t [Kp/128, M]; weight [Np, Kp] e4m3 with w_scale_t [Kp/128, Np/128]
    (both MN-major, contiguous) -> bf16 [M, n]."""
    m = xq.shape[0]
    if m == 0:
        return xq.new_empty((0, n), dtype=torch.bfloat16)
    x_scale_t = x_scale_t.contiguous()
    mp = round_up(m, 4)
    if mp != m:  # keep the M-major scale rows 16-byte aligned
        xq = pad_2d(xq, mp, xq.shape[1])
        x_scale_t = torch.nn.functional.pad(x_scale_t, (0, mp - m), value=1.0)
    out = _fbgemm().f8f8bf16_groupwise(xq, weight, x_scale_t, w_scale_t)
    return out[:m, :n].contiguous()


@fbgemm_fp8_groupwise_mm.register_fake
def _(xq, x_scale_t, weight, w_scale_t, n):
    return xq.new_empty((xq.shape[0], n), dtype=torch.bfloat16)


class Fp8BlockScaledFbgemmKernel(LinearKernel):
    """FP8 128x128 weight blocks x 1x128 activation groups on FBGEMM's CUTLASS f8f8bf16_groupwise."""

    backend = "fbgemm"
    families = ("fp8",)
    dtypes = (torch.bfloat16,)

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (9, 0), (9, 0)), lambda: needs_library("fbgemm"))

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
        self.np, self.kp = round_up(config.n, 128), round_up(config.k, 128)

    def prepare(self, tensors):
        check_canonical(self.kernel_name(), self.config, tensors, ["weight", "weight_scale"])
        return {
            "weight": pad_2d(tensors["weight"], self.np, self.kp),
            "weight_scale": tensors["weight_scale"].float().t().contiguous(),  # MN-major [K/128, N/128]
        }

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        x = pad_activation_k(x, cfg.k, self.kp)
        xq, (xs,) = quantize_activation(x, self.scheme, self.kp)
        out = torch.ops.quantops.fbgemm_fp8_groupwise_mm(
            xq, xs.t().contiguous(), prepared["weight"], prepared["weight_scale"], cfg.n)
        return out if bias is None else out + bias
