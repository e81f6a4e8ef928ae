"""mxfp8-quantized: e4m3 weights [N, K] with E8M0 (uint8) scales per block of 32 along K."""

from __future__ import annotations

import torch

from .elements import FP8, cast_fp8, decode_e8m0, encode_e8m0

MX_BLOCK = 32


def quantize_mxfp8(x: torch.Tensor, k: int):
    """x [R, K] -> (e4m3 [R, K], E8M0 uint8 [R, K/32])."""
    blocks = x.float().reshape(-1, k // MX_BLOCK, MX_BLOCK)
    code = encode_e8m0(blocks.abs().amax(dim=-1), emax=8)
    q = cast_fp8(blocks / decode_e8m0(code).unsqueeze(-1))
    return q.reshape(-1, k), code


def dequantize_mxfp8(q, code):
    return q.float() * decode_e8m0(code).repeat_interleave(MX_BLOCK, dim=1)


def quantize(w, scheme, input_amax=None):
    q, code = quantize_mxfp8(w, w.shape[1])
    return {"weight": q, "weight_scale": code}


def dequantize(t, scheme, n, k):
    return dequantize_mxfp8(t["weight"], t["weight_scale"])


def specs(scheme, n, k):
    return {"weight": ((n, k), FP8), "weight_scale": ((n, k // MX_BLOCK), torch.uint8)}
