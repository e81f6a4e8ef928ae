"""quantops.formats against FORMATS.md, with independent references written here in plain Python
(nearest-value tables, IEEE bit manipulation through `struct`, bit-by-bit int32 packing).

Error bounds are derived from each format's step size and stated in each test; the weights are random (rows of
different magnitudes, with outliers), with odd N and K where the format allows it.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from torch.fx.proxy import GraphAppendingTracer, Proxy

from quantops.formats import (
    dequantize_activation,
    dequantize_weight,
    quantize_activation,
    quantize_weight,
    representable,
    tensor_specs,
    validate_tensors,
)
from quantops.formats.elements import (
    FP4_VALUES,
    cast_fp8,
    decode_e8m0,
    decode_fp4,
    encode_e8m0,
    encode_fp4,
    pack_fp4,
    pack_int32,
    unpack_fp4,
    unpack_int32,
)
from quantops.formats.fp4_packed import global_scale_from_amax
from quantops.formats.pack_quantized import column_scales
from quantops.schemes import PRESETS, get_scheme

FP8 = torch.float8_e4m3fn
# unit roundoff of the dtype scales are stored in (the relative error of storing an fp32 scale)
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def random_weight(n, k, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * (0.1 + torch.rand(n, 1, generator=g))  # rows of different magnitude
    w[:, :: max(1, k // 7)] *= 4  # a few outliers per row
    return w.to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# Independent references


def fp4_ref(x: float) -> int:
    """E2M1 code of x: nearest of the 8 magnitudes, ties to the even code, saturating at 6; sign in bit 3."""
    a = min(abs(x), 6.0)
    dists = [abs(a - v) for v in FP4_VALUES]
    best = min(dists)
    idx = min(i for i, d in enumerate(dists) if d == best and (i % 2 == 0 or dists.count(best) == 1))
    return idx | (8 if x < 0 else 0)


E4M3_POSITIVE = sorted(
    ((m / 8) * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7), (e << 3) | m)
    for e in range(16)
    for m in range(8)
    if (e, m) != (15, 7)  # 0x7F is NaN
)


def e4m3_ref(x: float) -> float:
    """Round a non-negative float to e4m3 (nearest, ties to the even code), saturating at 448."""
    best = min(E4M3_POSITIVE, key=lambda vc: (abs(vc[0] - x), vc[1] % 2))
    return best[0]


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def e8m0_ref(amax: float, emax: int) -> int:
    """MX shared exponent from the float32 bit pattern: add a quarter of the mantissa range so that a mantissa
    >= 1.75 carries into the exponent, keep the exponent field, subtract emax, clamp to [0, 254]."""
    if amax == 0:
        return 0
    bits = f32_bits(amax)
    exp_field = ((bits + (1 << 21)) >> 23) & 0xFF
    if exp_field == 0:  # subnormal amax: its exponent is below -126, clamped anyway
        return 0
    return max(0, min(254, exp_field - 127 - emax + 127))


def pack_ref(rows: list[list[int]], bits: int) -> list[list[int]]:
    """Element i at bits bits*(i mod per) of word i // per, value + 2**(bits-1); words as signed int32."""
    per, mask, off = 32 // bits, (1 << bits) - 1, 1 << (bits - 1)
    out = []
    for row in rows:
        words = [0] * -(-len(row) // per)
        for i, v in enumerate(row):
            words[i // per] |= ((v + off) & mask) << (bits * (i % per))
        out.append([w - (1 << 32) if w >= 1 << 31 else w for w in words])
    return out


# ---------------------------------------------------------------------------------------------------------------
# FP4 E2M1


@pytest.mark.parametrize(
    "x, value",
    [
        (0.0, 0.0), (0.25, 0.0), (0.26, 0.5), (0.5, 0.5), (0.75, 1.0), (1.0, 1.0), (1.25, 1.0), (1.26, 1.5),
        (1.5, 1.5), (1.75, 2.0), (2.0, 2.0), (2.5, 2.0), (2.51, 3.0), (3.0, 3.0), (3.5, 4.0), (4.0, 4.0),
        (5.0, 4.0), (5.01, 6.0), (6.0, 6.0), (6.5, 6.0), (7.0, 6.0), (100.0, 6.0), (float("inf"), 6.0),
    ],
)
def test_fp4_rounding_table(x, value):
    """FORMATS.md: round-to-nearest-even on the E2M1 grid (ties go to the even code), saturation at ±6."""
    for sign in (1.0, -1.0):
        code = encode_fp4(torch.tensor([sign * x]))
        assert decode_fp4(code).item() == sign * value
        # the sign bit is set for negative inputs, also when they round to 0 (-0.0 itself encodes as +0)
        assert (code.item() >= 8) == (sign * x < 0)


def test_fp4_encode_matches_reference_on_a_dense_grid():
    xs = [i / 64 for i in range(-7 * 64, 7 * 64 + 1)] + [v + d for v in (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0) for d in (-1e-6, 1e-6)]
    xs += torch.randn(2000, generator=torch.Generator().manual_seed(1)).mul(3).tolist()
    codes = encode_fp4(torch.tensor(xs, dtype=torch.float32)).tolist()
    expected = [fp4_ref(struct.unpack("<f", struct.pack("<f", x))[0]) for x in xs]
    assert codes == expected


def test_fp4_nan_encodes_as_zero():
    """Documented behaviour: E2M1 has no NaN; NaN encodes as +0 (weights with NaN are rejected earlier)."""
    assert encode_fp4(torch.tensor([float("nan")])).item() == 0


def test_fp4_decode_all_16_codes():
    codes = torch.arange(16, dtype=torch.uint8)
    expected = list(FP4_VALUES) + [-v for v in FP4_VALUES]  # code 8 is -0.0
    got = decode_fp4(codes).tolist()
    assert got == expected
    assert math.copysign(1.0, got[8]) == -1.0
    # encode inverts decode for every code but -0 (code 8), which encodes back as +0 (x < 0 is false for -0.0)
    back = encode_fp4(decode_fp4(codes)).tolist()
    assert back == [c if c != 8 else 0 for c in range(16)]


def test_fp4_nibble_order():
    """byte = code[2j] | code[2j+1] << 4: the even element in the low nibble."""
    codes = torch.tensor([[1, 2, 3, 4, 15, 0, 8, 7]], dtype=torch.uint8)
    assert pack_fp4(codes, 8).tolist() == [[0x21, 0x43, 0x0F, 0x78]]
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 16, (5, 48), generator=g, dtype=torch.uint8)
    packed = pack_fp4(codes, 48)
    expected = [[codes[r, 2 * j].item() | (codes[r, 2 * j + 1].item() << 4) for j in range(24)] for r in range(5)]
    assert packed.dtype == torch.uint8 and packed.tolist() == expected
    assert torch.equal(unpack_fp4(packed), codes)


def test_fp4_unpack_of_zero_rows():
    assert unpack_fp4(torch.empty(0, 8, dtype=torch.uint8)).shape == (0, 16)


# ---------------------------------------------------------------------------------------------------------------
# E8M0


def test_e8m0_decode_every_code():
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    got = decode_e8m0(codes)
    for c in range(255):
        assert got[c].item() == math.ldexp(1.0, c - 127), c
    assert math.isnan(got[255].item())  # 0xFF is NaN


def _amax_samples():
    vals = [0.0, 2.0**-149, 2.0**-130, 2.0**-126, 1e-30, 3.0e38]
    for e in range(-30, 31, 3):
        for m in (1.0, 1.25, 1.5, 1.7, 1.75, 1.8, 1.999):
            vals.append(math.ldexp(m, e))
        vals.append(math.nextafter(math.ldexp(1.75, e), 0.0))  # just below the round-up threshold
        vals.append(math.nextafter(math.ldexp(1.0, e), 0.0))  # just below a power of two
    vals += (torch.rand(500, generator=torch.Generator().manual_seed(3)) * 1000).tolist()
    return [struct.unpack("<f", struct.pack("<f", v))[0] for v in vals]


@pytest.mark.parametrize("emax", [2, 8], ids=["e2m1", "e4m3"])
def test_e8m0_encode_matches_bit_level_reference(emax):
    """floor(log2 amax) - emax (+1 when the mantissa is >= 1.75), biased by 127, clamped to [0, 254]."""
    vals = _amax_samples()
    got = encode_e8m0(torch.tensor(vals, dtype=torch.float32), emax).tolist()
    assert got == [e8m0_ref(v, emax) for v in vals]


@pytest.mark.parametrize("emax", [2, 8])
def test_e8m0_round_up_rule_and_ocp_rule(emax):
    """Below a mantissa of 1.75 it is exactly the OCP rule floor(log2(amax)) - emax; at 1.75 it rounds up."""
    for e in range(-10, 11):
        for m, up in ((1.0, 0), (1.5, 0), (1.7499, 0), (1.75, 1), (1.9, 1)):
            amax = math.ldexp(m, e)
            code = encode_e8m0(torch.tensor([amax]), emax).item()
            assert code == 127 + math.floor(math.log2(amax)) - emax + up, (amax, emax)


def test_e8m0_clamps_and_zero_blocks():
    assert encode_e8m0(torch.tensor([0.0]), 2).item() == 0  # a zero block: code 0 (there is no E8M0 zero)
    assert encode_e8m0(torch.tensor([2.0**-140]), 2).item() == 0  # exponent below -127: clamped to 0
    assert encode_e8m0(torch.tensor([1.8 * 2.0**127]), 0).item() == 254  # 255 would be NaN: clamped to 254
    assert encode_e8m0(torch.tensor([1.0]), 2).item() == 125
    assert encode_e8m0(torch.tensor([1.0]), 8).item() == 119
    for name in ("MXFP4A16", "MXFP8A16"):  # a zero block in a weight: code 0 (2**-127), elements 0
        w = random_weight(4, 64)
        w[2, 32:] = 0
        t = quantize_weight(w, name)
        assert t["weight_scale"][2, 1].item() == 0 and t["weight_scale"][2, 0].item() > 0
        assert not bool(dequantize_weight(t, name)[2, 32:].any())


def test_mx_scale_keeps_the_block_within_the_element_range():
    """With the round-up rule the scaled block max is < 7 for E2M1 (saturates by at most one step) and < 448 for
    E4M3 (never saturates)."""
    amax = torch.tensor(_amax_samples()[6:], dtype=torch.float32)  # skip the clamped extremes
    amax = amax[(amax > 2.0**-100) & (amax < 2.0**100)]
    for emax, bound in ((2, 7.0), (8, 448.0)):
        assert bool((amax / decode_e8m0(encode_e8m0(amax, emax)) < bound).all())


# ---------------------------------------------------------------------------------------------------------------
# int32 packing


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("cols", [1, 5, 8, 9, 16, 31, 33, 202])
def test_pack_int32_matches_bit_level_reference(bits, cols):
    g = torch.Generator().manual_seed(cols)
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
    q = torch.randint(lo, hi, (3, cols), generator=g, dtype=torch.int32)
    q[0, 0], q[-1, -1] = lo, hi - 1  # both ends of the range
    packed = pack_int32(q, bits)
    assert packed.dtype == torch.int32 and packed.shape == (3, -(-cols * bits // 32))
    assert packed.tolist() == pack_ref(q.tolist(), bits)
    assert torch.equal(unpack_int32(packed, bits, cols), q)


def test_pack_int32_offsets_and_padding():
    # int4: stored as q + 8; element 0 in the lowest nibble; the unused nibbles of the last word are zero
    assert pack_int32(torch.tensor([[-8, 7, 0]]), 4).tolist() == [[0x0 | (0xF << 4) | (0x8 << 8)]]
    # int8: stored as q + 128
    assert pack_int32(torch.tensor([[-128, 127, 0, -1]]), 8).tolist() == [[0x7F80FF00]]
    word = pack_int32(torch.tensor([[7] * 8]), 4).item()
    assert word == -1  # 0xFFFFFFFF as signed int32
    assert pack_int32(torch.tensor([[1, 2, 3]]), 8).item() >> 24 == 0  # padding byte is 0, not the +128 offset


def test_zero_points_are_packed_along_n():
    """W4A16_ASYM: weight_zero_point int32 [ceil(N/8), G], zero point of row n in nibble n % 8 of word n // 8,
    with the +8 offset; each group's minimum maps to within half a step of -8."""
    s = get_scheme("W4A16_ASYM{group_size=32}")
    n, k = 203, 96
    w = random_weight(n, k)
    t = quantize_weight(w, s)
    zp_packed = t["weight_zero_point"]
    assert zp_packed.shape == (26, 3) and zp_packed.dtype == torch.int32
    words = zp_packed.tolist()
    zp = [[((words[r // 8][g] & 0xFFFFFFFF) >> (4 * (r % 8)) & 0xF) - 8 for g in range(3)] for r in range(n)]
    # repacking by the reference (packing along N = packing the transpose along its rows) gives the same words
    assert pack_ref([list(col) for col in zip(*zp)], 4) == [list(col) for col in zip(*words)]
    for nib in range(n % 8, 8):  # the last word's unused nibbles (rows 203..207) are zero
        assert all((words[-1][g] & 0xFFFFFFFF) >> (4 * nib) & 0xF == 0 for g in range(3))
    lo = w.reshape(n, 3, 32).amin(dim=-1).clamp(max=0)
    mapped = lo / t["weight_scale"].float() + torch.tensor(zp, dtype=torch.float32)
    assert bool(((mapped + 8).abs() <= 0.5 + 1e-4).all())


# ---------------------------------------------------------------------------------------------------------------
# NVFP4 two-level scaling, FP8 clamp, bad values


def test_nvfp4_global_and_block_scales():
    """weight_global_scale = 448*6/amax (fp32); block scale = e4m3(global * amax(block) / 6)."""
    s = get_scheme("NVFP4A16")
    w = random_weight(72, 64)
    w[5, 16:32] = 0  # one zero block
    t = quantize_weight(w, s)
    amax = np.float32(w.abs().max().item())
    assert t["weight_global_scale"].dtype == torch.float32
    # torch evaluates `2688 / tensor` as 2688 * (1 / amax), two fp32 roundings, exactly as compressed-tensors
    # does (its decompress must reproduce our bits): equal to that, and within 1 ulp of the true quotient
    assert t["weight_global_scale"].item() == float(np.float32(2688.0) * (np.float32(1.0) / amax))
    assert abs(t["weight_global_scale"].item() - 2688.0 / float(amax)) <= float(np.spacing(np.float32(2688.0) / amax))
    gs = t["weight_global_scale"].item()
    block_amax = w.reshape(72, 4, 16).abs().amax(dim=-1).tolist()
    sf = t["weight_scale"].float().tolist()
    for r in range(72):
        for b in range(4):
            expected = e4m3_ref(gs * block_amax[r][b] / 6) if block_amax[r][b] else 0.125
            assert sf[r][b] == expected, (r, b)
    assert sf[5][1] == 0.125  # the zero block: scale 0 would divide by zero, compressed-tensors writes its eps 0.125
    assert torch.equal(dequantize_weight(t, s)[5, 16:32], torch.zeros(16))


def test_nvfp4_all_zero_weight():
    """All-zero weight: global scale 1.0 (not 448*6/0), every block scale 0.125, every code 0, dequantizes to 0."""
    s = get_scheme("NVFP4A16")
    t = quantize_weight(torch.zeros(32, 64, dtype=torch.bfloat16), s)
    assert t["weight_global_scale"].tolist() == [1.0]
    assert bool((t["weight_scale"].float() == 0.125).all()) and not bool(t["weight_packed"].any())
    assert not bool(dequantize_weight(t, s).any())


def test_nvfp4_global_scale_overflow_falls_back_to_one():
    """amax so small that 448*6/amax overflows fp32: global scale 1.0 (as compressed-tensors), tensors stay valid."""
    assert global_scale_from_amax(torch.tensor(1e-37)).tolist() == [1.0]
    s = get_scheme("NVFP4A16")
    t = quantize_weight(torch.full((4, 32), 1e-37), s)
    validate_tensors(t, s, 4, 32)


def test_fp8_cast_saturates():
    """cast_fp8 clamps to ±448 before the cast (on CUDA the plain cast turns out-of-range values into NaN)."""
    x = torch.tensor([449.0, 464.0, 480.0, 1e6, -1e6, float("inf"), -448.0, 0.0])
    assert cast_fp8(x).float().tolist() == [448.0, 448.0, 448.0, 448.0, -448.0, 448.0, -448.0, 0.0]


def test_fp8_cast_clamps_before_casting():
    """The clamp itself, seen in the recorded graph: the CPU casts of torch 2.13 (eager and Inductor) happen to
    saturate already, so only the graph shows that cast_fp8 does not rely on it."""
    graph = torch.fx.Graph()
    out = cast_fp8(Proxy(graph.placeholder("x"), GraphAppendingTracer(graph)))
    clamp, cast = out.node.args[0], out.node
    assert cast.target == "to" and cast.args[1] == FP8
    assert clamp.target == "clamp" and clamp.args[1:] == (-448.0, 448.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_weights_never_nan_even_with_rounded_scales(dtype):
    """Scales stored in bf16/fp16 may round below amax/448, so w/s slightly exceeds 448: it must saturate."""
    for name in ("FP8", "FP8_DYNAMIC", "FP8_BLOCK"):
        t = quantize_weight(random_weight(200, 200, dtype), name, input_amax=torch.tensor(1.0))
        q = t["weight"].float()
        assert not bool(q.isnan().any()) and q.abs().max().item() <= 448.0


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_quantize_weight_rejects_nan_and_inf(name, bad):
    s = get_scheme(name)
    w = random_weight(8, 128)
    w[3, 17] = bad
    with pytest.raises(ValueError, match="weight has 1 NaN/Inf"):
        quantize_weight(w, s, input_amax=torch.tensor(1.0))


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_zero_weight_and_zero_rows(name, dtype):
    """All-zero weights (and a zero row in a random weight) quantize to valid tensors with no NaN that
    dequantize to exactly 0 there. (fp16 once stored a 0 scale for such rows: 0/0 = NaN weights.)"""
    s = get_scheme(name)
    n, k = 16, 128
    for w in (torch.zeros(n, k, dtype=dtype), random_weight(n, k, dtype).index_fill_(0, torch.tensor([3]), 0)):
        t = quantize_weight(w, s, input_amax=torch.tensor(0.0) if w.any() else torch.tensor(2.0))
        validate_tensors(t, s, n, k)
        d = dequantize_weight(t, s)
        assert not bool(d.isnan().any())
        assert not bool(d[3].any())
        if not w.any():
            assert not bool(d.any())


def _valid(name, n=72, k=128):
    s = get_scheme(name)
    return s, quantize_weight(random_weight(n, k), s, input_amax=torch.tensor(2.0)), n, k


@pytest.mark.parametrize(
    "name, tensor, value, message",
    [
        ("FP8_DYNAMIC", "weight_scale", float("nan"), "weight_scale has 1 NaN/Inf"),
        ("FP8_DYNAMIC", "weight_scale", float("inf"), "weight_scale has 1 NaN/Inf"),
        ("FP8", "input_scale", float("nan"), "input_scale has 1 NaN/Inf"),
        ("FP8_DYNAMIC", "weight", float("nan"), "weight has NaN e4m3 values"),
        ("W4A16", "weight_scale", float("nan"), "weight_scale has 1 NaN/Inf"),
        ("NVFP4", "weight_scale", float("nan"), "weight_scale has NaN e4m3 scales"),
        ("NVFP4", "weight_global_scale", float("inf"), "weight_global_scale has 1 NaN/Inf"),
        ("NVFP4", "input_global_scale", float("nan"), "input_global_scale has 1 NaN/Inf"),
        ("MXFP4", "weight_scale", 255, "weight_scale has E8M0 code 0xFF"),
        ("MXFP8A16", "weight_scale", 255, "weight_scale has E8M0 code 0xFF"),
    ],
)
def test_validate_rejects_nan_values(name, tensor, value, message):
    s, t, n, k = _valid(name)
    validate_tensors(t, s, n, k, where="model.layers.0.mlp")
    bad = t[tensor].clone()
    if bad.dtype == FP8:
        bad.view(torch.uint8).view(-1)[0] = 0x7F  # e4m3 NaN
    else:
        bad.view(-1)[0] = value
    with pytest.raises(ValueError, match=f"model.layers.0.mlp: {message}"):
        validate_tensors({**t, tensor: bad}, s, n, k, where="model.layers.0.mlp")


def test_validate_rejects_malformed_checkpoints():
    s, t, n, k = _valid("W4A16_ASYM{actorder=True,group_size=32}", n=203, k=128)
    validate_tensors(t, s, n, k)
    cases = [
        ({k_: v for k_, v in t.items() if k_ != "weight_zero_point"}, "missing weight_zero_point"),
        ({**t, "bias_scale": torch.ones(1)}, "unexpected tensors bias_scale"),
        ({**t, "weight_packed": t["weight_packed"][:, :-1]}, r"weight_packed has shape \(203, 15\), expected \(203, 16\)"),
        ({**t, "weight_packed": t["weight_packed"].to(torch.int64)}, "weight_packed has dtype torch.int64, expected torch.int32"),
        ({**t, "weight_scale": t["weight_scale"].to(torch.int32)}, "weight_scale has dtype torch.int32, expected bf16/fp16/fp32"),
        ({**t, "weight_shape": torch.tensor([203, 96])}, r"weight_shape is \(203, 96\), but the layer is 203x128"),
        ({**t, "weight_g_idx": torch.full((128,), 4, dtype=torch.int32)}, r"weight_g_idx has group indices outside \[0, 4\)"),
        ({**t, "weight_zero_point": t["weight_zero_point"][:-1]}, r"weight_zero_point has shape \(25, 4\), expected \(26, 4\)"),
    ]
    for tensors, message in cases:
        with pytest.raises(ValueError, match=f"L7: {message}"):
            validate_tensors(tensors, s, n, k, where="L7")


def test_representable_and_shape_errors():
    assert representable("W4A16", 200, 256) is None
    assert "K=200 is not a multiple of the W4A16 group size 128" in representable("W4A16", 200, 200)
    assert representable("NVFP4", 200, 40) == "K=40 is not a multiple of the NVFP4 group size 16"
    assert representable("FP8_BLOCK", 200, 200) is None  # partial 128x128 tiles are allowed
    with pytest.raises(ValueError, match="not a multiple"):
        quantize_weight(random_weight(8, 200), "MXFP8A16")
    with pytest.raises(ValueError, match="2-D float"):
        quantize_weight(torch.zeros(8, 32, dtype=torch.int32), "MXFP8A16")
    with pytest.raises(ValueError, match="pass input_amax"):
        quantize_weight(random_weight(8, 32), "NVFP4")


# ---------------------------------------------------------------------------------------------------------------
# Round-trip error bounds per scheme


CASES = [
    ("FP8", 203, 200),
    ("FP8_DYNAMIC", 203, 200),
    ("FP8_BLOCK", 200, 320),
    ("FP8_BLOCK", 200, 200),
    ("FP8_BLOCK", 72, 130),
    ("W8A8", 203, 200),
    ("W8A8{weight_strategy=tensor}", 72, 200),
    ("W4A16", 200, 256),
    ("W4A16{group_size=32}", 203, 96),
    ("W4A16{group_size=64}", 72, 320),
    ("W4A16{weight_strategy=channel,group_size=None}", 203, 200),
    ("W4A16{actorder=True}", 203, 256),
    ("W4A16_ASYM", 200, 256),
    ("W4A16_ASYM{group_size=32}", 203, 96),
    ("W4A16_ASYM{weight_strategy=channel,group_size=None}", 72, 202),
    ("W4A16_ASYM{actorder=True,group_size=64}", 203, 192),
    ("W8A16", 200, 256),
    ("W8A16{group_size=32,symmetric=False}", 203, 96),
    ("W8A16{weight_strategy=channel,group_size=None}", 72, 202),
    ("W4AFP8", 203, 256),
    ("NVFP4", 203, 64),
    ("NVFP4A16", 72, 48),
    ("MXFP4", 203, 96),
    ("MXFP4A16", 72, 64),
    ("MXFP8", 203, 96),
    ("MXFP8A16", 72, 64),
]


def test_bound_cases_cover_every_preset():
    assert {get_scheme(c[0]).name for c in CASES} == set(PRESETS)


def element_scales(t, s, n, k):
    """Per-element effective scale [N, K] (fp32) of the canonical tensors."""
    sc = t["weight_scale"]
    if s.format == "pack-quantized":
        return column_scales(sc.float(), t.get("weight_g_idx"), s, k)
    if s.weight == "nvfp4":
        return (sc.float() / t["weight_global_scale"]).repeat_interleave(16, dim=1)
    if s.weight in ("mxfp4", "mxfp8"):
        return decode_e8m0(sc).repeat_interleave(32, dim=1)
    if s.weight_strategy == "block":
        bn, bk = s.block_size
        return sc.float().repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]
    return sc.float().expand(n, k)


def error_bound(s, w, S, dtype):
    """Largest |w - dequantize(quantize(w))| the format allows, elementwise, from its step size:
    - int, symmetric: half a step, S/2 (the stored scale is never so far below amax/qmax that a value clamps by
      more than that: qmax * unit roundoff <= 0.5 for every dtype);
    - int, asymmetric: S/2 from rounding, plus at the top of the range (qmax - qmin) * u * S, because the
      stored scale may be a unit roundoff u below (max - min)/(qmax - qmin);
    - e4m3 elements: half an e4m3 ulp, |w| * 2**-4, or S * 2**-10 in e4m3's subnormal range;
    - E2M1 elements: the half-step is 1/4 of the value's binade, max(S, |w|) / 4 (it covers the saturation of
      an MX block max, < 7 S -> 6 S, and of an NVFP4 block whose e4m3 scale rounded down by <= 2**-4).
    A 1e-6 relative slack covers fp32 arithmetic."""
    a = w.float().abs()
    if s.weight in ("int4", "int8"):
        qmax = (1 << (s.weight_bits - 1)) - 1
        extra = 0.0 if s.symmetric else (2 * qmax + 1) * UNIT_ROUNDOFF[dtype]
        bound = S * (0.5 + extra)
    elif s.weight in ("fp8", "mxfp8"):
        bound = torch.maximum(a * 2.0**-4, S * 2.0**-10)
    else:
        bound = torch.maximum(S, a) / 4
    return bound * (1 + 1e-6) + 1e-30


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}")
def test_round_trip_error_bound(case, dtype):
    key, n, k = case
    s = get_scheme(key)
    w = random_weight(n, k, dtype, seed=n + k)
    t = quantize_weight(w, s, input_amax=torch.tensor(2.0))
    validate_tensors(t, s, n, k)
    assert {name: (tuple(v.shape)) for name, v in t.items()} == {name: spec[0] for name, spec in tensor_specs(s, n, k).items()}
    deq = dequantize_weight(t, s)
    assert deq.dtype == torch.float32 and deq.shape == (n, k)
    S = element_scales(t, s, n, k)
    if s.weight == "nvfp4":  # the bound below assumes normal e4m3 block scales (true for these weights)
        assert bool((t["weight_scale"].float() >= 2.0**-6).all())
    err = (w.float() - deq).abs()
    bound = error_bound(s, w, S, dtype)
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"error reaches {worst:.3f} x the bound"
    # a bound that is never approached would test nothing: the worst element uses a good part of it
    assert worst > 0.3
    # dequantize in another dtype = the fp32 result cast once
    assert torch.equal(dequantize_weight(t, s, torch.bfloat16), deq.to(torch.bfloat16))


def test_actorder_groups_follow_g_idx():
    """Act-order: each column uses the scale of its g_idx group; the default g_idx groups columns by norm."""
    s = get_scheme("W4A16{actorder=True,group_size=32}")
    w = random_weight(16, 128)
    t = quantize_weight(w, s)
    g_idx = t["weight_g_idx"]
    assert g_idx.dtype == torch.int32 and sorted(g_idx.tolist()) == [i // 32 for i in range(128)]
    norms = w.norm(dim=0)
    order = torch.argsort(norms, descending=True, stable=True)
    assert g_idx[order].tolist() == [i // 32 for i in range(128)]
    # each group's scale is amax/7 over exactly its columns
    for grp in range(4):
        cols = (g_idx == grp).nonzero().flatten()
        assert torch.allclose(t["weight_scale"][:, grp], w[:, cols].abs().amax(dim=1) / 7, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Activation quantizers


def _act_cases():
    return [
        ("FP8", 200),  # static per-tensor
        ("FP8{act_dynamic=True}", 200),  # dynamic per-tensor
        ("FP8_DYNAMIC", 200),  # per token
        ("FP8_BLOCK", 200),  # per 1x128 group, partial last group
        ("FP8_BLOCK", 256),
        ("W4AFP8", 256),
        ("W8A8", 200),  # int8 per token, symmetric
        ("W8A8{act_symmetric=False}", 200),  # int8 per token with zero point
        ("W8A8{act_dynamic=False,act_strategy=tensor}", 200),  # int8 static
        ("W8A8{act_dynamic=False,act_strategy=tensor,act_symmetric=False}", 200),
        ("NVFP4", 64),
        ("MXFP4", 96),
        ("MXFP8", 96),
    ]


def _static(s, x):
    """Calibrated static tensors covering x's range, as quantize_weight writes them."""
    if s.act_dynamic and s.act != "nvfp4":
        return {}
    xf = x.float()
    amax = (xf.amin(), xf.amax()) if (s.act == "int8" and not s.act_symmetric) else xf.abs().amax()
    t = quantize_weight(random_weight(8, 256 if s.k_multiple > 1 else 8), s, input_amax=amax)
    return {k: v for k, v in t.items() if k.startswith("input_")}


def act_bound(s, x, xq, params, k):
    """Elementwise bound of |x - dequantize(quantize(x))| (see error_bound for the derivations)."""
    a = x.float().abs()
    if s.act == "int8":
        S = params[0].float().expand_as(a) if params[0].numel() > 1 else params[0].float()
        extra = 0.0 if len(params) == 1 else 255 * 2.0**-24
        if not s.act_dynamic:  # a stored (rounded) static scale
            extra += 255 * 2.0**-24
        return S * (0.5 + extra) * (1 + 1e-6)
    if s.act == "fp8":
        S = params[0]
        if s.act_strategy == "group":
            S = S.repeat_interleave(s.act_group_size, dim=1)[:, :k]
        return torch.maximum(a * 2.0**-4, S * 2.0**-10) * (1 + 1e-6) + 1e-30
    if s.act == "nvfp4":
        S = (params[0].float() / params[1]).repeat_interleave(16, dim=1)
    elif s.act == "mxfp4":
        S = decode_e8m0(params[0]).repeat_interleave(32, dim=1)
    else:  # mxfp8
        S = decode_e8m0(params[0]).repeat_interleave(32, dim=1)
        return torch.maximum(a * 2.0**-4, S * 2.0**-10) * (1 + 1e-6) + 1e-30
    return torch.maximum(S, a) / 4 * (1 + 1e-6) + 1e-30


@pytest.mark.parametrize("m", [0, 1, 37])
@pytest.mark.parametrize("case", _act_cases(), ids=lambda c: f"{c[0]}-K{c[1]}")
def test_activation_round_trip(case, m):
    key, k = case
    s = get_scheme(key)
    x = random_weight(max(m, 1), k, torch.bfloat16, seed=k + m)[:m]
    static = _static(s, x) if m else _static(s, random_weight(4, k, torch.bfloat16))
    xq, params = quantize_activation(x, s, k, static)
    assert xq.shape[0] == m and all(p.dtype in (torch.float32, torch.int32, torch.uint8, FP8) for p in params)
    deq = dequantize_activation(xq, params, s, k)
    assert deq.shape == (m, k) and deq.dtype == torch.float32
    if m == 0:
        return
    err = (x.float() - deq).abs()
    ratio = (err / act_bound(s, x, xq, params, k)).max().item()
    assert ratio <= 1.0, f"error reaches {ratio:.3f} x the bound"


def test_activation_row_of_zeros():
    """An all-zero row gets a tiny scale (no 0/0) and dequantizes to exactly 0."""
    for key, k in _act_cases():
        s = get_scheme(key)
        x = random_weight(3, k, torch.bfloat16)
        x[1] = 0
        xq, params = quantize_activation(x, s, k, _static(s, x))
        deq = dequantize_activation(xq, params, s, k)
        assert not bool(deq.isnan().any()) and not bool(deq[1].any()), key


def test_static_activations_saturate_beyond_the_calibrated_range():
    """FP8 static: values beyond 448 * input_scale clamp to ±448 * input_scale (never NaN); int8 to [-128, 127]."""
    x = torch.tensor([[1.0, -1.0, 50.0, -1e4]])
    s = get_scheme("FP8")
    scale = torch.tensor([2.0 / 448])
    xq, params = quantize_activation(x, s, 4, {"input_scale": scale})
    assert dequantize_activation(xq, params, s, 4).tolist() == [[1.0, -1.0, 2.0, -2.0]]
    s = get_scheme("W8A8{act_dynamic=False,act_strategy=tensor}")
    xq, params = quantize_activation(x, s, 4, {"input_scale": torch.tensor([0.01])})
    assert xq.tolist() == [[100, -100, 127, -128]]


def test_int8_asymmetric_zero_point():
    """Per-token asymmetric int8: x = (q - zp) * scale, scale = (max - min) / 255, the row min maps to -128."""
    s = get_scheme("W8A8{act_symmetric=False}")
    x = torch.tensor([[0.5, 1.0, 2.0, 3.0], [-4.0, -1.0, -0.5, 0.0], [-1.0, 0.0, 0.25, 3.0]])
    xq, (scale, zp) = quantize_activation(x, s, 4)
    assert zp.dtype == torch.int32 and scale.shape == zp.shape == (3, 1)
    assert torch.allclose(scale.flatten(), torch.tensor([3.0, 4.0, 4.0]) / 255)  # ranges include 0
    assert xq[2, 0].item() == -128 and xq[0, 3].item() == 127 and xq[1, 0].item() == -128
    assert (x - dequantize_activation(xq, [scale, zp], s, 4)).abs().max().item() <= scale.max().item() / 2 * (1 + 1e-5)


@pytest.mark.parametrize("name, k", [("NVFP4", 64), ("MXFP4", 96), ("MXFP8", 96)])
def test_activation_quantizer_is_the_weight_quantizer(name, k):
    """NVFP4/MX activations are quantized exactly like weights of the same format (same codes, same scales)."""
    s = get_scheme(name)
    x = random_weight(9, k, torch.bfloat16)
    static = {}
    if s.act == "nvfp4":
        static["input_global_scale"] = global_scale_from_amax(x.float().abs().amax())
    xq, params = quantize_activation(x, s, k, static)
    t = quantize_weight(x, s.replace(act=None, act_strategy=None, act_group_size=None))
    assert torch.equal(xq.view(torch.uint8), t[next(iter(t))].view(torch.uint8))
    assert torch.equal(params[0].view(torch.uint8), t["weight_scale"].view(torch.uint8))


@pytest.mark.parametrize("case", _act_cases(), ids=lambda c: f"{c[0]}-K{c[1]}")
def test_activation_quantizers_trace_on_fx_proxies(case):
    """Kernels record quantize_activation into the compiled graph: it must run on torch.fx.Proxy values (no
    data-dependent branches, no tensor constants), and the recorded graph must compute the same bits."""
    key, k = case
    s = get_scheme(key)
    x = random_weight(11, k, torch.bfloat16, seed=k)
    static = _static(s, x)
    graph = torch.fx.Graph()
    tracer = GraphAppendingTracer(graph)
    xp = Proxy(graph.placeholder("x"), tracer)
    sp = {name: Proxy(graph.placeholder(name), tracer) for name in static}
    q, params = quantize_activation(xp, s, k, sp)
    assert isinstance(q, Proxy) and all(isinstance(p, Proxy) for p in params)
    graph.output((q.node, [p.node for p in params]))
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    assert not [n for n in gm.graph.nodes if n.op == "get_attr"]  # no tensor constants were recorded
    for m in (11, 1, 0):  # one graph, any M
        q_fx, p_fx = gm(x[:m], *static.values())
        q_eager, p_eager = quantize_activation(x[:m], s, k, static)
        for a, b in zip([q_fx, *p_fx], [q_eager, *p_eager]):
            assert a.dtype == b.dtype and a.shape == b.shape
            if a.dtype == FP8:
                a, b = a.view(torch.uint8), b.view(torch.uint8)
            assert torch.equal(a, b)
