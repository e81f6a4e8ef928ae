"""Weight-only kernels on a CUDA GPU (the GPU machine: pytest -m gpu tests/test_gpu_wna16.py): the csrc/ build,
the CUDA GEMV, the Triton GEMM, dequantize + cuBLAS, tinygemm and FBGEMM (bf16 x int4, fp8 x int4), each
against its scheme's EmulationKernel on random inputs: odd N, K with a partial last iteration, M from 0 to 300
(the GEMV in chunks of 16 rows past 16), 3-D inputs with a bias, bf16 and fp16; then no host synchronisation,
CUDA-graph capture/replay, opcheck, and the registry's plan on this GPU.

Tolerance (relative Frobenius error vs emulation): 1e-2 (one bf16 rounding of each dequantized weight, or of
W4AFP8's dequantized activations, and of the output); FBGEMM's fp8 x int4 GEMMs 3e-2 (the row-wise one: its weights
pass through fp8, measured 0.026-0.031) and 4e-2 (the shuffled one: its group scales are rounded to e4m3 as well,
measured 0.030-0.034 on an H200). A failing test lists every case that failed.
"""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch

from quantops import get_scheme, quantize_weight
from quantops.formats import representable
from quantops.kernels.base import LinearConfig, needs_library
from quantops.kernels.emulation import EmulationKernel
from quantops.kernels.registry import select_kernel

pytestmark = pytest.mark.gpu

DEV = "cuda"
BF16, F16 = torch.bfloat16, torch.float16
WEIGHT_ONLY_TWIN = {"NVFP4": "NVFP4A16", "MXFP4": "MXFP4A16", "MXFP8": "MXFP8A16"}

ALL_FORMATS = [
    ("W4A16", {}),
    ("W4A16", {"group_size": 32}),
    ("W4A16", {"group_size": 64, "actorder": True}),
    ("W4A16_ASYM", {}),
    ("W4A16_ASYM", {"weight_strategy": "channel", "group_size": None}),
    ("W8A16", {}),
    ("W8A16", {"group_size": 32, "symmetric": False}),
    ("W4AFP8", {}),
    ("NVFP4A16", {}),
    ("MXFP4A16", {}),
    ("MXFP8A16", {}),
    ("NVFP4", {}),
    ("MXFP4", {}),
    ("MXFP8", {}),
]


def load(spec):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(f"quantops.kernels.{module}"), name)


def layer(name, kw, n, k, std=0.05):
    scheme = get_scheme(name, **kw)
    w = torch.randn(n, k, device=DEV) * std
    return scheme, quantize_weight(w, scheme, input_amax=torch.tensor(4.0, device=DEV))


def reference(scheme, tensors, n, k, x, bias, dtype):
    if scheme.name in WEIGHT_ONLY_TWIN:  # run weight-only on Hopper: the A16 twin is the reference
        scheme = get_scheme(WEIGHT_ONLY_TWIN[scheme.name])
        tensors = {key: t for key, t in tensors.items() if key != "input_global_scale"}
    emu = EmulationKernel(LinearConfig(scheme, n, k, dtype, has_bias=bias is not None))
    return emu.apply(x, emu.prepare(tensors), bias)


def rel_err(out, ref):
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12))


def check_kernel(spec, formats, shapes, ms, dtypes, tol=1e-2, std=0.05):
    """Every (format, shape, dtype, M) the kernel can implement, against emulation; returns the failures."""
    cls = load(spec)
    failures, ran = [], 0
    for name, kw in formats:
        for n, k in shapes:
            scheme = get_scheme(name, **kw)
            if representable(scheme, n, k):  # e.g. groups of 128 over K=96
                continue
            for dtype in dtypes:
                cfg = LinearConfig(scheme, n, k, dtype, has_bias=True)
                ok, why = cls.can_implement(cfg)
                if not ok or dtype not in cls.dtypes:
                    continue
                scheme, tensors = layer(name, kw, n, k, std)
                kernel = cls(cfg)
                prepared = kernel.prepare(tensors)
                bias = torch.randn(n, device=DEV, dtype=dtype)
                for m in ms:
                    shape = (2, m // 2, k) if m >= 4 and m % 2 == 0 else (m, k)  # 3-D inputs too
                    x = torch.randn(shape, device=DEV, dtype=dtype)
                    out = kernel.apply(x, prepared, bias)
                    ref = reference(scheme, tensors, n, k, x, bias, dtype)
                    ran += 1
                    if out.shape != ref.shape or out.dtype != dtype:
                        failures.append(f"{scheme.key()} {n}x{k} {dtype} M={m}: shape {tuple(out.shape)} {out.dtype}")
                    elif m and rel_err(out, ref) > tol:
                        failures.append(f"{scheme.key()} {n}x{k} {dtype} M={m}: rel err {rel_err(out, ref):.2e}")
    assert ran, f"{spec}: no case ran"
    return failures


def test_cuda_extension_builds():
    from quantops.kernels import cuda_ext

    assert hasattr(cuda_ext.extension, "weight_only_gemv")


def test_cuda_gemv_matches_emulation():
    # K=96: a partial last iteration (128 columns per warp iteration for 4-bit, 64 for 8-bit); N odd
    failures = check_kernel(
        "cuda_wna16:WeightOnlyGemvCudaKernel", ALL_FORMATS, [(200, 256), (37, 96), (1024, 2048)],
        (0, 1, 2, 3, 8, 9, 16, 17, 40, 64, 65, 130), (BF16, F16),
    )
    assert not failures, "\n".join(failures)


def test_cuda_gemv_split_choices():
    """Every path of the CUDA op (GEMV: 16 rows of x per launch; GEMM: x shared by a block, K split over blocks; on
    sm_90 the wgmma GEMM, 128 weight rows per block, two K splits added up in a thread-block cluster, more through the
    global workspace) and every K split give the same answer (the sweep
    times them); N=264 is an odd band count (one band per GEMV
    warp; a GEMM block of 256 rows plus a partial one), N=256 an even one; K=1152 is 9 tiles of 4-bit, split
    unevenly; M=130 is three chunks of the GEMMs."""
    from quantops.kernels import cuda_ext
    from quantops.kernels.cuda_wna16 import WeightOnlyGemvCudaKernel

    paths = (0, 1, 2) if torch.cuda.get_device_capability() == (9, 0) else (0, 1)
    failures = []
    for (n, k), name in itertools.product([(264, 1024), (256, 1152)], ("W4A16_ASYM", "W8A16", "NVFP4A16", "MXFP8A16")):
        scheme, tensors = layer(name, {}, n, k)
        kernel = WeightOnlyGemvCudaKernel(LinearConfig(scheme, n, k, BF16))
        p = kernel.prepare(tensors)
        for m in (1, 5, 16, 30, 64, 130):
            x = torch.randn(m, k, device=DEV, dtype=BF16)
            ref = reference(scheme, tensors, n, k, x, None, BF16)
            for ksplit, path in itertools.product((0, 1, 2, 3, 8), paths):
                out = cuda_ext.extension.weight_only_gemv(
                    x, p["qweight"], p["scales"], p.get("zeros"), p.get("alpha"), kernel.fmt, kernel.group_size, n, k,
                    cuda_ext.stream_handle(x), ksplit, path,
                )
                if rel_err(out, ref) > 1e-2:
                    failures.append(f"{name} {n}x{k} M={m} ksplit={ksplit} path={path}: {rel_err(out, ref):.2e}")
    assert not failures, "\n".join(failures)


def test_cuda_float_weights_extreme_scales():
    """NVFP4A16 / MXFP4A16 / MXFP8A16 on every path of the CUDA op with block scales far from 1: rows of weights from
    std 1e-4 to 1e5 in one layer, so MX needs the post factor (alpha = 2^p > 1, block scales past 2 / 128) while its
    small blocks stay representable, and NVFP4's global scale is far from 1. Tolerance 1e-2 as above, on outputs
    divided by their weight row's std (every row counts)."""
    from quantops.kernels import cuda_ext
    from quantops.kernels.cuda_wna16 import WeightOnlyGemvCudaKernel

    paths = (0, 1, 2) if torch.cuda.get_device_capability() == (9, 0) else (0, 1)
    n, k = 264, 1024
    row_std = torch.logspace(-4, 5, n, device=DEV)[torch.randperm(n, device=DEV)].unsqueeze(1)
    failures = []
    for name in ("NVFP4A16", "MXFP4A16", "MXFP8A16"):
        scheme = get_scheme(name)
        tensors = quantize_weight(torch.randn(n, k, device=DEV) * row_std, scheme)
        kernel = WeightOnlyGemvCudaKernel(LinearConfig(scheme, n, k, BF16))
        p = kernel.prepare(tensors)
        if name != "NVFP4A16":
            assert p["alpha"].item() > 1, f"{name}: these scales should need the post factor"
        for m, path in itertools.product((1, 16, 64), paths):
            x = torch.randn(m, k, device=DEV, dtype=BF16)
            ref = reference(scheme, tensors, n, k, x, None, BF16)
            out = cuda_ext.extension.weight_only_gemv(
                x, p["qweight"], p["scales"], None, p["alpha"], kernel.fmt, kernel.group_size, n, k,
                cuda_ext.stream_handle(x), 0, path,
            )
            # each output column divided by its weight row's std, so that the small rows count as much as the large
            err = rel_err(out.float() / row_std.T, ref.float() / row_std.T)
            if err > 1e-2:
                failures.append(f"{name} M={m} path={path}: {err:.2e}")
    assert not failures, "\n".join(failures)


def test_triton_gemm_matches_emulation():
    # one M per tile configuration (<=16, <=64, >128): each is a separate Triton compile
    failures = check_kernel(
        "triton_wna16:WeightOnlyGemmTritonKernel", ALL_FORMATS, [(200, 512), (37, 96)], (0, 1, 33, 300), (BF16,)
    )
    failures += check_kernel(
        "triton_wna16:WeightOnlyGemmTritonKernel", [("W4A16_ASYM", {}), ("W8A16", {})], [(200, 512)], (3, 100), (F16,)
    )
    assert not failures, "\n".join(failures)


def test_dequant_cublas_matches_emulation():
    failures = check_kernel("dequant_cublas:WeightOnlyDequantCublasKernel", ALL_FORMATS, [(200, 512)], (0, 1, 300), (BF16,))
    failures += check_kernel(
        "dequant_cublas:WeightOnlyDequantCublasKernel", [("W4A16_ASYM", {}), ("MXFP8A16", {})], [(200, 512)], (5,),
        (F16, torch.float32),
    )
    assert not failures, "\n".join(failures)


def test_tinygemm_matches_emulation():
    formats = [("W4A16", {}), ("W4A16", {"group_size": 32}), ("W4A16_ASYM", {})]
    failures = check_kernel("tinygemm_int4:Int4TinygemmKernel", formats, [(256, 512), (1024, 384)], (0, 1, 5, 64), (BF16,))
    assert not failures, "\n".join(failures)


def test_fbgemm_int4_matches_emulation():
    pytest.importorskip("fbgemm_gpu.experimental.gen_ai", reason="FBGEMM GenAI not installed here")
    failures = check_kernel(
        "fbgemm_int4:Int4RowwiseFbgemmKernel", [("W4A16", {}), ("W4A16_ASYM", {})], [(256, 512)], (0, 1, 16, 128), (BF16,)
    )
    # the shuffled layout: N=208 is 13 of its 16-row blocks
    failures += check_kernel(
        "fbgemm_int4:Int4ShuffledFbgemmKernel", [("W4A16", {}), ("W4A16_ASYM", {})], [(256, 512), (208, 384)],
        (0, 1, 16, 128, 300), (BF16,)
    )
    # fp8 x int4: weights of std 0.05 and 0.002 (whose code * scale products would sit in e4m3's subnormals without
    # the power-of-two row scale); the shuffled GEMM also rounds its group scales to e4m3
    for std in (0.05, 0.002):
        failures += check_kernel(
            "fbgemm_int4:W4AFp8RowwiseFbgemmKernel", [("W4AFP8", {}), ("W4AFP8", {"symmetric": False})], [(256, 512)],
            (0, 1, 16, 128), (BF16,), tol=3e-2, std=std,
        )
        failures += check_kernel(
            "fbgemm_int4:W4AFp8ShuffledFbgemmKernel", [("W4AFP8", {})], [(256, 512), (208, 384)], (0, 1, 16, 128, 300),
            (BF16,), tol=4e-2, std=std,
        )
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "spec", ["cuda_wna16:WeightOnlyGemvCudaKernel", "triton_wna16:WeightOnlyGemmTritonKernel",
             "dequant_cublas:WeightOnlyDequantCublasKernel"]
)
def test_no_sync_and_cuda_graph(spec):
    cls = load(spec)
    k = 1024
    # M=40: the CUDA kernel's GEMM path, with K split over blocks (a workspace and arrival counters per call); on an
    # H100/H200, 4096 rows at M=130 split K in two: the wgmma GEMM's cluster sum. Under capture, its launch after the
    # x permute kernel (a programmatic dependent launch) must still see the new x on replay.
    for name, (n, m) in itertools.product(("W4A16_ASYM", "NVFP4A16"), ((512, 8), (512, 40), (4096, 130))):
        scheme, tensors = layer(name, {"actorder": True, "group_size": 128} if name == "W4A16_ASYM" else {}, n, k)
        kernel = cls(LinearConfig(scheme, n, k, BF16))
        prepared = kernel.prepare(tensors)
        x = torch.randn(m, k, device=DEV, dtype=BF16)
        expect = kernel.apply(x, prepared, None)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            kernel.apply(x, prepared, None)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                kernel.apply(x, prepared, None)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = kernel.apply(x, prepared, None)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, kernel.apply(x, prepared, None)) < 1e-6
        assert rel_err(expect, out) > 1e-3  # the replay saw the new input


def test_opcheck_cuda_ops():
    from quantops.kernels.cuda_wna16 import WeightOnlyGemvCudaKernel
    from quantops.kernels.dequant_cublas import WeightOnlyDequantCublasKernel
    from quantops.kernels.triton_wna16 import WeightOnlyGemmTritonKernel

    n, k = 72, 256
    scheme, tensors = layer("W4A16_ASYM", {"actorder": True}, n, k)
    nv_scheme, nv_tensors = layer("NVFP4A16", {}, n, k)
    for cls, op, extra, sch, ts in [
        (WeightOnlyGemvCudaKernel, torch.ops.quantops.weight_only_gemv_cuda, ("alpha", "perm"), scheme, tensors),
        (WeightOnlyGemvCudaKernel, torch.ops.quantops.weight_only_gemv_cuda, ("alpha", "perm"), nv_scheme, nv_tensors),
        (WeightOnlyGemmTritonKernel, torch.ops.quantops.weight_only_gemm_triton, ("g_idx",), scheme, tensors),
        (WeightOnlyDequantCublasKernel, torch.ops.quantops.dequant_cublas_mm, ("g_idx",), scheme, tensors),
    ]:
        kernel = cls(LinearConfig(sch, n, k, BF16))
        p = kernel.prepare(ts)
        for m in (0, 3, 20, 70):
            x = torch.randn(m, k, device=DEV, dtype=BF16)
            args = (x, p["qweight"], p["scales"], p.get("zeros"), *(p.get(e) for e in extra), kernel.fmt,
                    kernel.group_size, n, k)
            torch.library.opcheck(op, args)


def test_opcheck_fbgemm_ops():
    """The FBGEMM int4 ops' fake impls and schemas; the kernels built directly (no registry call has imported FBGEMM
    in a fresh process: prepare must load it itself)."""
    pytest.importorskip("fbgemm_gpu.experimental.gen_ai", reason="FBGEMM GenAI not installed here")
    from quantops.kernels import fbgemm_int4 as f

    n, k = 208, 384
    for cls, name, op, keys in [
        (f.Int4ShuffledFbgemmKernel, "W4A16", "fbgemm_bf16i4bf16_shuffled", ("wq", "scale", "zero")),
        (f.Int4RowwiseFbgemmKernel, "W4A16_ASYM", "fbgemm_bf16i4bf16_rowwise", ("wq", "scale", "zero")),
        (f.W4AFp8ShuffledFbgemmKernel, "W4AFP8", "fbgemm_f8i4bf16_shuffled", ("wq", "row_scale", "table")),
        (f.W4AFp8RowwiseFbgemmKernel, "W4AFP8", "fbgemm_f8i4bf16_rowwise", ("wq", "scale", "zero")),
    ]:
        scheme, tensors = layer(name, {}, n, k)
        p = cls(LinearConfig(scheme, n, k, BF16)).prepare(tensors)
        for m in (0, 5, 70):
            x = torch.randn(m, k, device=DEV, dtype=BF16)
            utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
            if "f8i4" in op:
                x = (x.float().clamp(-400, 400).to(torch.float8_e4m3fn), torch.rand(m, 1, device=DEV) + 0.5)
                utils = utils[1:]  # test_schema needs aten ops fp8 lacks
            else:
                x = (x,)
            torch.library.opcheck(getattr(torch.ops.quantops, op), (*x, *(p[key] for key in keys), k), test_utils=utils)


def test_registry_plan_on_this_gpu():
    sel = select_kernel("W4A16", N=4096, K=4096, device=DEV)
    assert sel.for_m(8).kernel_name() == "WeightOnlyGemvCudaKernel", str(sel)
    if torch.cuda.get_device_capability() == (9, 0) and needs_library("fbgemm")[0]:
        # past 32 rows the op's wgmma GEMM is ranked above FBGEMM's shuffled GEMM only for large layers (to M=64)
        assert [sel.for_m(m).kernel_name() for m in (64, 4096)] == ["Int4ShuffledFbgemmKernel"] * 2, str(sel)
        big = select_kernel("W4A16", N=28672, K=4096, device=DEV)
        assert [big.for_m(m).kernel_name() for m in (64, 65)] == [
            "WeightOnlyGemvCudaKernel", "Int4ShuffledFbgemmKernel"], str(big)
    else:
        assert sel.for_m(4096).kernel_name() == "WeightOnlyDequantCublasKernel", str(sel)
    sel = select_kernel("NVFP4", N=4096, K=4096, device=DEV)
    if torch.cuda.get_device_capability() < (10, 0):
        assert sel.for_m(1).kernel_name() == "WeightOnlyGemvCudaKernel", str(sel)
