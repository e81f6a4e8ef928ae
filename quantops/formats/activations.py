"""Activation quantization as kernels consume it, in plain torch ops.

These run inside the model's forward (eager) or are recorded into the compiled graph, where Inductor fuses
them with whatever produced the activation. They take a 2-D [M, K] activation and the static K, and avoid
anything FX cannot record (tensor constants, data-dependent branches).

`quantize_activation(x, scheme, k, static)` returns `(xq, params)`: the quantized activation and the list of
tensors its dequantization needs, in a fixed order per scheme (see `dequantize_activation`).
"""

from __future__ import annotations

import torch

from .elements import FP8_MAX, cast_fp8
from .fp4_packed import dequantize_mxfp4, dequantize_nvfp4, quantize_mxfp4, quantize_nvfp4
from .mxfp8 import dequantize_mxfp8, quantize_mxfp8

AMAX_EPS = 1e-12  # an all-zero row gets a tiny scale instead of a division by zero
INT8_MAX = 127


def fp8_per_token(x: torch.Tensor):
    """[M, K] -> (e4m3 [M, K], fp32 scale [M, 1])."""
    scale = x.float().abs().amax(dim=-1, keepdim=True).clamp(min=AMAX_EPS) / FP8_MAX
    return cast_fp8(x.float() / scale), scale


def fp8_per_tensor(x: torch.Tensor, input_scale: torch.Tensor | None):
    """Static (given input_scale) or dynamic per-tensor: (e4m3 [M, K], fp32 scale [1])."""
    if input_scale is None:
        # amax over rows, then over [row amaxes, 0]: a full reduction of an empty (M = 0) tensor raises
        row_amax = x.float().abs().amax(dim=-1)
        scale = (torch.nn.functional.pad(row_amax, (0, 1)).amax().clamp(min=AMAX_EPS) / FP8_MAX).reshape(1)
    else:
        scale = input_scale.float().reshape(1)
    return cast_fp8(x.float() / scale), scale


def fp8_per_group(x: torch.Tensor, k: int, group: int):
    """1 x group scales: (e4m3 [M, K], fp32 scale [M, ceil(K/group)]). A partial last group is padded."""
    groups = -(-k // group)
    xf = x.float()
    if groups * group != k:
        xf = torch.nn.functional.pad(xf, (0, groups * group - k))
    blocks = xf.reshape(-1, groups, group)
    scale = blocks.abs().amax(dim=-1).clamp(min=AMAX_EPS) / FP8_MAX
    q = cast_fp8(blocks / scale.unsqueeze(-1)).reshape(-1, groups * group)
    if groups * group != k:
        q = q[:, :k]
    return q, scale


def int8_per_token(x: torch.Tensor, symmetric: bool = True):
    """Symmetric: (int8 [M, K], fp32 scale [M, 1]). Asymmetric adds an int32 zero point [M, 1]:
    x ~= (q - zp) * scale."""
    xf = x.float()
    if symmetric:
        scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=AMAX_EPS) / INT8_MAX
        return torch.round(xf / scale).clamp(-128, 127).to(torch.int8), scale
    lo = xf.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = xf.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = (hi - lo).clamp(min=AMAX_EPS) / 255
    zp = torch.round(-128 - lo / scale)
    q = torch.round(xf / scale + zp).clamp(-128, 127).to(torch.int8)
    return q, scale, zp.to(torch.int32)


def int8_static(x: torch.Tensor, input_scale: torch.Tensor, input_zero_point: torch.Tensor | None):
    scale = input_scale.float().reshape(1)
    q = torch.round(x.float() / scale)
    if input_zero_point is None:
        return q.clamp(-128, 127).to(torch.int8), scale
    zp = input_zero_point.to(torch.int32).reshape(1)
    return (q + zp).clamp(-128, 127).to(torch.int8), scale, zp


def quantize_activation(x: torch.Tensor, scheme, k: int, static: dict | None = None):
    """x [M, K] in the model dtype -> (xq, params). `static` holds the layer's input_scale,
    input_zero_point or input_global_scale where the scheme has them."""
    static = static or {}
    act = scheme.act
    if act is None:
        return x, []
    if act == "fp8":
        if scheme.act_strategy == "token":
            q, s = fp8_per_token(x)
        elif scheme.act_strategy == "group":
            q, s = fp8_per_group(x, k, scheme.act_group_size)
        else:
            q, s = fp8_per_tensor(x, None if scheme.act_dynamic else static["input_scale"])
        return q, [s]
    if act == "int8":
        if scheme.act_dynamic:
            q, *params = int8_per_token(x, scheme.act_symmetric)
        else:
            q, *params = int8_static(x, static["input_scale"], static.get("input_zero_point"))
        return q, params
    if act == "nvfp4":
        q, sf = quantize_nvfp4(x, static["input_global_scale"].float(), k)
        return q, [sf, static["input_global_scale"].float()]
    if act == "mxfp4":
        q, code = quantize_mxfp4(x, k)
        return q, [code]
    if act == "mxfp8":
        q, code = quantize_mxfp8(x, k)
        return q, [code]
    raise ValueError(f"no activation quantizer for {act}")


def dequantize_activation(xq: torch.Tensor, params: list[torch.Tensor], scheme, k: int) -> torch.Tensor:
    """Inverse of quantize_activation, in fp32 (the emulation kernels' view of what a real kernel multiplies)."""
    act = scheme.act
    if act is None:
        return xq.float()
    if act == "fp8" and scheme.act_strategy == "group":
        g = scheme.act_group_size
        return xq.float() * params[0].repeat_interleave(g, dim=1)[:, :k]
    if act in ("fp8", "int8"):
        q = xq.float()
        if len(params) == 2:
            q = q - params[1].float()
        return q * params[0]
    if act == "nvfp4":
        return dequantize_nvfp4(xq, params[0], params[1])
    if act == "mxfp4":
        return dequantize_mxfp4(xq, params[0])
    if act == "mxfp8":
        return dequantize_mxfp8(xq, params[0])
    raise ValueError(f"no activation dequantizer for {act}")
