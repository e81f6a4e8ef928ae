"""Blackwell FP4 / MXFP8 kernels (FlashInfer cutlass/trtllm/cudnn/cute-dsl, FBGEMM f4f4bf16).

No Blackwell GPU is reachable here, so these kernels are written, gated and layout-tested, not run on hardware.
What is checked on the CPU:
- every prepare() output against an independent index computation of the layouts in FORMATS.md (the 128x4 offset
  formula, trtllm's row map as FlashInfer tabulates it), on shapes that need padding; un-swizzle and slicing
  give the canonical tensors back;
- the activation quantizer with swizzled scales against quantops.formats, bit for bit;
- selection on a simulated sm100 / sm103 / sm120 / sm90 / CPU, in vLLM's order, with every rejection's reason;
- each op end to end against the EmulationKernel, with the libraries replaced by reference models of their
  documented contracts (argument order, which operand is transposed, scale layouts and dtypes, alpha). These
  models decode the operands independently of quantops' layout code; they check our side of the contract only.
The `gpu` tests at the bottom run the real libraries and need an sm100 GPU.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from quantops.formats import quantize_weight
from quantops.formats.fp4_packed import quantize_mxfp4, quantize_nvfp4
from quantops.formats.mxfp8 import quantize_mxfp8
from quantops.kernels.base import LinearConfig
from quantops.kernels.emulation import EmulationKernel
from quantops.kernels.fbgemm_nvfp4 import FbgemmNvfp4Kernel
from quantops.kernels.flashinfer_mxfp4 import FlashInferCuteDslMxfp4Kernel
from quantops.kernels.flashinfer_mxfp8 import FlashInferCutlassMxfp8Kernel
from quantops.kernels.flashinfer_nvfp4 import (
    FlashInferCudnnNvfp4Kernel,
    FlashInferCutlassNvfp4Kernel,
    FlashInferTrtllmNvfp4Kernel,
)
from quantops.kernels.fp4_layouts import (
    quantize_activation_128x4,
    swizzle_128x4,
    trtllm_shuffle_rows,
    unswizzle_128x4,
)
from quantops.kernels.registry import select_kernel
from quantops.schemes import get_scheme

NVFP4_KERNELS = [
    FlashInferCutlassNvfp4Kernel, FlashInferTrtllmNvfp4Kernel, FlashInferCudnnNvfp4Kernel, FbgemmNvfp4Kernel
]
ALL_KERNELS = NVFP4_KERNELS + [FlashInferCuteDslMxfp4Kernel, FlashInferCutlassMxfp8Kernel]
SCHEME_OF = {k: "NVFP4" for k in NVFP4_KERNELS} | {
    FlashInferCuteDslMxfp4Kernel: "MXFP4",
    FlashInferCutlassMxfp8Kernel: "MXFP8",
}
# (N, K) per scheme: N and K that are not multiples of 32 where the format allows, so prepare() must pad
SHAPES = {"NVFP4": [(100, 48), (64, 128)], "MXFP4": [(72, 96)], "MXFP8": [(136, 160)]}
ALL_LIBS = {"flashinfer", "fbgemm", "triton", "cudnn", "cutlass"}

# -- independent statements of the layouts ------------------------------------------------------------------------

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
# FlashInfer's srcToDstBlk32RowMap (epilogue tile 128): source row i of a 32-row block goes to row MAP[i]
TRTLLM_MAP = [0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27,
              4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31]


def ceil_to(x, m):
    return (x + m - 1) // m * m


def offsets_128x4(rows, cols):
    """FORMATS.md: offset of (m, k) = (m/128 · K'/4 + k/4)·512 + (m%32)·16 + ((m/32)%4)·4 + k%4."""
    m = torch.arange(rows).view(-1, 1)
    k = torch.arange(cols).view(1, -1)
    kp = ceil_to(cols, 4)
    return (m // 128 * (kp // 4) + k // 4) * 512 + (m % 32) * 16 + ((m // 32) % 4) * 4 + k % 4


def swizzle_by_index(sf: torch.Tensor) -> torch.Tensor:
    """Flat uint8 buffer of length ceil(R/128)*128 * ceil(C/4)*4 with sf[m, k] scattered to its offset, zeros
    elsewhere."""
    rows, cols = sf.shape
    buf = torch.zeros(ceil_to(rows, 128) * ceil_to(cols, 4), dtype=torch.uint8)
    buf[offsets_128x4(rows, cols).reshape(-1)] = sf.view(torch.uint8).reshape(-1)
    return buf


def gather_by_index(buf: torch.Tensor, rows, cols) -> torch.Tensor:
    return buf.reshape(-1).view(torch.uint8)[offsets_128x4(rows, cols)]


def trtllm_shuffle_by_map(t: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(t.view(torch.uint8))
    for i in range(t.shape[0]):
        out[i - i % 32 + TRTLLM_MAP[i % 32]] = t.view(torch.uint8)[i]
    return out


def trtllm_unshuffle_by_map(t: torch.Tensor) -> torch.Tensor:
    rows = torch.tensor([i - i % 32 + TRTLLM_MAP[i % 32] for i in range(t.shape[0])])
    return t[rows]


def bytes_of(t):
    return t.contiguous().view(torch.uint8)


def make_layer(scheme_name, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    scheme = get_scheme(scheme_name)
    w = torch.randn(n, k, generator=g) * 0.05
    w[0, :16] = 0  # an all-zero block
    amax = torch.tensor(3.0)
    tensors = quantize_weight(w, scheme, input_amax=amax if scheme.act == "nvfp4" else None)
    return scheme, tensors


def config(kernel, n, k, dtype=torch.bfloat16, bias=False):
    return LinearConfig(get_scheme(SCHEME_OF[kernel]), n, k, dtype, bias)


# -- layouts -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows,cols", [(1, 1), (5, 3), (32, 4), (128, 4), (130, 5), (257, 9), (300, 12)])
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.uint8])
def test_swizzle_matches_formats_offsets(rows, cols, dtype):
    sf = torch.randint(1, 255, (rows, cols), dtype=torch.uint8).view(dtype)
    swz = swizzle_128x4(sf)
    assert swz.dtype == dtype and tuple(swz.shape) == (ceil_to(rows, 128), ceil_to(cols, 4))
    assert torch.equal(bytes_of(swz).reshape(-1), swizzle_by_index(sf))
    assert torch.equal(bytes_of(unswizzle_128x4(swz, rows, cols)), bytes_of(sf))
    assert torch.equal(bytes_of(gather_by_index(swz, rows, cols)), bytes_of(sf))


def test_trtllm_shuffle_matches_flashinfer_row_map():
    t = torch.randint(0, 255, (96, 5), dtype=torch.uint8)
    assert torch.equal(trtllm_shuffle_rows(t), trtllm_shuffle_by_map(t))
    with pytest.raises(ValueError, match="multiple of 32"):
        trtllm_shuffle_rows(t[:40])


@pytest.mark.parametrize("kernel", [FlashInferCutlassNvfp4Kernel, FlashInferCudnnNvfp4Kernel, FbgemmNvfp4Kernel])
@pytest.mark.parametrize("n,k", SHAPES["NVFP4"])
def test_prepare_nvfp4_cutlass_layout(kernel, n, k):
    scheme, t = make_layer("NVFP4", n, k)
    before = {name: bytes_of(v).clone() for name, v in t.items()}
    p = kernel(config(kernel, n, k)).prepare(t)
    assert all(torch.equal(bytes_of(t[name]), v) for name, v in before.items())  # pure: its input is untouched
    npad, kpad = ceil_to(n, 32), ceil_to(k, 32)
    w = p["weight_packed"]
    assert w.dtype == torch.uint8 and tuple(w.shape) == (npad, kpad // 2) and w.is_contiguous()
    assert torch.equal(w[:n, : k // 2], t["weight_packed"])
    assert not w[n:].any() and not w[:, k // 2 :].any()
    expected = swizzle_by_index(t["weight_scale"])
    got = bytes_of(p["weight_scale"]).reshape(-1)
    assert torch.equal(got, expected)
    if kernel is FbgemmNvfp4Kernel:  # FBGEMM takes the flat buffer as bytes
        assert p["weight_scale"].dim() == 1 and p["weight_scale"].dtype == torch.uint8
    else:
        assert tuple(p["weight_scale"].shape) == (ceil_to(n, 128), ceil_to(k // 16, 4))
    assert torch.equal(bytes_of(unswizzle_128x4(p["weight_scale"], n, k // 16)), bytes_of(t["weight_scale"]))
    alpha = 1.0 / (t["input_global_scale"].float() * t["weight_global_scale"].float())
    assert torch.equal(p["alpha"], alpha) and p["alpha"].dtype == torch.float32


@pytest.mark.parametrize("n,k", SHAPES["NVFP4"] + [(256, 80)])
def test_prepare_nvfp4_trtllm_layout(n, k):
    scheme, t = make_layer("NVFP4", n, k)
    p = FlashInferTrtllmNvfp4Kernel(config(FlashInferTrtllmNvfp4Kernel, n, k)).prepare(t)
    npad, kpad = ceil_to(n, 128), ceil_to(k, 32)
    padded_w = torch.zeros(npad, kpad // 2, dtype=torch.uint8)
    padded_w[:n, : k // 2] = t["weight_packed"]
    assert torch.equal(p["weight_packed"], trtllm_shuffle_by_map(padded_w))
    assert torch.equal(trtllm_unshuffle_by_map(p["weight_packed"])[:n, : k // 2], t["weight_packed"])
    padded_s = torch.zeros(npad, k // 16, dtype=torch.uint8)
    padded_s[:n] = bytes_of(t["weight_scale"])
    assert p["weight_scale"].dtype == torch.float8_e4m3fn
    assert tuple(p["weight_scale"].shape) == (npad, ceil_to(k // 16, 4))
    assert torch.equal(bytes_of(p["weight_scale"]).reshape(-1), swizzle_by_index(trtllm_shuffle_by_map(padded_s)))


@pytest.mark.parametrize("n,k", SHAPES["MXFP4"] + [(128, 64)])
def test_prepare_mxfp4_layout(n, k):
    scheme, t = make_layer("MXFP4", n, k)
    p = FlashInferCuteDslMxfp4Kernel(config(FlashInferCuteDslMxfp4Kernel, n, k)).prepare(t)
    w = p["weight_packed"]
    assert tuple(w.shape) == (ceil_to(n, 32), k // 2)
    assert torch.equal(w[:n], t["weight_packed"]) and not w[n:].any()
    assert p["weight_scale"].dtype == torch.uint8
    assert tuple(p["weight_scale"].shape) == (ceil_to(n, 128), ceil_to(k // 32, 4))
    assert torch.equal(p["weight_scale"].reshape(-1), swizzle_by_index(t["weight_scale"]))
    assert torch.equal(p["alpha"], torch.ones(1))


@pytest.mark.parametrize("n,k", SHAPES["MXFP8"] + [(128, 128)])
def test_prepare_mxfp8_layout(n, k):
    scheme, t = make_layer("MXFP8", n, k)
    p = FlashInferCutlassMxfp8Kernel(config(FlashInferCutlassMxfp8Kernel, n, k)).prepare(t)
    w = p["weight"]
    assert w.dtype == torch.float8_e4m3fn and tuple(w.shape) == (ceil_to(n, 32), k)
    assert torch.equal(bytes_of(w[:n]), bytes_of(t["weight"])) and not bytes_of(w[n:]).any()
    assert p["weight_scale"].dim() == 1 and p["weight_scale"].dtype == torch.uint8
    assert p["weight_scale"].numel() == ceil_to(n, 128) * ceil_to(k // 32, 4)
    assert torch.equal(p["weight_scale"], swizzle_by_index(t["weight_scale"]))


def test_prepare_rejects_bad_tensors():
    scheme, t = make_layer("NVFP4", 64, 64)
    kern = FlashInferCutlassNvfp4Kernel(config(FlashInferCutlassNvfp4Kernel, 64, 64))
    bad = dict(t, weight_scale=t["weight_scale"][:, :2])
    with pytest.raises(ValueError, match="weight_scale.*expected"):
        kern.prepare(bad)
    with pytest.raises(ValueError, match="missing input_global_scale"):
        kern.prepare({k: v for k, v in t.items() if k != "input_global_scale"})


# -- activation quantizer with swizzled scales ---------------------------------------------------------------------


@pytest.mark.parametrize("scheme_name,k", [("NVFP4", 48), ("NVFP4", 64), ("MXFP4", 96), ("MXFP8", 160)])
@pytest.mark.parametrize("m", [0, 1, 7, 130])
def test_activation_quantizer_matches_formats(scheme_name, k, m):
    scheme = get_scheme(scheme_name)
    x = (torch.randn(m, k) * 2).to(torch.bfloat16)
    if m > 1:
        x[1, :32] = 0  # all-zero blocks
    igs = torch.tensor([448.0 * 6 / 5.0])
    kpad = ceil_to(k, 32)
    q, sf = quantize_activation_128x4(x, scheme, k, igs, k_padded=kpad)
    if scheme.act == "nvfp4":
        q_ref, sf_ref = quantize_nvfp4(x, igs, k)
    elif scheme.act == "mxfp4":
        q_ref, sf_ref = quantize_mxfp4(x, k)
    else:
        q_ref, sf_ref = quantize_mxfp8(x, k)
    block = 16 if scheme.act == "nvfp4" else 32
    assert tuple(sf.shape) == (ceil_to(m, 128), ceil_to(k // block, 4))
    assert torch.equal(bytes_of(unswizzle_128x4(sf, m, k // block)), bytes_of(sf_ref))
    assert torch.equal(bytes_of(sf).reshape(-1), swizzle_by_index(sf_ref))
    if scheme.act == "mxfp8":
        assert torch.equal(bytes_of(q), bytes_of(q_ref))
    else:
        assert tuple(q.shape) == (m, kpad // 2)
        assert torch.equal(q[:, : k // 2], q_ref) and not q[:, k // 2 :].any()


# -- selection ----------------------------------------------------------------------------------------------------


def _pick(scheme, n, k, cap, libs, disabled=(), dtype=torch.bfloat16):
    return select_kernel(scheme, N=n, K=k, dtype=dtype, capability=cap, libraries=libs, disabled_kernels=list(disabled))


@pytest.mark.parametrize("libs", [ALL_LIBS, {"flashinfer", "fbgemm", "triton"}])
def test_nvfp4_order_on_sm100_is_vllms(libs):
    # vLLM on sm100: FlashInfer CUTLASS, (vLLM CUTLASS, Marlin: not ours), FlashInfer trtllm, cuDNN, FBGEMM
    order = [c for c in NVFP4_KERNELS if c is not FlashInferCudnnNvfp4Kernel or "cudnn" in libs]
    disabled = []
    for expected in order:
        sel = _pick("NVFP4", 100, 48, (10, 0), libs, disabled)
        assert sel.kernel is expected, str(sel)
        disabled.append(expected.kernel_name())
    sel = _pick("NVFP4", 100, 48, (10, 0), libs, disabled)
    assert sel.kernel.backend not in ("flashinfer", "fbgemm")  # below: the weight-only/emulation kernels
    if "cudnn" not in libs:
        reasons = dict(sel.rejected)
        assert "cuDNN frontend (nvidia-cudnn-frontend) missing" in reasons["FlashInferCudnnNvfp4Kernel"]


def test_mx_kernels_picked_on_sm100():
    assert _pick("MXFP4", 72, 96, (10, 0), ALL_LIBS).kernel is FlashInferCuteDslMxfp4Kernel
    assert _pick("MXFP8", 136, 160, (10, 0), ALL_LIBS).kernel is FlashInferCutlassMxfp8Kernel
    sel = _pick("MXFP4", 72, 96, (10, 0), {"flashinfer", "fbgemm", "triton"})
    assert "CuTe DSL (nvidia-cutlass-dsl) missing" in dict(sel.rejected)["FlashInferCuteDslMxfp4Kernel"]


@pytest.mark.parametrize("cap", [(9, 0), (8, 9)])
def test_rejected_on_hopper_with_reasons(cap):
    for scheme, (n, k) in [("NVFP4", (100, 48)), ("MXFP4", (72, 96)), ("MXFP8", (136, 160))]:
        sel = _pick(scheme, n, k, cap, ALL_LIBS)
        reasons = dict(sel.rejected)
        mine = [c for c in ALL_KERNELS if SCHEME_OF[c] == scheme]
        for c in mine:
            assert reasons[c.kernel_name()] == f"needs compute capability >= 10.0, have {cap[0]}.{cap[1]}"
        assert sel.kernel not in mine


def test_rejected_on_cpu_with_reasons():
    for c in ALL_KERNELS:
        assert c.is_supported(None) == (False, "needs a CUDA GPU")
    assert _pick("NVFP4", 100, 48, None, ALL_LIBS).kernel is EmulationKernel


def test_sm100_only_backends_rejected_on_sm120_and_sm103():
    sel = _pick("NVFP4", 100, 48, (12, 0), ALL_LIBS, disabled=["FlashInferCutlassNvfp4Kernel"])
    reasons = dict(sel.rejected)
    assert reasons["FlashInferTrtllmNvfp4Kernel"] == "needs compute capability <= 10.7, have 12.0"
    assert sel.kernel is FlashInferCudnnNvfp4Kernel
    assert "needs compute capability <= 10.0" in FbgemmNvfp4Kernel.is_supported((12, 0))[1]
    assert FbgemmNvfp4Kernel.is_supported((10, 3))[1] == "needs compute capability <= 10.0, have 10.3"
    assert FlashInferCuteDslMxfp4Kernel.is_supported((12, 0))[1] == "needs compute capability <= 10.7, have 12.0"
    with_libs = _pick("MXFP8", 136, 160, (12, 0), ALL_LIBS)
    assert with_libs.kernel is FlashInferCutlassMxfp8Kernel


def test_gated_on_libraries():
    sel = _pick("NVFP4", 100, 48, (10, 0), {"triton"})
    reasons = dict(sel.rejected)
    for c in (FlashInferCutlassNvfp4Kernel, FlashInferTrtllmNvfp4Kernel, FlashInferCudnnNvfp4Kernel):
        assert reasons[c.kernel_name()] == "flashinfer not installed (simulated)"
    assert reasons["FbgemmNvfp4Kernel"] == "fbgemm not installed (simulated)"
    assert dict(_pick("MXFP8", 136, 160, (10, 0), {"fbgemm"}).rejected)["FlashInferCutlassMxfp8Kernel"] == (
        "flashinfer not installed (simulated)"
    )


def test_can_implement_reasons():
    sel = _pick("MXFP8", 64, 256, (10, 0), ALL_LIBS)
    assert "mm_mxfp8 needs N >= 128" in dict(sel.rejected)["FlashInferCutlassMxfp8Kernel"]
    sel = _pick("MXFP8", 256, 96, (10, 0), ALL_LIBS)
    assert "mm_mxfp8 needs K >= 128" in dict(sel.rejected)["FlashInferCutlassMxfp8Kernel"]
    # trtllm and FBGEMM write bf16 only; fp32 activations go to neither FP4 GEMM
    sel = _pick("NVFP4", 100, 48, (10, 0), ALL_LIBS, disabled=["FlashInferCutlassNvfp4Kernel"], dtype=torch.float16)
    assert sel.kernel is FlashInferCudnnNvfp4Kernel
    assert "activation dtype float16" in dict(sel.rejected)["FlashInferTrtllmNvfp4Kernel"]
    sel = _pick("NVFP4", 100, 48, (10, 0), ALL_LIBS, dtype=torch.float32)
    assert all("activation dtype float32" in dict(sel.rejected)[c.kernel_name()] for c in NVFP4_KERNELS)


# -- ops end to end, against reference models of the libraries' contracts -------------------------------------------


def _decode_fp4(packed: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(E2M1)
    lo, hi = table[(packed & 0xF).long()], table[(packed >> 4).long()]
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)


def _decode_scales(buf, rows, cols, e8m0: bool):
    b = gather_by_index(buf, rows, cols)
    return torch.exp2(b.float() - 127) if e8m0 else b.view(torch.float8_e4m3fn).float()


class ReferenceFlashInfer(types.ModuleType):
    """FlashInfer 0.7.2's mm_fp4 / mm_mxfp8 / fp4_quantize / mxfp8_quantize as their docstrings and argument
    checks describe them, in fp32 torch; records each call's backend."""

    def __init__(self):
        super().__init__("flashinfer")
        self.calls = []

    def mm_fp4(self, a, b, a_descale, b_descale, alpha=None, out_dtype=torch.bfloat16, out=None, block_size=16,
               use_8x4_sf_layout=False, backend="auto", use_nvfp4=True, enable_pdl=True):
        self.calls.append(backend)
        assert a.dtype == torch.uint8 and b.dtype == torch.uint8 and a.dim() == 2 and b.dim() == 2
        assert a.shape[1] == b.shape[0], "b is the [K/2, N] column-major view of the weight"
        assert b.stride(0) == 1, "b must be column major"
        assert a_descale.dtype in (torch.float8_e4m3fn, torch.uint8) and b_descale.dtype == a_descale.dtype
        assert alpha is not None and alpha.dtype == torch.float32 and alpha.numel() == 1
        assert out_dtype in (torch.bfloat16, torch.float16)
        assert (block_size == 16) == use_nvfp4 and block_size in (16, 32)
        assert not use_8x4_sf_layout
        if backend == "trtllm":
            assert use_nvfp4 and out_dtype == torch.bfloat16
        if not use_nvfp4:
            assert backend in ("cudnn", "cute-dsl")
        if backend == "cute-dsl":
            assert b.shape[1] % 8 == 0
        m, k, n = a.shape[0], a.shape[1] * 2, b.shape[1]
        assert k % 32 == 0 and n % 32 == 0, "CUTLASS FP4 alignment"
        ksf = k // block_size
        assert tuple(a_descale.shape) == (ceil_to(m, 128), ceil_to(ksf, 4))
        w_sf_buf = b_descale.t()  # the kernel reads the transposed view's storage: [N128, Ksf4] row-major
        assert w_sf_buf.is_contiguous() and tuple(w_sf_buf.shape) == (ceil_to(n, 128), ceil_to(ksf, 4))
        w = b.t()
        e8m0 = not use_nvfp4
        xs = _decode_scales(a_descale, m, ksf, e8m0)
        ws = _decode_scales(w_sf_buf, n, ksf, e8m0)
        wv = _decode_fp4(w)
        if backend == "trtllm":  # rows of the weight and of its scales are in trtllm's shuffled order
            wv, ws = trtllm_unshuffle_by_map(wv), trtllm_unshuffle_by_map(ws)
        xf = _decode_fp4(a) * xs.repeat_interleave(block_size, 1)
        wf = wv * ws.repeat_interleave(block_size, 1)
        return ((xf @ wf.t()) * alpha.float()).to(out_dtype)

    def mm_mxfp8(self, a, b, a_descale, b_descale, out=None, out_dtype=torch.bfloat16, use_8x4_sf_layout=False,
                 backend="auto"):
        self.calls.append(backend)
        assert a.dtype == torch.float8_e4m3fn and b.dtype == torch.float8_e4m3fn and a.shape[1] == b.shape[0]
        assert b.stride(0) == 1, "b must be column major"
        m, k, n = a.shape[0], a.shape[1], b.shape[1]
        assert n >= 128 and k >= 128
        assert a_descale.dim() == 1 and b_descale.dim() == 1, "cutlass reads 1-D swizzled scales"
        assert a_descale.dtype == torch.uint8 and b_descale.dtype == torch.uint8
        assert a_descale.numel() == ceil_to(m, 128) * ceil_to(k, 128) // 128 * 4
        assert b_descale.numel() == ceil_to(n, 128) * ceil_to(k, 128) // 128 * 4
        xs = _decode_scales(a_descale, m, k // 32, True).repeat_interleave(32, 1)
        ws = _decode_scales(b_descale, n, k // 32, True).repeat_interleave(32, 1)
        return ((a.float() * xs) @ (b.t().float() * ws).t()).to(out_dtype)

    def fp4_quantize(self, x, global_scale=None, sf_vec_size=16, sf_use_ue8m0=False, is_sf_swizzled_layout=True,
                     is_sf_8x4_layout=False, is_global_scale_inversed=False, enable_pdl=None, backend="cuda",
                     nvfp4_4over6=None):
        assert is_sf_swizzled_layout and not is_sf_8x4_layout and not is_global_scale_inversed
        k = x.shape[1]
        q, sf = quantize_nvfp4(x, global_scale, k) if sf_vec_size == 16 else quantize_mxfp4(x, k)
        return q, swizzle_by_index(sf).reshape(ceil_to(x.shape[0], 128), -1)

    def mxfp8_quantize(self, x, is_sf_swizzled_layout=True, alignment=32, enable_pdl=None, backend="cuda",
                       sf_swizzle_layout=None):
        q, sf = quantize_mxfp8(x, x.shape[1])
        return q, swizzle_by_index(sf)  # 1-D, as FlashInfer returns it


def reference_f4f4bf16(XQ, WQ, x_scale, w_scale, output=None, global_scale=None):
    """FBGEMM GenAI 1.6.0 f4f4bf16: row-major XQ [M, K/2], WQ [N, K/2], flat 128x4 scales; NVFP4 iff global_scale."""
    assert XQ.is_contiguous() and WQ.is_contiguous() and x_scale.is_contiguous() and w_scale.is_contiguous()
    assert output is None and global_scale is not None and global_scale.dtype == torch.float32
    assert x_scale.dtype == torch.uint8 and w_scale.dtype == torch.uint8 and x_scale.dim() == 1
    m, k, n = XQ.shape[0], XQ.shape[1] * 2, WQ.shape[0]
    assert n % 32 == 0 and k % 32 == 0, "CUTLASS alignment 32 for A and B"
    assert x_scale.numel() == ceil_to(m, 128) * ceil_to(k // 16, 4)
    assert w_scale.numel() == ceil_to(n, 128) * ceil_to(k // 16, 4)
    xf = _decode_fp4(XQ) * _decode_scales(x_scale, m, k // 16, False).repeat_interleave(16, 1)
    wf = _decode_fp4(WQ) * _decode_scales(w_scale, n, k // 16, False).repeat_interleave(16, 1)
    return ((xf @ wf.t()) * global_scale.float()).to(torch.bfloat16)


@pytest.fixture
def libraries(monkeypatch):
    fi = ReferenceFlashInfer()
    monkeypatch.setitem(sys.modules, "flashinfer", fi)
    monkeypatch.setattr(torch.ops, "fbgemm", types.SimpleNamespace(f4f4bf16=reference_f4f4bf16), raising=False)
    return fi


def _scale(ref):
    return max(ref.float().abs().amax().item(), 1e-3) if ref.numel() else 1.0


def _check_against_emulation(kernel_cls, n, k, x_shape, dtype=torch.bfloat16, bias=False, scheme_name=None):
    scheme_name = scheme_name or SCHEME_OF[kernel_cls]
    scheme, t = make_layer(scheme_name, n, k, seed=n + k)
    cfg = LinearConfig(scheme, n, k, dtype, bias)
    x = (torch.randn(*x_shape, k) * 1.5).to(dtype)
    b = torch.randn(n).to(dtype) if bias else None
    out = kernel_cls(cfg).apply(x, kernel_cls(cfg).prepare(t), b)
    ref = EmulationKernel(cfg).apply(x, EmulationKernel(cfg).prepare(t), b)
    assert out.shape == (*x_shape, n) and out.dtype == dtype
    # identical quantized operands; only fp32 summation order and the final rounding to bf16/fp16 differ
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * _scale(ref))


@pytest.mark.parametrize("kernel", ALL_KERNELS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("x_shape", [(0,), (1,), (7,), (130,), (2, 3)], ids=str)
def test_kernel_matches_emulation(libraries, kernel, x_shape):
    for n, k in SHAPES[SCHEME_OF[kernel]]:
        _check_against_emulation(kernel, n, k, x_shape, bias=x_shape == (7,))
    if x_shape[0] > 0:
        assert libraries.calls or kernel is FbgemmNvfp4Kernel


ONE_PER_LIBRARY_CALL = [FlashInferCutlassNvfp4Kernel, FlashInferCuteDslMxfp4Kernel, FlashInferCutlassMxfp8Kernel]


@pytest.mark.parametrize("kernel", ONE_PER_LIBRARY_CALL, ids=lambda c: c.__name__)
def test_kernel_fp16(libraries, kernel):
    n, k = SHAPES[SCHEME_OF[kernel]][0]
    _check_against_emulation(kernel, n, k, (5,), dtype=torch.float16)


@pytest.mark.parametrize("kernel", ONE_PER_LIBRARY_CALL, ids=lambda c: c.__name__)
def test_flashinfer_activation_quantizer_path(libraries, kernel):
    # the opt-in path through FlashInfer's quantizer: here the reference model quantizes as quantops.formats does,
    # so this checks the plumbing (layouts, K padding, M padding), not FlashInfer's own rounding
    variant = type(kernel.__name__, (kernel,), {"activation_quantizer": "flashinfer"})
    for n, k in SHAPES[SCHEME_OF[kernel]]:
        for m in (0, 1, 130):
            _check_against_emulation(variant, n, k, (m,), scheme_name=SCHEME_OF[kernel])


def test_ops_opcheck(libraries):
    ops = []
    scheme, t = make_layer("NVFP4", 100, 48)
    for cls in (FlashInferCutlassNvfp4Kernel, FlashInferTrtllmNvfp4Kernel):
        p = cls(config(cls, 100, 48)).prepare(t)
        for m in (1, 130):
            xq, xs = quantize_nvfp4(torch.randn(m, 48), p["input_global_scale"], 48)
            xq = torch.nn.functional.pad(xq, (0, 8))
            ops.append((torch.ops.quantops.flashinfer_mm_fp4.default,
                        (xq, xs, False, p["weight_packed"], p["weight_scale"], p["alpha"], 100, cls.mm_backend, 16,
                         torch.bfloat16)))
            ops.append((torch.ops.quantops.fbgemm_nvfp4_mm.default,
                        (xq, xs, *[FbgemmNvfp4Kernel(config(FbgemmNvfp4Kernel, 100, 48)).prepare(t)[key]
                                   for key in ("weight_packed", "weight_scale", "alpha")], 100)))
            ops.append((torch.ops.quantops.flashinfer_quantize_128x4.default,
                        (torch.randn(m, 48, dtype=torch.bfloat16), p["input_global_scale"], "nvfp4", 64)))
    scheme, t = make_layer("MXFP8", 136, 160)
    p = FlashInferCutlassMxfp8Kernel(config(FlashInferCutlassMxfp8Kernel, 136, 160)).prepare(t)
    for m in (1, 130):
        xq, xs = quantize_mxfp8(torch.randn(m, 160), 160)
        ops.append((torch.ops.quantops.flashinfer_mm_mxfp8.default,
                    (xq, xs, False, p["weight"], p["weight_scale"], 136, torch.bfloat16)))
        ops.append((torch.ops.quantops.flashinfer_quantize_128x4.default,
                    (torch.randn(m, 160, dtype=torch.bfloat16), None, "mxfp8", 160)))
    for op, args in ops:
        # test_schema's mutation check compares inputs with allclose, which CPU float8 lacks: it runs on the others
        has_fp8 = any(isinstance(a, torch.Tensor) and a.dtype == torch.float8_e4m3fn for a in args)
        utils = ("test_faketensor", "test_aot_dispatch_dynamic") + (() if has_fp8 else ("test_schema",))
        torch.library.opcheck(op, args, test_utils=utils)


def test_compiled_dynamic_m_matches_eager(libraries):
    # apply_2d records on FX proxies (the lowering's way), and Inductor runs the ops through their fake impls with
    # a symbolic M: NVFP4 through our torch quantizer, MXFP8 through the FlashInfer-quantizer op (M padded inside)
    mxfp8_fi = type("Mxfp8ViaFlashInferQuant", (FlashInferCutlassMxfp8Kernel,), {"activation_quantizer": "flashinfer"})
    for cls, scheme_name in [(FlashInferCutlassNvfp4Kernel, "NVFP4"), (mxfp8_fi, "MXFP8")]:
        n, k = SHAPES[scheme_name][0]
        scheme, t = make_layer(scheme_name, n, k)
        kern = cls(LinearConfig(scheme, n, k, torch.bfloat16))
        prepared = kern.prepare(t)
        names = sorted(prepared)
        if len(names) == 4:
            fn = lambda x, a, b, c, d: kern.apply_2d(x, dict(zip(names, (a, b, c, d))), None)  # noqa: E731
        else:
            fn = lambda x, a, b: kern.apply_2d(x, dict(zip(names, (a, b))), None)  # noqa: E731
        traced = torch.fx.symbolic_trace(fn)
        compiled = torch.compile(lambda x: kern.apply(x, prepared, None), dynamic=True, fullgraph=True)
        for m in (33, 130):  # one dynamic-M graph (M=1 would specialize a second one)
            x = torch.randn(m, k).to(torch.bfloat16)
            eager = kern.apply(x, prepared, None)
            torch.testing.assert_close(compiled(x), eager, rtol=0, atol=0)
            torch.testing.assert_close(traced(x, *[prepared[nm] for nm in names]), eager, rtol=0, atol=0)


# -- on a Blackwell GPU (the real libraries) -------------------------------------------------------------------------

_SM = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
blackwell = pytest.mark.skipif(
    _SM is None or _SM < (10, 0), reason=f"needs an sm100+ (Blackwell) GPU; this one is {_SM}"
)


@pytest.mark.gpu
@blackwell
@pytest.mark.parametrize("kernel", ALL_KERNELS, ids=lambda c: c.__name__)
def test_gpu_kernel_matches_emulation(kernel):
    ok, why = kernel.is_supported(_SM)
    if not ok:
        pytest.skip(f"{kernel.__name__}: {why}")
    n, k = SHAPES[SCHEME_OF[kernel]][0]
    scheme, t = make_layer(SCHEME_OF[kernel], n, k)
    t = {name: v.cuda() for name, v in t.items()}
    cfg = config(kernel, n, k)
    prepared = kernel(cfg).prepare(t)
    ref_prepared = EmulationKernel(cfg).prepare(t)
    for shape in [(0,), (1,), (33,), (130,), (2, 3)]:
        x = (torch.randn(*shape, k, device="cuda") * 1.5).to(torch.bfloat16)
        out = kernel(cfg).apply(x, prepared, None)
        ref = EmulationKernel(cfg).apply(x, ref_prepared, None)
        torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2 * _scale(ref))
