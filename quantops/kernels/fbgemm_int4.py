"""FBGEMM GenAI's CUTLASS mixed-input GEMMs over int4 weights (Hopper), ranked alternatives:
- `bf16i4bf16_rowwise`: W4A16 / W4A16_ASYM, bf16 activations;
- `bf16i4bf16_shuffled`: the same GEMM over weights that `preshuffle_i4` reorders once, so that each thread's
  values of a wgmma A fragment lie together in memory (CUTLASS's memory-reordering atom: 16x16 blocks of one warp,
  values within a 32-bit word in the order 0,2,4,6,1,3,5,7); scales and zeros unchanged;
- `f8i4bf16_rowwise`: W4AFP8, activations quantized per token to fp8 (quantops.formats.activations, plain
  torch) and multiplied on fp8 tensor cores; the group scales and zeros divided by a power of two per row
  (`e4m3_row_scale`) and the output multiplied by it;
- `f8i4bf16_shuffled`: W4AFP8 over `preshuffle_i4`'s fp8 layout: the weights reordered as above, each e4m3 group
  scale expanded to a table of code * scale, and one fp32 scale per row. Our bf16 group scales s become
  e4m3(s / r) with r a power of two per row (`e4m3_row_scale`) -- one more rounding of the weights than the
  row-wise GEMM, as vLLM's CUTLASS W4A8 kernel does with these checkpoints; the table's products are e4m3 as in the
  row-wise GEMM, which multiplies code * scale in fp8 too (so its scales are divided by the same r).

FBGEMM dequantizes w = q * scale + zero with q the signed nibble: our stored codes (q + 8) become two's
complement by flipping each nibble's top bit (byte ^ 0x88); zero = -zero_point * scale (0 when symmetric).
Scales and zeros are [K/g, N]. Byte layout (even element in the low nibble) is the same as ours.

Needs: CUDA sm_90, fbgemm_gpu GenAI (imported lazily), groups (no act-order), N and K multiples of 8 / 128 (16 / 128
for the shuffled layouts: the reorder tiles the weights in whole atoms of 16 rows); the shuffled fp8 GEMM symmetric
weights (it takes no zero points).
"""

from __future__ import annotations

import functools

import torch

from ..formats.activations import quantize_activation
from ..formats.pack_quantized import unpack_zero_point
from .base import LinearKernel, check_all, needs_cuda, needs_library, needs_library_ops
from .weight_only_layout import check_activation


@functools.lru_cache(maxsize=None)
def _load_fbgemm() -> None:
    import fbgemm_gpu.experimental.gen_ai  # noqa: F401  (registers torch.ops.fbgemm.*)


def signed_nibbles(tensors) -> torch.Tensor:
    """Our codes q + 8 -> FBGEMM's two's-complement int4 pairs, int8 [N, K/2] (a new tensor)."""
    return (tensors["weight_packed"].contiguous().view(torch.uint8) ^ 0x88).view(torch.int8)


def fbgemm_int4_operands(tensors, scheme, n, k, scale_dtype):
    wq = signed_nibbles(tensors)
    scale = tensors["weight_scale"].float()
    if scheme.symmetric:
        zero = torch.zeros_like(scale)
    else:
        zero = -unpack_zero_point(tensors, scheme, n, k).float() * scale
    return wq.contiguous(), scale.t().contiguous().to(scale_dtype), zero.t().contiguous().to(scale_dtype)


E4M3_MAX = 448.0


def e4m3_row_scale(scale: torch.Tensor, zero: torch.Tensor | None = None) -> torch.Tensor:
    """[N, G] group scales (and FBGEMM's zeros, -zero_point * scale) -> [N] fp32: per row the power of two r with
    max |w| / r in (224, 448], bounding w = q * scale + zero over q in [-8, 7] by 8 |scale| + |zero| (symmetric:
    max |scale| / r in (28, 56]). The fp8 x int4 GEMMs multiply code * scale in e4m3, whose precision ends below
    2^-6 (W4AFP8 weights of std 0.002: 28% error through the row-wise GEMM without it, measured on an H200) and whose
    range ends at 448; dividing the scales and zeros by a power of two, and multiplying the output by it, is exact."""
    bound = 8 * scale.float().abs()
    if zero is not None:
        bound = bound + zero.float().abs()
    amax = bound.amax(dim=1).clamp(min=2.0**-100)
    return torch.exp2(torch.ceil(torch.log2(amax / E4M3_MAX)))


def _int4_checks(config, act):
    s = config.scheme
    if s.weight != "int4" or s.act != act:
        return False, f"int4 weights with {'bf16' if act is None else act} activations only"
    if s.weight_strategy != "group" or s.actorder:
        return False, "needs groups without act-order"
    if config.n % 8 or config.k % 128:
        return False, f"N={config.n} must be a multiple of 8 and K={config.k} of 128"
    return True, None


def _shuffled_checks(config, act):
    ok, why = _int4_checks(config, act)
    if ok and config.n % 16:
        return False, f"N={config.n} must be a multiple of 16 (the shuffle reorders whole blocks of 16 rows)"
    return ok, why


def _shuffled_supported(capability, gemm: str):
    return check_all(
        needs_cuda(capability, (9, 0), (9, 0)), lambda: needs_library_ops("fbgemm", "fbgemm", ("preshuffle_i4", gemm))
    )


def _bf16_int4_op(variant: str):
    """quantops::fbgemm_bf16i4bf16_<variant>: x [M, K] bf16, wq int8 [N, K/2] (shuffled: reordered by
    preshuffle_i4), scale/zero [K/g, N] -> [M, N] bf16."""
    name = f"fbgemm_bf16i4bf16_{variant}"

    @torch.library.custom_op(f"quantops::{name}", mutates_args=())
    def op(x: torch.Tensor, wq: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, k: int) -> torch.Tensor:
        check_activation(name, x, k, wq, (torch.bfloat16,))
        if x.shape[0] == 0:
            return x.new_empty((0, wq.shape[0]))
        _load_fbgemm()
        return getattr(torch.ops.fbgemm, f"bf16i4bf16_{variant}")(x.contiguous(), wq, scale, zero)

    @op.register_fake
    def _(x, wq, scale, zero, k):
        return x.new_empty((x.shape[0], wq.shape[0]))

    return op


def _fp8_int4_op(variant: str):
    """quantops::fbgemm_f8i4bf16_<variant>: xq e4m3 [M, K] with fp32 per-token scales [M, 1], wq int8 [N, K/2] and
    the weight scales -> [M, N] bf16. rowwise: a = scale, b = zero, fp32 [K/g, N]; shuffled (wq reordered by
    preshuffle_i4): a = fp32 row scales [N], b = e4m3 tables [K/g, 8, N]."""
    name = f"fbgemm_f8i4bf16_{variant}"

    @torch.library.custom_op(f"quantops::{name}", mutates_args=())
    def op(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
        check_activation(name, xq, k, wq, (torch.float8_e4m3fn,))
        if xq.shape[0] == 0:
            return torch.empty((0, wq.shape[0]), dtype=torch.bfloat16, device=xq.device)
        _load_fbgemm()
        return getattr(torch.ops.fbgemm, f"f8i4bf16_{variant}")(xq.contiguous(), wq, x_scale.reshape(-1).contiguous(), a, b)

    @op.register_fake
    def _(xq, x_scale, wq, a, b, k):
        return torch.empty((xq.shape[0], wq.shape[0]), dtype=torch.bfloat16, device=xq.device)

    return op


fbgemm_bf16i4bf16_rowwise = _bf16_int4_op("rowwise")
fbgemm_bf16i4bf16_shuffled = _bf16_int4_op("shuffled")
fbgemm_f8i4bf16_rowwise = _fp8_int4_op("rowwise")
fbgemm_f8i4bf16_shuffled = _fp8_int4_op("shuffled")


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


class Int4ShuffledFbgemmKernel(Int4RowwiseFbgemmKernel):
    @classmethod
    def is_supported(cls, capability):
        return _shuffled_supported(capability, "bf16i4bf16_shuffled")

    @classmethod
    def can_implement(cls, config):
        return _shuffled_checks(config, None)

    def prepare(self, tensors):
        prepared = super().prepare(tensors)
        _load_fbgemm()
        # preshuffle_i4 reorders its argument in place and returns it: wq is already this kernel's own copy
        prepared["wq"] = torch.ops.fbgemm.preshuffle_i4(prepared["wq"], prepared["scale"])[0]
        return prepared

    def apply_2d(self, x, prepared, bias):
        out = torch.ops.quantops.fbgemm_bf16i4bf16_shuffled(x, prepared["wq"], prepared["scale"], prepared["zero"], self.config.k)
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
        row = e4m3_row_scale(scale.t(), zero.t())  # scales and zeros [K/g, N] divided by it, output times it
        return {"wq": wq, "scale": scale / row, "zero": zero / row, "row_scale": row.to(torch.bfloat16)}

    def apply_2d(self, x, prepared, bias):
        k = self.config.k
        xq, (x_scale,) = quantize_activation(x, self.scheme, k)
        out = torch.ops.quantops.fbgemm_f8i4bf16_rowwise(xq, x_scale, prepared["wq"], prepared["scale"], prepared["zero"], k)
        out = out * prepared["row_scale"]  # a power of two: exact in bf16
        return out if bias is None else out + bias


class W4AFp8ShuffledFbgemmKernel(W4AFp8RowwiseFbgemmKernel):
    @classmethod
    def is_supported(cls, capability):
        return _shuffled_supported(capability, "f8i4bf16_shuffled")

    @classmethod
    def can_implement(cls, config):
        if not config.scheme.symmetric:
            return False, "needs symmetric weights (the shuffled fp8 GEMM takes no zero points)"
        return _shuffled_checks(config, "fp8")

    def prepare(self, tensors):
        wq = signed_nibbles(tensors)
        scale = tensors["weight_scale"].float()  # [N, G]
        row = e4m3_row_scale(scale)
        group = (scale / row[:, None]).t().contiguous().to(torch.float8_e4m3fn)  # [G, N]: one rounding
        _load_fbgemm()
        wq, table = torch.ops.fbgemm.preshuffle_i4(wq, group)  # new tensors (the fp8 path copies)
        return {"wq": wq, "row_scale": row.contiguous(), "table": table}

    def apply_2d(self, x, prepared, bias):
        k = self.config.k
        xq, (x_scale,) = quantize_activation(x, self.scheme, k)
        out = torch.ops.quantops.fbgemm_f8i4bf16_shuffled(xq, x_scale, prepared["wq"], prepared["row_scale"], prepared["table"], k)
        return out if bias is None else out + bias
