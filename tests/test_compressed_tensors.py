"""quantops.formats against compressed-tensors, an independent implementation of the same checkpoint formats.

Two directions, every format, bit for bit:
(a) compressed-tensors' compressor `decompress` of the tensors OUR quantizer wrote == our `dequantize_weight`;
(b) our `dequantize_weight` of the tensors ITS `compress` wrote (from its own `calculate_qparams` on a random
    weight, as llm-compressor's min-max observer calls it) == its `decompress`; and those tensors pass our
    `validate_tensors` (same names, shapes and dtypes).

Dequantization must agree exactly. The quantizers need not, and differ by design in places:
- int: compressed-tensors' symmetric scale is amax / 7.5 (int4) or amax / 127.5 (int8), quantops' amax / 7 and
  amax / 127 (no value needs clamping); both store round(w / s) in [-8, 7] / [-128, 127].
- it divides in the weight dtype (bf16 w / bf16 s), quantops in fp32: a few elements may round differently.
- an all-zero group gets scale eps(dtype) there, quantops' smallest normal; both dequantize to exactly 0.
Where the conventions are the same (FP8 and MX scales, fp32 weights) the quantizers agree exactly, and a test says so.

compressed-tensors 0.20 has no act-order `weight_g_idx` (its actorder="group" was removed); act-order tensors
are checked by decompressing their column-permuted equivalent (groups made contiguous), see test_actorder_*.
compressed-tensors 0.20 infers "int-quantized" for W4AFP8 (its pack-quantized compressor refuses float
activations); quantops stores W4AFP8 as pack-quantized, so those tests name the pack-quantized compressor.
"""

from __future__ import annotations

import math

import pytest
import torch

ct = pytest.importorskip("compressed_tensors")

from compressed_tensors.compressors import BaseCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme  # noqa: E402
from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam  # noqa: E402

from quantops.formats import dequantize_weight, quantize_weight, validate_tensors  # noqa: E402
from quantops.schemes import PRESETS, QuantScheme, get_scheme  # noqa: E402

STATIC_ACT = ("input_scale", "input_zero_point", "input_global_scale")


# ---------------------------------------------------------------------------------------------------------------
# Our scheme -> a compressed-tensors QuantizationScheme with the same weight format


def ct_weight_args(s: QuantScheme) -> QuantizationArgs:
    if s.weight in ("int4", "int8"):
        if s.weight_strategy == "group":
            return QuantizationArgs(num_bits=s.weight_bits, type="int", strategy="group", group_size=s.group_size, symmetric=s.symmetric)
        return QuantizationArgs(num_bits=s.weight_bits, type="int", strategy=s.weight_strategy, symmetric=s.symmetric)
    if s.weight == "fp8":
        if s.weight_strategy == "block":
            return QuantizationArgs(num_bits=8, type="float", strategy="block", block_structure=list(s.block_size))
        return QuantizationArgs(num_bits=8, type="float", strategy=s.weight_strategy)
    if s.weight == "nvfp4":
        return QuantizationArgs(
            num_bits=4, type="float", strategy="tensor_group", group_size=16, scale_dtype=torch.float8_e4m3fn, zp_dtype=torch.float8_e4m3fn
        )
    bits = 4 if s.weight == "mxfp4" else 8
    return QuantizationArgs(num_bits=bits, type="float", strategy="group", group_size=32, scale_dtype=torch.uint8, zp_dtype=torch.uint8)


def ct_scheme(s: QuantScheme) -> QuantizationScheme:
    # Weight args only: the compressors look at the weights (and drop zero points of symmetric ones).
    return QuantizationScheme(targets=["Linear"], weights=ct_weight_args(s), format=s.format)


def compressor(s: QuantScheme):
    return BaseCompressor.get_value_from_registry(s.format)


def ct_decompress(tensors: dict, s: QuantScheme) -> torch.Tensor:
    weight_only = {k: v for k, v in tensors.items() if k not in STATIC_ACT}
    return compressor(s).decompress(weight_only, ct_scheme(s))["weight"]


def ct_quantize(w: torch.Tensor, s: QuantScheme) -> dict:
    """compressed-tensors' own quantization of w: min/max per scale group -> calculate_qparams -> compress."""
    args = ct_weight_args(s)
    n, k = w.shape
    gs = None
    if s.weight_strategy == "tensor":
        lo, hi = w.amin().reshape(1), w.amax().reshape(1)
    elif s.weight_strategy == "channel":
        lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    elif s.weight_strategy == "block":
        bn, bk = s.block_size
        nb, kb = -(-n // bn), -(-k // bk)
        padded = torch.nn.functional.pad(w, (0, kb * bk - k, 0, nb * bn - n))
        tiles = padded.reshape(nb, bn, kb, bk).transpose(1, 2).reshape(nb, kb, -1)
        lo, hi = tiles.amin(dim=-1), tiles.amax(dim=-1)
    else:
        groups = w.unflatten(-1, (k // s.group_size, s.group_size))
        lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    if s.weight == "nvfp4":
        gs = generate_gparam(w.amin(), w.amax())
    scale, zp = calculate_qparams(lo, hi, args, global_scale=gs)
    sd = {"weight": w, "weight_scale": scale, "weight_zero_point": zp}
    if gs is not None:
        sd["weight_global_scale"] = gs
    out = compressor(s).compress(sd, ct_scheme(s))
    # the activation tensors llm-compressor writes beside them, where our scheme has them
    if s.act == "nvfp4":
        out["input_global_scale"] = generate_gparam(torch.tensor(-3.0), torch.tensor(2.5))
    if s.act == "fp8" and not s.act_dynamic:
        out["input_scale"] = (torch.tensor([3.0]) / 448).to(w.dtype)
    return out


def random_weight(n, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g)  # rows of different magnitude
    w[:, :: max(1, k // 7)] *= 4  # a few outliers per row
    return w.to(dtype)


# (scheme, N, K): presets and variants, odd N, K not a multiple of the block where the format allows it.
CASES = [
    ("FP8", 203, 200),
    ("FP8_DYNAMIC", 203, 200),
    ("FP8_BLOCK", 200, 320),
    ("FP8_BLOCK", 72, 200),
    ("W8A8", 203, 200),
    ("W8A8{weight_strategy=tensor}", 72, 200),
    ("W4A16", 203, 256),
    ("W4A16{group_size=32}", 72, 96),
    ("W4A16{group_size=64}", 200, 192),
    ("W4A16{weight_strategy=channel,group_size=None}", 203, 202),
    ("W4A16_ASYM", 203, 256),
    ("W4A16_ASYM{group_size=32}", 72, 96),
    ("W4A16_ASYM{weight_strategy=channel,group_size=None}", 203, 202),
    ("W8A16", 203, 256),
    ("W8A16{weight_strategy=channel,group_size=None}", 72, 202),
    ("W8A16{symmetric=False,group_size=64}", 203, 192),
    ("W4AFP8", 200, 256),
    ("NVFP4", 203, 64),
    ("NVFP4A16", 72, 48),
    ("MXFP4", 203, 96),
    ("MXFP4A16", 72, 64),
    ("MXFP8", 203, 96),
    ("MXFP8A16", 72, 64),
]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _case_id(c):
    return f"{c[0]}-{c[1]}x{c[2]}"


def test_cases_cover_every_preset():
    named = {get_scheme(c[0]).name for c in CASES}
    assert named == set(PRESETS)


def test_preset_formats_match_compressed_tensors_inference():
    """compressed-tensors infers the same format from its preset of the same name (W4AFP8 excepted: see the
    module docstring)."""
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import preset_name_to_scheme

    for name, s in PRESETS.items():
        assert name in PRESET_SCHEMES
        inferred = infer_module_format(torch.nn.Linear, preset_name_to_scheme(name, ["Linear"])).value
        expected = "int-quantized" if name == "W4AFP8" else s.format
        assert inferred == expected, name


def _amax(s):
    # static activation calibration values where the scheme needs them
    if s.act == "int8" and not s.act_symmetric and not s.act_dynamic:
        return (torch.tensor(-2.0), torch.tensor(3.0))
    return torch.tensor(3.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_ct_decompress_of_our_tensors_equals_our_dequantize(case, dtype):
    """(a): compressed-tensors reads what quantops writes, bit for bit."""
    key, n, k = case
    s = get_scheme(key)
    w = random_weight(n, k, dtype)
    t = quantize_weight(w, s, input_amax=_amax(s))
    theirs = ct_decompress(t, s)
    ours = dequantize_weight(t, s, dtype=theirs.dtype)
    assert theirs.shape == (n, k)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_our_dequantize_of_ct_tensors_equals_ct_decompress(case, dtype):
    """(b): quantops reads what compressed-tensors writes, bit for bit, and accepts its tensors as valid."""
    key, n, k = case
    s = get_scheme(key)
    w = random_weight(n, k, dtype, seed=1)
    t = ct_quantize(w, s)
    validate_tensors(t, s, n, k, where="ct")
    theirs = ct_decompress(t, s)
    ours = dequantize_weight(t, s, dtype=theirs.dtype)
    assert torch.equal(ours, theirs)
    # sanity of the harness itself: it really quantized w (4-bit formats lose more on these outlier-heavy rows;
    # the elementwise bounds are in test_formats.py)
    rel = (theirs.float() - w.float()).norm() / w.float().norm()
    assert 0 < rel < (0.3 if s.weight_bits == 4 else 0.05)


@pytest.mark.parametrize("name", ["FP8", "FP8_DYNAMIC", "FP8_BLOCK", "MXFP4A16", "MXFP8A16"])
def test_quantizers_agree_exactly_where_conventions_agree(name):
    """FP8 scales are amax/448 in both; MX scales use the same E8M0 rule (mantissa >= 1.75 rounds up). With fp32
    weights both divide in fp32, so the stored tensors are identical, not just their dequantization."""
    s = get_scheme(name)
    n, k = (200, 320) if s.weight == "fp8" else (72, 128)
    w = random_weight(n, k, torch.float32, seed=2)
    ours = quantize_weight(w, s, input_amax=torch.tensor(3.0))
    theirs = ct_quantize(w, s)
    for name_ in ours:
        if name_ in STATIC_ACT:
            continue
        a, b = ours[name_], theirs[name_]
        assert a.dtype == b.dtype and a.shape == b.shape, name_
        if a.dtype == torch.float8_e4m3fn:
            a, b = a.view(torch.uint8), b.view(torch.uint8)
        assert torch.equal(a, b), name_


def test_nvfp4_quantizers_agree_on_global_scale_and_nearly_everywhere():
    """NVFP4: both take weight_global_scale = 448*6/amax (identical). The block scale is e4m3(gs*amax_b/6) in
    quantops and e4m3(gs*(amax_b/6)) there: fp32 rounding of the product may differ in the last bit, which can
    move a scale to the neighbouring e4m3 value only at an exact e4m3 rounding tie (rare)."""
    s = get_scheme("NVFP4A16")
    w = random_weight(203, 256, torch.float32, seed=3)
    ours, theirs = quantize_weight(w, s), ct_quantize(w, s)
    assert torch.equal(ours["weight_global_scale"], theirs["weight_global_scale"])
    same_scale = (ours["weight_scale"].view(torch.uint8) == theirs["weight_scale"].view(torch.uint8)).float().mean()
    same_bytes = (ours["weight_packed"] == theirs["weight_packed"]).float().mean()
    assert same_scale > 0.999 and same_bytes > 0.999


def test_int_quantizer_conventions_differ_as_documented():
    """Symmetric int4: quantops' scale is amax/7, compressed-tensors' amax/7.5 (stated in the module docstring).
    Both are valid checkpoints; this pins the difference so that a change on either side is noticed."""
    s = get_scheme("W4A16")
    w = random_weight(8, 128, torch.float32, seed=4)
    amax = w.unflatten(-1, (1, 128)).abs().amax(dim=-1)
    assert torch.allclose(quantize_weight(w, s)["weight_scale"], amax / 7, rtol=1e-6)
    assert torch.allclose(ct_quantize(w, s)["weight_scale"], amax / 7.5, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Act-order (weight_g_idx): compressed-tensors 0.20 cannot read it; check it through the permutation it stands for.


def _contiguous_equivalent(t: dict, s: QuantScheme, n: int, k: int):
    """An act-order checkpoint's weight with its columns sorted by group is an ordinary group-quantized
    checkpoint. Repack it with compressed-tensors' own helpers and return (tensors, order)."""
    order = torch.argsort(t["weight_g_idx"].long(), stable=True)
    q = unpack_from_int32(t["weight_packed"], s.weight_bits, torch.Size([n, k]))
    out = {
        "weight_packed": pack_to_int32(q[:, order].contiguous(), s.weight_bits),
        "weight_scale": t["weight_scale"],
        "weight_shape": t["weight_shape"],
    }
    if "weight_zero_point" in t:
        out["weight_zero_point"] = t["weight_zero_point"]
    return out, order


@pytest.mark.parametrize("key", ["W4A16{actorder=True}", "W4A16_ASYM{actorder=True,group_size=32}", "W8A16{actorder=True,group_size=64}"])
def test_actorder_matches_ct_decompress_of_the_permuted_checkpoint(key):
    s = get_scheme(key)
    n, k = 203, 256
    w = random_weight(n, k, torch.bfloat16, seed=5)
    t = quantize_weight(w, s)
    # the default act-order puts columns in norm order: the groups are not contiguous
    assert not torch.equal(t["weight_g_idx"], torch.arange(k, dtype=torch.int32) // s.group_size)
    contiguous, order = _contiguous_equivalent(t, s, n, k)
    theirs = ct_decompress(contiguous, s.replace(actorder=False))
    ours = dequantize_weight(t, s, dtype=theirs.dtype)
    assert torch.equal(ours[:, order], theirs)


def test_actorder_with_a_given_g_idx():
    """A g_idx given by the caller (as GPTQ computes it) is stored as is and used for every column."""
    s = get_scheme("W4A16{actorder=True,group_size=32}")
    n, k = 72, 128
    w = random_weight(n, k, torch.float16, seed=6)
    g_idx = (torch.randperm(k, generator=torch.Generator().manual_seed(0)) // 32).to(torch.int32)
    t = quantize_weight(w, s, g_idx=g_idx)
    assert torch.equal(t["weight_g_idx"], g_idx)
    contiguous, order = _contiguous_equivalent(t, s, n, k)
    theirs = ct_decompress(contiguous, s.replace(actorder=False))
    assert torch.equal(dequantize_weight(t, s, dtype=theirs.dtype)[:, order], theirs)


# ---------------------------------------------------------------------------------------------------------------
# Element-level helpers against compressed-tensors' own


def test_int32_packing_matches_ct_pack_to_int32():
    from quantops.formats.elements import pack_int32, unpack_int32

    g = torch.Generator().manual_seed(7)
    for bits in (4, 8):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1))
        for cols in (1, 7, 8, 9, 31, 32, 33, 202):
            q = torch.randint(lo, hi, (5, cols), generator=g, dtype=torch.int8)
            assert torch.equal(pack_int32(q, bits), pack_to_int32(q, bits)), (bits, cols)
            assert torch.equal(pack_int32(q.t().contiguous(), bits).t(), pack_to_int32(q, bits, packed_dim=0)), (bits, cols)
            assert torch.equal(unpack_int32(pack_to_int32(q, bits), bits, cols), q.int())


def test_fp4_codes_match_ct_pack_fp4():
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8, unpack_fp4_from_uint8

    from quantops.formats.elements import FP4_VALUES, decode_fp4, encode_fp4, pack_fp4, unpack_fp4

    grid = torch.tensor([v for v in FP4_VALUES[1:]] + [-v for v in FP4_VALUES[1:]] + [0.0], dtype=torch.float32)
    x = grid[torch.randint(0, grid.numel(), (6, 64), generator=torch.Generator().manual_seed(8))]
    ours = pack_fp4(encode_fp4(x), 64)
    assert torch.equal(ours, pack_fp4_to_uint8(x))
    assert torch.equal(decode_fp4(unpack_fp4(ours)), unpack_fp4_from_uint8(ours, 6, 64, dtype=torch.float32))


def test_e8m0_matches_ct_generate_mx_scales():
    """quantops' E8M0 rule (floor(log2 amax) - emax, +1 when the mantissa >= 1.75) against compressed-tensors'
    generate_mx_scales, on amax values at and around every rounding boundary."""
    from compressed_tensors.quantization.utils.mxfp_utils import generate_mx_scales

    from quantops.formats.elements import encode_e8m0

    vals = []
    for e in range(-20, 21):
        for m in (1.0, 1.25, 1.5, 1.74, 1.75, 1.76, 1.99):
            vals.append(math.ldexp(m, e))
        vals.append(math.nextafter(math.ldexp(1.75, e), 0))
    amax = torch.tensor(vals, dtype=torch.float32)
    amax = torch.cat([amax, torch.rand(2000, generator=torch.Generator().manual_seed(9)) * 100])
    for bits, emax in ((4, 2), (8, 8)):
        theirs = generate_mx_scales(amax, num_bits=bits)
        assert torch.equal(encode_e8m0(amax, emax).float(), theirs.clamp(0, 255))


@pytest.mark.parametrize("name, n, k", [("NVFP4A16", 203, 64), ("MXFP4A16", 72, 96), ("MXFP8A16", 72, 96)])
def test_fp32_dequantize_matches_ct_dequantize_in_fp32(name, n, k):
    """The NVFP4/MX compressors return bf16, which hides the last fp32 bits; quantops' emulation dequantizes
    in fp32. compressed-tensors' own `dequantize` run in fp32 (w = q * (scale / global_scale)) gives the same bits."""
    from compressed_tensors.compressors.mx_utils import decompress_mx_scale
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    s = get_scheme(name)
    t = quantize_weight(random_weight(n, k, torch.bfloat16, seed=10), s)
    if s.weight == "mxfp8":
        q, scale, gs = t["weight"].float(), decompress_mx_scale(t["weight_scale"]).float(), None
    else:
        q = unpack_fp4_from_uint8(t["weight_packed"], n, k, dtype=torch.float32)
        scale = t["weight_scale"].float() if s.weight == "nvfp4" else decompress_mx_scale(t["weight_scale"]).float()
        gs = t.get("weight_global_scale")
    theirs = dequantize(x_q=q, scale=scale, args=ct_weight_args(s), dtype=torch.float32, global_scale=gs)
    assert torch.equal(dequantize_weight(t, s), theirs)
