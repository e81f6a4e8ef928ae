"""Element types and bit packing, in plain torch.

Functions named `quantize_*`/`encode_*` are written so that they can also be recorded into an FX graph by
calling them on `torch.fx.Proxy` values (the lowering emits activation quantization this way): no data-
dependent Python branches, no tensor constants, shapes only through -1 and the static K given by the caller.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
FP4_MAX = 6.0
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E8M0_BIAS = 127
# E2M1 round-to-nearest-even: the code index is the count of these boundaries that |x| passes. At a tie the
# value goes to the even code, so boundaries whose upper neighbour is even count with >=, the others with >.
_FP4_GT = (0.25, 1.25, 2.5, 5.0)
_FP4_GE = (0.75, 1.75, 3.5)


def cast_fp8(x: torch.Tensor) -> torch.Tensor:
    """Saturating cast to e4m3. The plain cast need not saturate (FORMATS.md: values >= 464 may become NaN; the
    CPU casts of torch 2.13 happen to saturate, so tests check the clamp in the recorded graph)."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8)


def store_scale(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 scales -> the model dtype they are stored in. A scale that underflows to 0 there (fp16 below
    6e-8: an all-zero row) becomes the dtype's smallest normal, so that w / scale is never 0/0 = NaN."""
    s = scale.to(dtype)
    return torch.where(s == 0, torch.finfo(dtype).tiny, s)


def encode_fp4(x: torch.Tensor) -> torch.Tensor:
    """float -> E2M1 code (uint8 in 0..15), round-to-nearest-even, saturating at ±6. NaN encodes as 0."""
    a = x.abs()
    idx = (a > _FP4_GT[0]).to(torch.uint8)
    for b in _FP4_GT[1:]:
        idx = idx + (a > b).to(torch.uint8)
    for b in _FP4_GE:
        idx = idx + (a >= b).to(torch.uint8)
    return idx + (x < 0).to(torch.uint8) * 8


def decode_fp4(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 code (uint8, low 4 bits) -> float32."""
    table = torch.tensor(FP4_VALUES + tuple(-v for v in FP4_VALUES), dtype=torch.float32, device=codes.device)
    return table[(codes & 0xF).long()]


def pack_fp4(codes: torch.Tensor, k: int) -> torch.Tensor:
    """[..., K] codes -> [..., K/2] bytes; element 2j in the low nibble."""
    pairs = codes.reshape(-1, k // 2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).reshape(-1, k // 2)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """[R, K/2] bytes -> [R, K] codes. (flatten, not reshape(R, -1): that fails for R = 0.)"""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)


def encode_e8m0(amax: torch.Tensor, emax: int) -> torch.Tensor:
    """MX shared exponent of a block from its amax, as compressed-tensors >= 0.14 writes it.

    floor(log2(amax)) - emax, with amax first rounded up to the next power of two when its mantissa is
    >= 1.75; stored biased by 127 and clamped to [0, 254]. A zero block gets code 0.
    """
    mant, exp = torch.frexp(amax.float())  # amax = mant * 2**exp, mant in [0.5, 1)
    e = (exp - 1) + (mant >= 0.875).to(exp.dtype) - emax
    code = (e + E8M0_BIAS).clamp(0, 254)
    return torch.where(amax > 0, code, torch.zeros_like(code)).to(torch.uint8)


def decode_e8m0(codes: torch.Tensor) -> torch.Tensor:
    """uint8 E8M0 -> float32 2**(code-127); 0xFF is NaN."""
    val = torch.exp2(codes.to(torch.float32) - E8M0_BIAS)
    return torch.where(codes == 255, torch.full_like(val, float("nan")), val)


def pack_int32(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed ints [R, C] -> int32 [R, ceil(C*bits/32)] packed along dim 1, element 0 in the lowest bits,
    stored with the +2**(bits-1) offset (compressed-tensors pack-quantized)."""
    per = 32 // bits
    rows, cols = q.shape
    words = -(-cols // per)
    u = (q.to(torch.int64) + (1 << (bits - 1))) & ((1 << bits) - 1)
    u = torch.nn.functional.pad(u, (0, words * per - cols)).reshape(rows, words, per)
    shifts = torch.arange(per, dtype=torch.int64, device=q.device) * bits
    packed = (u << shifts).sum(dim=-1)
    # reinterpret the low 32 bits as signed int32
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of pack_int32: int32 [R, W] -> signed int32 values [R, cols]."""
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int32, device=packed.device) * bits
    u = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return u.reshape(packed.shape[0], -1)[:, :cols] - (1 << (bits - 1))


def round_half_even(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)  # torch.round rounds half to even
