"""Weight-only kernels on the CPU: the Triton GEMM and the dequantize pass under TRITON_INTERPRET=1 (tiny shapes)
against each scheme's emulation kernel; the CUDA GEMV's and the library kernels' prepare() repacking checked by
decoding the prepared tensors in plain torch; the csrc/ build's absence as a registry reason; csrc/ compiled to
object files with nvcc.

Tolerance: ||out - ref|| / ||ref|| <= 1e-2 against emulation (fp32 reference; the kernels round dequantized
weights or W4AFP8's dequantized activations to bf16 once, and outputs to bf16).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quantops.formats import dequantize_weight, quantize_weight
from quantops.formats.elements import decode_fp4
from quantops.kernels.base import LinearConfig
from quantops.kernels.emulation import EmulationKernel
from quantops.kernels.registry import select_kernel
from quantops.kernels.weight_only_layout import (
    FMT_FP4,
    FMT_FP8,
    FMT_INT4,
    element_bits,
    element_format,
    group_size,
    interleave_nibbles,
)
from quantops.schemes import get_scheme

TOL = 1e-2
REPO = Path(__file__).resolve().parents[1]

# (preset, variant): every weight format, zero points, act-order, per-channel scales, and the W4A4 / W8A8
# checkpoints that run weight-only on Hopper
SCHEMES = [
    ("W4A16", {"group_size": 32}),
    ("W4A16_ASYM", {"group_size": 32}),
    ("W4A16", {"group_size": 16, "actorder": True}),
    ("W8A16", {"group_size": 32}),
    ("W8A16", {"weight_strategy": "channel", "group_size": None}),
    ("W4AFP8", {"group_size": 32}),
    ("NVFP4A16", {}),
    ("MXFP4A16", {}),
    ("MXFP8A16", {}),
    ("NVFP4", {}),
    ("MXFP8", {}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in SCHEMES]
WEIGHT_ONLY_TWIN = {"NVFP4": "NVFP4A16", "MXFP4": "MXFP4A16", "MXFP8": "MXFP8A16"}


def make_layer(name, kw, n, k, device="cpu", std=0.1):
    scheme = get_scheme(name, **kw)
    w = torch.randn(n, k) * std
    tensors = quantize_weight(w, scheme, input_amax=torch.tensor(3.0))
    return scheme, {key: t.to(device) for key, t in tensors.items()}


def reference(scheme, tensors, x, dtype):
    """Emulation of the scheme; W4A4/W8A8 MX checkpoints run weight-only, so their A16 twin is the reference."""
    if scheme.name in WEIGHT_ONLY_TWIN:
        scheme = get_scheme(WEIGHT_ONLY_TWIN[scheme.name])
        tensors = {k: v for k, v in tensors.items() if k != "input_global_scale"}
    emu = EmulationKernel(LinearConfig(scheme, tensors_n(tensors, scheme), x.shape[-1], dtype))
    return emu.apply(x, emu.prepare(tensors), None)


def tensors_n(tensors, scheme):
    return (tensors.get("weight_packed", tensors.get("weight"))).shape[0]


def rel_err(out, ref):
    out, ref = out.float(), ref.float()
    assert torch.isfinite(out).all()
    return float((out - ref).norm() / ref.norm().clamp(min=1e-12))


def run_kernel(cls, scheme, tensors, x, dtype, bias=None):
    n, k = tensors_n(tensors, scheme), x.shape[-1]
    kernel = cls(LinearConfig(scheme, n, k, dtype, has_bias=bias is not None))
    before = {key: t.clone() for key, t in tensors.items()}
    prepared = kernel.prepare(tensors)
    for key, t in tensors.items():  # prepare is pure
        assert torch.equal(t, before[key]), f"prepare() changed {key}"
    return kernel.apply(x, prepared, bias)


# -- Triton GEMM and dequantize pass, interpreted -----------------------------------------------------------


@pytest.mark.parametrize("name,kw", SCHEMES, ids=IDS)
def test_triton_gemm_matches_emulation(name, kw):
    from quantops.kernels.triton_wna16 import WeightOnlyGemmTritonKernel

    n, k = 37, 64  # odd N; K = 2 blocks of the interpreter's BLOCK_K, so the split-K path runs too
    scheme, tensors = make_layer(name, kw, n, k)
    for shape in [(1, k), (3, k), (2, 2, k)]:
        x = torch.randn(shape, dtype=torch.bfloat16)
        out = run_kernel(WeightOnlyGemmTritonKernel, scheme, tensors, x, torch.bfloat16)
        assert out.shape == shape[:-1] + (n,) and out.dtype == torch.bfloat16
        assert rel_err(out, reference(scheme, tensors, x, torch.bfloat16)) <= TOL
    x0 = torch.randn(0, k, dtype=torch.bfloat16)
    assert run_kernel(WeightOnlyGemmTritonKernel, scheme, tensors, x0, torch.bfloat16).shape == (0, n)


def test_triton_gemm_channel_odd_k_fp16_and_bias():
    from quantops.kernels.triton_wna16 import WeightOnlyGemmTritonKernel

    n, k = 19, 60  # per-channel int4: K need not fill the last packed word
    scheme, tensors = make_layer("W4A16_ASYM", {"weight_strategy": "channel", "group_size": None}, n, k)
    x = torch.randn(5, k, dtype=torch.float16)
    bias = torch.randn(n, dtype=torch.float16)
    out = run_kernel(WeightOnlyGemmTritonKernel, scheme, tensors, x, torch.float16, bias)
    assert rel_err(out, reference(scheme, tensors, x, torch.float16) + bias) <= TOL


@pytest.mark.parametrize("name,kw", SCHEMES, ids=IDS)
def test_dequant_cublas_matches_emulation(name, kw):
    from quantops.kernels.dequant_cublas import WeightOnlyDequantCublasKernel

    # K = 256: two whole 128-column tiles of the dequantize pass; K = 96: one partial tile
    for n, k in ((37, 256), (33, 96)):
        scheme, tensors = make_layer(name, kw, n, k)
        for dtype in (torch.bfloat16, torch.float32):
            x = torch.randn(4, k, dtype=dtype)
            out = run_kernel(WeightOnlyDequantCublasKernel, scheme, tensors, x, dtype)
            assert out.dtype == dtype
            assert rel_err(out, reference(scheme, tensors, x, dtype)) <= TOL, (n, k, dtype)


@pytest.mark.parametrize("name,kw,k", [("W4A16", {"group_size": 64}, 320), ("W8A16", {"group_size": 128}, 384),
                                       ("W4A16_ASYM", {"group_size": 256}, 512), ("W4A16", {"group_size": 96}, 288),
                                       ("W4A16_ASYM", {"weight_strategy": "channel", "group_size": None}, 72),
                                       ("MXFP8A16", {}, 160), ("MXFP4A16", {}, 96)])
def test_dequantize_pass_is_exact(name, kw, k):
    """The dequantize pass alone, fp32 out, against the format's own dequantize() element for element: groups
    inside a tile (64), one per tile (128), spanning tiles (256), not tiling it (96: the per-column path), and
    per-channel with K not a whole word or tile (72); e4m3 and e2m1 codes under E8M0 scales (exact products too)."""
    from quantops.formats import dequantize_weight
    from quantops.kernels.dequant_cublas import WeightOnlyDequantCublasKernel, dequantize

    n = 40
    scheme, tensors = make_layer(name, kw, n, k)
    kernel = WeightOnlyDequantCublasKernel(LinearConfig(scheme, n, k, torch.float32))
    p = kernel.prepare(tensors)
    w = dequantize(p["qweight"], p["scales"], p.get("zeros"), p.get("g_idx"), kernel.fmt, kernel.group_size, n, k,
                   torch.float32)
    assert torch.equal(w, dequantize_weight(tensors, scheme, shape=(n, k)))


def test_triton_op_opcheck_and_errors():
    from quantops.kernels.triton_wna16 import WeightOnlyGemmTritonKernel

    n, k = 24, 64
    scheme, tensors = make_layer("W4A16_ASYM", {"group_size": 32}, n, k)
    kernel = WeightOnlyGemmTritonKernel(LinearConfig(scheme, n, k, torch.bfloat16))
    p = kernel.prepare(tensors)
    args = (p["qweight"], p["scales"], p["zeros"], None, FMT_INT4, 32, n, k)
    for m in (0, 3):
        x = torch.randn(m, k, dtype=torch.bfloat16)
        torch.library.opcheck(torch.ops.quantops.weight_only_gemm_triton, (x,) + args)
    with pytest.raises(ValueError, match=r"activation must be \[M, 64\]"):
        torch.ops.quantops.weight_only_gemm_triton(torch.randn(2, 32, dtype=torch.bfloat16), *args)
    with pytest.raises(ValueError, match="dtype"):
        torch.ops.quantops.weight_only_gemm_triton(torch.randn(2, k), *args)


# -- CUDA GEMV: prepare() layout, decoded in plain torch ----------------------------------------------------


def untile_gemv_weights(qweight, bits, n, k):
    """Inverse of the kernel's tiled layout, from its definition (csrc/weight_only_gemv.cuh): element (row, col)
    of the 16 x tile_k tile (row // 16, col // tile_k) sits in 16-byte chunk (col % tile_k) // vpc of lane
    (row % 8) * 4 + chunk, in the lower 512 bytes for rows 0..7 of the tile and the upper 512 for rows 8..15.
    Returns int64 words [N, K*bits/32] in row-major code order."""
    vpc = 128 // bits
    tk = 4 * vpc
    flat = qweight.reshape(-1).to(torch.int64) & 0xFFFFFFFF
    tiles_k = qweight.shape[1] * 32 // bits // tk
    rows = torch.arange(n).view(n, 1)
    words = torch.arange(k * bits // 32).view(1, -1)  # word w of a row covers columns [w*32/bits, ...)
    col = words * (32 // bits)
    chunk, in_chunk = (col % tk) // vpc, (col % vpc) * bits // 32
    lane = (rows % 8) * 4 + chunk
    byte = ((rows // 16) * tiles_k + col // tk) * 1024 + (rows % 16 >= 8).long() * 512 + lane * 16 + in_chunk * 4
    return flat[byte // 4]


def decode_gemv_layout(prepared, scheme, n, k):
    """What the CUDA kernel reads, decoded the way it decodes it: [N, K] float in the prepared column order."""
    fmt = element_format(scheme)
    bits = element_bits(fmt)
    words = untile_gemv_weights(prepared["qweight"], bits, n, k)
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int64) * bits
    codes = (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [N, W, per] by slot
    if bits == 4:  # slots (p, p+4) hold elements (2p, 2p+1)
        codes = torch.stack([codes[..., :4], codes[..., 4:]], dim=-1).reshape(n, -1, 8)
    codes = codes.reshape(n, -1)[:, :k]
    gs = group_size(scheme, k)
    scales = prepared["scales"][:n]
    if fmt in (FMT_FP4, FMT_FP8):
        # the kernels' arithmetic (ScalePost, csrc/weight_only_decode.cuh): codes placed in bf16 bits read as the value
        # times 2^-shift, one bf16 multiply by the block multiplier -- which must be a finite bf16 and give an exact
        # product -- and the fp32 sum times `out` at the end
        shift = 126 if fmt == FMT_FP4 else 120
        alpha = prepared["alpha"].double()
        if scheme.weight == "nvfp4":  # e4m3 block scales, alpha = 1 / global scale
            mult = scales.view(torch.float8_e4m3fn).double() * 2.0 ** (shift - 9)
            out = alpha * 2.0**9
        else:  # e8m0 codes, alpha = 2^p
            p = torch.log2(alpha)
            assert p == p.round() and p >= 0
            mult = torch.exp2(scales.double() - 127 + shift - p)
            out = alpha
        assert torch.equal(mult.to(torch.bfloat16).double(), mult), "a block multiplier is not a finite bf16"
        mult = mult.repeat_interleave(gs, dim=1)[:, :k]
        codes = codes.to(torch.uint8)
        value = decode_fp4(codes) if fmt == FMT_FP4 else codes.view(torch.float8_e4m3fn).float()
        prod = value.double() * 2.0**-shift * mult
        assert torch.equal(prod.to(torch.bfloat16).double(), prod), "a dequantized weight is not exact in bf16"
        return (prod * out).float()
    scales = scales.float().repeat_interleave(gs, dim=1)[:, :k]
    zero = prepared["zeros"][:n].float().repeat_interleave(gs, dim=1)[:, :k] if "zeros" in prepared else 1 << (bits - 1)
    return (codes.float() - zero) * scales


@pytest.mark.parametrize("name,kw", SCHEMES, ids=IDS)
@pytest.mark.parametrize("n,k", [(24, 128), (37, 96)])  # rows and columns padded to whole tiles
@pytest.mark.parametrize("std", [0.1, 1e5])  # 1e5: MX block scales past 2^7, where the kernels need p > 0
def test_cuda_gemv_prepare_layout(name, kw, n, k, std):
    from quantops.kernels.cuda_wna16 import WeightOnlyGemvCudaKernel

    scheme, tensors = make_layer(name, kw, n, k, std=std)
    dtype = torch.bfloat16
    kernel = WeightOnlyGemvCudaKernel(LinearConfig(scheme, n, k, dtype))
    before = {key: t.clone() for key, t in tensors.items()}
    prepared = kernel.prepare(tensors)
    assert all(torch.equal(t, before[key]) for key, t in tensors.items())
    w = decode_gemv_layout(prepared, scheme, n, k)
    ref = dequantize_weight({key: t for key, t in tensors.items() if key != "input_global_scale"}, scheme, shape=(n, k))
    if "perm" in prepared:  # act-order: columns grouped, x gathered by perm in the op
        ref = ref[:, prepared["perm"]]
    # float formats: the checkpoint's weights exactly; ints: their scales rounded to the activation dtype
    exact = element_format(scheme) in (FMT_FP4, FMT_FP8)
    assert torch.allclose(w, ref, rtol=1e-6 if exact else 1e-2, atol=0 if exact else 1e-6)
    if scheme.weight in ("mxfp4", "mxfp8"):  # the post factor is needed exactly when a multiplier would overflow
        assert (prepared["alpha"] > 1).item() == (std > 1)
    assert prepared["qweight"].dtype == torch.int32 and prepared["qweight"].is_contiguous()
    bits = element_bits(element_format(scheme))
    assert prepared["qweight"].shape == (-(-n // 16) * 16, -(-k // (512 // bits)) * 16)
    assert prepared["scales"].shape[0] == prepared["qweight"].shape[0]


def test_mx_post_factor():
    from quantops.kernels.cuda_wna16 import mx_post_factor

    codes = torch.tensor([[0, 100, 128], [255, 3, 127]], dtype=torch.uint8)  # 255 (NaN) does not count
    assert mx_post_factor(codes, FMT_FP4).item() == 1.0  # 2^(128 - 127 + 126) = 2^127 is still a finite bf16
    assert mx_post_factor(codes, FMT_FP8).item() == 1.0
    codes[0, 0] = 200
    assert mx_post_factor(codes, FMT_FP4).item() == 2.0**72  # 200 + 126 - 254
    assert mx_post_factor(codes, FMT_FP8).item() == 2.0**66  # 200 + 120 - 254
    assert mx_post_factor(codes, FMT_FP4).dtype == torch.float32 and mx_post_factor(codes, FMT_FP4).shape == (1,)


def test_interleave_nibbles_pairs_adjacent_elements():
    words = torch.randint(-(2**31), 2**31 - 1, (3, 5), dtype=torch.int64).to(torch.int32)
    out = interleave_nibbles(words).to(torch.int64) & 0xFFFFFFFF
    src = words.to(torch.int64) & 0xFFFFFFFF
    for p in range(4):
        assert torch.equal((out >> (4 * p)) & 0xF, (src >> (8 * p)) & 0xF)  # slot p = element 2p
        assert torch.equal((out >> (4 * p + 16)) & 0xF, (src >> (8 * p + 4)) & 0xF)  # slot p+4 = element 2p+1


def test_cuda_gemv_rejects_irregular_act_order():
    from quantops.kernels.cuda_wna16 import WeightOnlyGemvCudaKernel

    n, k = 8, 128
    scheme = get_scheme("W4A16", group_size=32, actorder=True)
    g_idx = torch.tensor([0] * 40 + [1] * 24 + [2] * 32 + [3] * 32, dtype=torch.int32)  # group 0 has 40 columns
    tensors = quantize_weight(torch.randn(n, k), scheme, g_idx=g_idx)
    with pytest.raises(ValueError, match="exactly 32 columns"):
        WeightOnlyGemvCudaKernel(LinearConfig(scheme, n, k, torch.bfloat16)).prepare(tensors)


def test_cuda_gemv_can_implement_reasons():
    from quantops.kernels.cuda_wna16 import WeightOnlyGemvCudaKernel as C

    cfg = lambda s, k=256, dtype=torch.bfloat16: LinearConfig(get_scheme(s), 64, k, dtype)  # noqa: E731
    assert C.can_implement(cfg("W4A16"))[0]
    assert C.can_implement(cfg("NVFP4A16", k=48))[1] == "K=48 is not a multiple of 32 (one 16-byte chunk of weights)"
    assert "bf16" in C.can_implement(cfg("MXFP4A16", dtype=torch.float16))[1]
    assert C.can_implement(cfg("W4A16", dtype=torch.float16))[0]
    assert not C.can_implement(cfg("FP8_DYNAMIC"))[0]


def test_cuda_op_fake_impl():
    from torch._subclasses.fake_tensor import FakeTensorMode

    import quantops.kernels.cuda_wna16  # noqa: F401  (defines the op)

    with FakeTensorMode():
        x = torch.empty(5, 256, dtype=torch.bfloat16)
        out = torch.ops.quantops.weight_only_gemv_cuda(
            x, torch.empty(72, 32, dtype=torch.int32), torch.empty(72, 2, dtype=torch.bfloat16), None, None, None,
            FMT_INT4, 128, 72, 256,
        )
        assert out.shape == (5, 72) and out.stride() == (72, 1) and out.dtype == torch.bfloat16


# -- tinygemm and FBGEMM operands: their documented dequantization reproduces the weights --------------------


@pytest.mark.parametrize("name", ["W4A16", "W4A16_ASYM"])
def test_tinygemm_and_fbgemm_operands(name):
    from quantops.kernels.fbgemm_int4 import fbgemm_int4_operands
    from quantops.kernels.tinygemm_int4 import tinygemm_operands

    n, k = 16, 256
    scheme, tensors = make_layer(name, {}, n, k)
    ref = dequantize_weight(tensors, scheme, shape=(n, k))
    g = scheme.group_size
    # tinygemm: (u - 8) * scale + zero, even element in the high nibble
    codes, sz = tinygemm_operands(tensors, scheme, n, k)
    u = torch.stack([codes >> 4, codes & 0xF], dim=-1).reshape(n, k).float()
    s, z = (sz[..., i].float().t().repeat_interleave(g, dim=1) for i in (0, 1))
    assert torch.allclose((u - 8) * s + z, ref, rtol=1e-2, atol=2e-3)
    # FBGEMM: signed nibble * scale + zero, even element in the low nibble, scales [K/g, N]
    wq, scale, zero = fbgemm_int4_operands(tensors, scheme, n, k, torch.float32)
    b = wq.view(torch.uint8).to(torch.int16)
    q = torch.stack([b & 0xF, b >> 4], dim=-1).reshape(n, k)
    q = torch.where(q >= 8, q - 16, q).float()
    s, z = (t.t().repeat_interleave(g, dim=1) for t in (scale, zero))
    assert torch.allclose(q * s + z, ref, rtol=1e-5, atol=1e-6)


# -- the CUDA extension without a GPU; selection ----------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path (the GPU tests build it)")
def test_cuda_ext_import_gives_reason_without_gpu():
    sys.modules.pop("quantops.kernels.cuda_ext", None)
    with pytest.raises(ImportError, match="not built: no CUDA device"):
        import quantops.kernels.cuda_ext  # noqa: F401
    sel = select_kernel("W4A16", N=4096, K=4096, capability=(9, 0))
    reasons = dict(sel.rejected)
    assert "not built: no CUDA device" in reasons["WeightOnlyGemvCudaKernel"]
    assert sel.for_m(8).kernel_name() != "WeightOnlyGemvCudaKernel"


@pytest.mark.parametrize("name", ["W4A16", "W8A16", "W4AFP8", "NVFP4A16", "MXFP4A16", "MXFP8A16", "NVFP4", "MXFP8"])
def test_selection_plan_on_hopper(name):
    sel = select_kernel(name, N=4096, K=4096, capability=(9, 0), libraries=["triton", "quantops_cuda", "fbgemm"])
    # the CUDA op up to M=32 where FBGEMM's shuffled bf16 x int4 GEMM takes over on a layer this size (64 on large
    # ones, test_registry.py), 16 for W4AFP8 (FBGEMM's shuffled fp8 x int4), else up to 128 (ranking.py's numbers)
    top = {"W4A16": 32, "W4AFP8": 16}.get(name, 128)
    assert (top, "WeightOnlyGemvCudaKernel") in [(m, cls.kernel_name()) for m, cls in sel.plan]
    assert sel.for_m(top + 1).kernel_name() != "WeightOnlyGemvCudaKernel"
    assert sel.for_m(1).kernel_name() == sel.for_m(8).kernel_name() == "WeightOnlyGemvCudaKernel"
    if name == "W4A16":  # FBGEMM's shuffled GEMM from 33 at every M
        assert sel.for_m(100).kernel_name() == sel.for_m(100000).kernel_name() == "Int4ShuffledFbgemmKernel"
    elif name == "W4AFP8":
        assert sel.for_m(100000).kernel_name() == "W4AFp8ShuffledFbgemmKernel"
    else:
        assert sel.for_m(100000).kernel_name() == "WeightOnlyDequantCublasKernel"


def test_fbgemm_int4_needs_and_row_scale():
    """What the FBGEMM kernels refuse, with the reason; and the fp8 GEMMs' per-row power of two: max |scale| / r in
    (28, 56], so that code (|q| <= 8) * scale / r stays within e4m3's 448 and out of its subnormals."""
    from quantops.kernels.fbgemm_int4 import (
        Int4ShuffledFbgemmKernel, W4AFp8RowwiseFbgemmKernel, W4AFp8ShuffledFbgemmKernel, e4m3_row_scale,
        fbgemm_int4_operands)

    def cfg(name, n, k, **kw):
        return LinearConfig(get_scheme(name, **kw), n, k, torch.bfloat16)

    assert Int4ShuffledFbgemmKernel.can_implement(cfg("W4A16", 4104, 4096)) == (
        False, "N=4104 must be a multiple of 16 (the shuffle reorders whole blocks of 16 rows)")
    assert Int4ShuffledFbgemmKernel.can_implement(cfg("W4A16", 4112, 4096))[0]
    assert W4AFp8ShuffledFbgemmKernel.can_implement(cfg("W4AFP8", 4096, 4096, symmetric=False)) == (
        False, "needs symmetric weights (the shuffled fp8 GEMM takes no zero points)")
    assert W4AFp8RowwiseFbgemmKernel.can_implement(cfg("W4AFP8", 4104, 4096, symmetric=False))[0]
    assert "act-order" in Int4ShuffledFbgemmKernel.can_implement(cfg("W4A16", 4096, 4096, actorder=True))[1]
    scale = torch.rand(6, 32) * torch.tensor([1e-4, 1e-2, 1.0, 3.0, 1e3, 0.0])[:, None]
    r = e4m3_row_scale(scale)
    assert torch.equal(torch.exp2(torch.log2(r).round()), r)  # powers of two
    q = scale.amax(dim=1)[:5] / r[:5]
    assert ((q > 28) & (q <= 56)).all(), q
    assert r[5] > 0
    # with zero points (w = q * scale + zero, q in [-8, 7]): every weight value stays within 448 after the division
    zero = -torch.randint(0, 16, scale.shape).float() * scale + 5 * scale
    r = e4m3_row_scale(scale, zero)
    codes = torch.arange(-8, 8).float()
    w = codes[None, None, :] * scale[..., None] + zero[..., None]
    assert (w.abs().amax(dim=(1, 2))[:5] / r[:5] <= 448).all() and (w.abs().amax(dim=(1, 2))[:5] / r[:5] > 112).all()
    # the row-wise fp8 GEMM's prepared operands (plain torch: runs here): scales and zeros divided by the row's power
    # of two exactly, every dequantized value code * scale + zero within e4m3's range
    scheme = get_scheme("W4AFP8", symmetric=False)
    tensors = quantize_weight(torch.randn(48, 256) * 0.01 + 0.02, scheme)
    p = W4AFp8RowwiseFbgemmKernel(LinearConfig(scheme, 48, 256, torch.bfloat16)).prepare(tensors)
    _, scale, zero = fbgemm_int4_operands(tensors, scheme, 48, 256, torch.float32)
    row = p["row_scale"].float()
    assert torch.equal(p["scale"] * row, scale) and torch.equal(p["zero"] * row, zero)
    w = codes[:, None, None] * p["scale"][None] + p["zero"][None]  # [16, G, N]
    assert w.abs().max() <= 448 and (w.abs().amax(dim=(0, 1)) > 112).all()


# -- csrc/ compiles (object files only) ---------------------------------------------------------------------


def cuda_include() -> Path:
    from torch.utils.cpp_extension import CUDA_HOME

    roots = [CUDA_HOME, os.environ.get("CUDA_HOME"), "/usr/local/cuda", Path(shutil.which("nvcc")).resolve().parents[1]]
    return next(Path(r, "include") for r in roots if r and Path(r, "include", "cuda_runtime.h").exists())


@pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("c++") is None, reason="nvcc or c++ not on PATH")
def test_wgmma_gemm_plan(tmp_path):
    """The Hopper GEMM's launch plan (csrc/weight_only_gemv.h, host code) on an H100/H200's 132 SMs: chunks of x rows,
    K splits (two blocks per SM while each split keeps >= 12 K tiles, else one, at least two while SMs sit idle) and
    whether the splits add up in a cluster (exactly two)."""
    prog = tmp_path / "plan.cpp"
    prog.write_text(
        '#include <cstdio>\n#include "weight_only_gemv.h"\nusing namespace quantops;\n'
        "int main(int argc, char** argv) {\n"
        "  int shapes[][3] = {{8192, 8192, 0}, {6144, 4096, 0}, {4096, 4096, 0}, {28672, 4096, 0}, {4096, 14336, 0},"
        " {8192, 8192, 1}, {4096, 4096, 3}};\n"
        "  for (auto& s : shapes) for (int m : {17, 32, 64, 128, 200}) {\n"
        "    GemvArgs a{}; a.M = m; a.N = s[0]; a.K = s[1]; a.n_pad = s[0]; a.fmt = s[2]; a.num_sms = 132;\n"
        "    a.tiles_k = s[1] / (s[2] == kInt4 || s[2] == kFp4 ? 128 : 64);\n"
        "    const GemmPlan p = plan_weight_only_wgmma(a);\n"
        '    std::printf("%d %d %d %d: %d %d %d %d\\n", s[0], s[1], s[2], m, p.mt, p.chunks, p.splits, int(p.cluster));\n'
        "  }\n}\n"
    )
    exe = tmp_path / "plan"
    subprocess.run(["c++", "-std=c++17", f"-I{REPO / 'csrc'}", f"-I{cuda_include()}", str(prog), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    got = dict(line.split(": ") for line in subprocess.run([str(exe)], check=True, capture_output=True,
                                                          text=True).stdout.splitlines())
    expect = {  # "N K fmt M": "mt chunks splits cluster"
        "8192 8192 0 32": "32 1 4 0", "8192 8192 0 64": "64 1 4 0", "8192 8192 0 128": "64 2 2 1",
        "8192 8192 0 200": "64 4 1 0",
        "6144 4096 0 17": "32 1 2 1", "6144 4096 0 64": "64 1 2 1", "6144 4096 0 128": "64 2 2 1",
        "4096 4096 0 32": "32 1 4 0", "4096 4096 0 64": "64 1 4 0", "4096 4096 0 128": "64 2 2 1",
        "28672 4096 0 64": "64 1 1 0", "28672 4096 0 128": "64 2 1 0",
        "4096 14336 0 32": "32 1 8 0", "4096 14336 0 64": "64 1 8 0", "4096 14336 0 128": "64 2 4 0",
        "8192 8192 1 64": "64 1 4 0", "8192 8192 1 128": "64 2 2 1",  # int8: 64-column K tiles
        "4096 4096 3 128": "64 2 4 0",  # 8-bit K tiles hold half the columns (the same bytes)
    }
    assert {key: got[key] for key in expect} == expect


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_csrc_compiles_with_nvcc(tmp_path):
    from torch.utils.cpp_extension import include_paths

    csrc = REPO / "csrc"
    # the flags torch's extension builder adds, which disable implicit half/bf16 conversions
    defines = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "-D__CUDA_NO_HALF2_OPERATORS__"]
    jobs = []
    units = sorted(p.name for p in csrc.glob("*.cu"))
    # the extension's source list (read without importing cuda_ext, whose import is the build) names them all
    tree = ast.parse((REPO / "quantops" / "kernels" / "cuda_ext.py").read_text())
    listed = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "SOURCES")
    assert sorted(s for s in listed if s.endswith(".cu")) == units
    for src in units:
        cmd = ["nvcc", "-c", "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas", "-v",
               *defines, f"-I{csrc}", str(csrc / src), "-o", str(tmp_path / (src + ".o"))]
        jobs.append((src, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    # bindings.cpp is host C++ (built by the host compiler there): check it parses against torch's headers
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx:
        import sysconfig

        incs = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}", f"-I{csrc}"]
        cmd = [cxx, "-fsyntax-only", "-std=c++17", "-w", *incs, f"-I{cuda_include()}", "-DTORCH_EXTENSION_NAME=quantops_cuda",
               str(csrc / "bindings.cpp")]
        jobs.append(("bindings.cpp", subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for src, proc in jobs:
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{src} failed to compile:\n{log[-4000:]}"
        if src.endswith(".cu"):
            assert (tmp_path / (src + ".o")).stat().st_size > 0
            assert "error" not in log.lower()
