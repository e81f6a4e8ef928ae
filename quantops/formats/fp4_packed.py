"""nvfp4-pack-quantized and mxfp4-pack-quantized: E2M1 values two to a byte (even element in the low nibble).

NVFP4: blocks of 16 with e4m3 scales and an fp32 global multiplier (`weight_global_scale` = 448*6/amax(W));
dequant w = fp4 * weight_scale / weight_global_scale. MXFP4: blocks of 32 with E8M0 (uint8) scales.
The quantizers here are used for activations too (see quantops.formats.activations).
"""

from __future__ import annotations

import torch

from .elements import FP4_MAX, FP8, FP8_MAX, decode_e8m0, decode_fp4, encode_e8m0, encode_fp4, pack_fp4, unpack_fp4

NVFP4_BLOCK = 16
MX_BLOCK = 32
ZERO_BLOCK_SCALE = 0.125  # compressed-tensors replaces an e4m3 block scale of 0 by its eps


def global_scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """The compressed-tensors global multiplier 448*6/amax, fp32 [1]. 1.0 where that is not a finite positive
    number (an all-zero tensor, or amax < ~8e-36 where the quotient overflows), as compressed-tensors does."""
    amax = amax.float().reshape(1)
    gs = FP8_MAX * FP4_MAX / amax.clamp(min=torch.finfo(torch.float32).tiny)
    return torch.where((amax > 0) & torch.isfinite(gs), gs, 1.0)


def quantize_nvfp4(x: torch.Tensor, global_scale: torch.Tensor, k: int):
    """x [R, K] float, global_scale fp32 [1] -> (packed uint8 [R, K/2], block scales e4m3 [R, K/16])."""
    blocks = x.float().reshape(-1, k // NVFP4_BLOCK, NVFP4_BLOCK)
    amax = blocks.abs().amax(dim=-1)
    sf = (global_scale * amax / FP4_MAX).clamp(max=FP8_MAX).to(FP8)
    sf = torch.where(sf.float() == 0, ZERO_BLOCK_SCALE, sf.float()).to(FP8)
    scaled = blocks / (sf.float() / global_scale).unsqueeze(-1)
    return pack_fp4(encode_fp4(scaled).reshape(-1, k), k), sf


def quantize_mxfp4(x: torch.Tensor, k: int):
    """x [R, K] float -> (packed uint8 [R, K/2], E8M0 scales uint8 [R, K/32])."""
    blocks = x.float().reshape(-1, k // MX_BLOCK, MX_BLOCK)
    code = encode_e8m0(blocks.abs().amax(dim=-1), emax=2)
    scaled = blocks / decode_e8m0(code).unsqueeze(-1)
    return pack_fp4(encode_fp4(scaled).reshape(-1, k), k), code


def dequantize_nvfp4(packed, sf, global_scale):
    vals = decode_fp4(unpack_fp4(packed))
    r, k = vals.shape
    s = (sf.float() / global_scale.float()).repeat_interleave(NVFP4_BLOCK, dim=1)
    return vals * s


def dequantize_mxfp4(packed, code):
    vals = decode_fp4(unpack_fp4(packed))
    return vals * decode_e8m0(code).repeat_interleave(MX_BLOCK, dim=1)


def quantize(w, scheme, input_amax=None):
    n, k = w.shape
    if scheme.weight == "mxfp4":
        packed, code = quantize_mxfp4(w, k)
        return {"weight_packed": packed, "weight_scale": code}
    gs = global_scale_from_amax(w.float().abs().amax())
    packed, sf = quantize_nvfp4(w, gs, k)
    out = {"weight_packed": packed, "weight_scale": sf, "weight_global_scale": gs}
    if scheme.act is not None:
        out["input_global_scale"] = global_scale_from_amax(input_amax)
    return out


def dequantize(t, scheme, n, k):
    if scheme.weight == "mxfp4":
        return dequantize_mxfp4(t["weight_packed"], t["weight_scale"])
    return dequantize_nvfp4(t["weight_packed"], t["weight_scale"], t["weight_global_scale"])


def specs(scheme, n, k):
    if scheme.weight == "mxfp4":
        return {"weight_packed": ((n, k // 2), torch.uint8), "weight_scale": ((n, k // MX_BLOCK), torch.uint8)}
    out = {
        "weight_packed": ((n, k // 2), torch.uint8),
        "weight_scale": ((n, k // NVFP4_BLOCK), FP8),
        "weight_global_scale": ((1,), torch.float32),
    }
    if scheme.act is not None:
        out["input_global_scale"] = ((1,), torch.float32)
    return out
