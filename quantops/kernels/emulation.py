"""Emulation: every scheme in plain torch, on any device. The numerical reference for every other kernel of
the scheme, and the last-resort fallback.

Numerics match a real kernel's: activations are quantized exactly as the real kernels' activation quantizers
do (FP8 emulation rounds activations to e4m3, NVFP4 W4A4 emulation quantizes them to FP4 with the real scales);
then both operands are dequantized to fp32 and multiplied in fp32. With batch_invariant, rows are multiplied
one at a time so that each output row is independent of the batch it came in.
"""

from __future__ import annotations

import torch

from ..formats import dequantize_activation, dequantize_weight, quantize_activation, tensor_specs
from ..schemes import QuantScheme
from .base import LinearKernel

STATIC_ACT_TENSORS = ("input_scale", "input_zero_point", "input_global_scale")
ALL_FAMILIES = ("fp8", "int8", "wna16", "w4afp8", "nvfp4", "nvfp4a16", "mxfp4", "mxfp4a16", "mxfp8", "mxfp8a16")


def weight_tensor_names(scheme: QuantScheme, n: int, k: int) -> list[str]:
    return [name for name in tensor_specs(scheme, n, k) if name not in STATIC_ACT_TENSORS]


@torch.library.custom_op("quantops::emulated_mm", mutates_args=())
def emulated_mm(
    xq: torch.Tensor,
    act_params: list[torch.Tensor],
    weight: list[torch.Tensor],
    scheme: str,
    n: int,
    k: int,
    out_dtype: torch.dtype,
    batch_invariant: bool,
) -> torch.Tensor:
    """Dequantize activation and weight, multiply in fp32: [M, *] x [N, K] -> [M, N] in out_dtype."""
    s = QuantScheme.from_key(scheme)
    names = weight_tensor_names(s, n, k)
    w = dequantize_weight(dict(zip(names, weight)), s, shape=(n, k))
    x = dequantize_activation(xq, act_params, s, k)
    if batch_invariant:
        out = torch.stack([torch.mv(w, row) for row in x]) if x.shape[0] else x.new_empty(0, n)
    else:
        out = x @ w.t()
    return out.to(out_dtype)


@emulated_mm.register_fake
def _(xq, act_params, weight, scheme, n, k, out_dtype, batch_invariant):
    return xq.new_empty((xq.shape[0], n), dtype=out_dtype)


class EmulationKernel(LinearKernel):
    backend = "emulation"
    families = ALL_FAMILIES
    batch_invariant = True  # when the config asks for it, rows are computed one at a time

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        xq, params = quantize_activation(x, self.scheme, cfg.k, prepared)
        names = weight_tensor_names(self.scheme, cfg.n, cfg.k)
        out = torch.ops.quantops.emulated_mm(
            xq, params, [prepared[name] for name in names], self.scheme.key(), cfg.n, cfg.k, cfg.dtype, cfg.batch_invariant
        )
        return out if bias is None else out + bias
