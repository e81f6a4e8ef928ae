"""INT8 W8A8 on the CPU: int8 x int8 -> int32 GEMM through `torch._int_mm` (oneDNN/MKL int8 GEMM).

Activations are quantized per token (or with a static per-tensor scale) by quantops.formats.activations in
plain torch, so Inductor fuses the quantizer with the op that produced x; the scale epilogue is plain torch
too. The asymmetric-activation option ((q - zp) * s) is exact in int32: acc - zp * colsum(W), with the weight's
column sums computed once in prepare().

Needs: the CPU; K <= 131072 (K * 128 * 128 must fit the int32 accumulator). `_int_mm` on the CPU takes any
M (0 included), K and N: no padding or alignment (checked on torch 2.13).
Integer accumulation is exact and the epilogue is elementwise, so each output row is independent of the batch
(batch-invariant) whenever the activation scales are per token or static.
"""

from __future__ import annotations

import torch

from ..formats import quantize_activation
from .base import OK, LinearConfig, LinearKernel, check_all, needs_cpu

MAX_K = 131072  # K * 128 * 128 stays below 2**31 in the int32 accumulator


@torch.library.custom_op("quantops::int8_mm_cpu", mutates_args=())
def int8_mm_cpu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] @ int8 [K, N] -> int32 [M, N] (exact)."""
    return torch._int_mm(a, b)


@int8_mm_cpu.register_fake
def _(a, b):
    return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.int32)


class Int8IntMMCpuKernel(LinearKernel):
    backend = "cpu"
    families = ("int8",)
    batch_invariant = True

    @classmethod
    def is_supported(cls, capability):
        return check_all(
            needs_cpu(capability),
            (hasattr(torch, "_int_mm"), "torch._int_mm is missing from this torch build"),
        )

    @classmethod
    def can_implement(cls, config: LinearConfig):
        s = config.scheme
        if s.weight != "int8" or s.act != "int8":
            return False, "INT8 weights with INT8 activations only"
        if config.k > MAX_K:
            return False, f"K={config.k} > {MAX_K} could overflow the int32 accumulator"
        return OK

    def prepare(self, tensors):
        w = tensors["weight"]
        out = {
            "weight_t": w.t(),  # [K, N] view: _int_mm reads the transposed layout as fast as a copy
            "weight_scale": tensors["weight_scale"].float().reshape(1, -1),  # [1, N] or [1, 1]
        }
        if not self.scheme.act_symmetric:
            out["weight_colsum"] = w.sum(dim=1, dtype=torch.int32).reshape(1, -1)  # [1, N]
        for name in ("input_scale", "input_zero_point"):  # static activation quantization
            if name in tensors:
                out[name] = tensors[name]
        return out

    def apply_2d(self, x, prepared, bias):
        xq, params = quantize_activation(x, self.scheme, self.config.k, prepared)
        acc = torch.ops.quantops.int8_mm_cpu(xq, prepared["weight_t"])
        if not self.scheme.act_symmetric:  # x = (xq - zp) * s  =>  sum_k x W = s * (acc - zp * sum_k W[n, k])
            acc = acc - params[1] * prepared["weight_colsum"]
        out = acc.float() * params[0] * prepared["weight_scale"]
        if bias is not None:
            out = out + bias.float()
        return out.to(self.config.dtype)
