"""FP8 / INT8 / MXFP8 W8A8 kernels on a CUDA GPU (run on the GPU machine: pytest -m gpu tests/test_gpu_fp8_int8.py).

Every kernel against its scheme's EmulationKernel (same activation quantizer, fp32 dequantized GEMM) on random
inputs: aligned and odd N/K, M in {0, 1, 3, 16, 33, 128, 300, 1024}, 3-D inputs with a bias; then no host
synchronisation (torch.cuda.set_sync_debug_mode("error")), CUDA-graph capture/replay, torch.compile with CUDA
graphs and no cudagraph skips, opcheck of every op, and the registry's choices on this GPU.

Tolerance (relative Frobenius error vs emulation): bf16/fp16 output 1e-2 (one output rounding, 2^-8 per
element, plus FP8 tensor-core accumulation, fast-accum in FBGEMM); fp32 output 2e-3 (the accumulation of FP8
tensor cores is not IEEE fp32). A failure lists every case that failed, not just the first.
"""

from __future__ import annotations

import os

import pytest
import torch

from quantops import get_scheme, quantize_weight
from quantops.kernels.base import LinearConfig
from quantops.kernels.emulation import EmulationKernel
from quantops.kernels.registry import device_capability, select_kernel

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}
MS = (0, 1, 3, 16, 33, 128, 300, 1024)
SHAPES = [(256, 512), (200, 328), (2048, 4096)]
MX_SHAPES = [(256, 512), (200, 352), (2048, 4096)]  # MX: K in whole blocks of 32

FP8_TC = [("FP8", {}), ("FP8_DYNAMIC", {}), ("FP8_DYNAMIC", {"weight_strategy": "tensor"}),
          ("FP8", {"weight_strategy": "channel"}), ("FP8", {"act_dynamic": True})]
FP8_T = [("FP8", {}), ("FP8", {"act_dynamic": True})]
FP8_B = [("FP8_BLOCK", {})]
INT8 = [("W8A8", {}), ("W8A8", {"act_symmetric": False}), ("W8A8", {"act_dynamic": False, "act_strategy": "tensor"}),
        ("W8A8", {"act_dynamic": False, "act_strategy": "tensor", "act_symmetric": False, "weight_strategy": "tensor"})]

BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
# "module:Class" -> (scheme variants, output dtypes)
CASES = {
    "cublas_fp8:Fp8ScaledMMKernel": (FP8_TC, (BF16,)),
    "cublas_fp8:Fp8BlockScaledMMKernel": (FP8_B, (BF16,)),
    "fbgemm_fp8:Fp8RowwiseFbgemmKernel": (FP8_TC[1:4], (BF16,)),
    "fbgemm_fp8:Fp8TensorwiseFbgemmKernel": (FP8_T, (BF16,)),
    "fbgemm_fp8:Fp8BlockScaledFbgemmKernel": (FP8_B, (BF16,)),
    "flashinfer_fp8:Fp8FlashInferKernel": (FP8_T, (BF16, F16)),
    "flashinfer_fp8:Fp8BlockScaledFlashInferKernel": (FP8_B, (BF16,)),
    "triton_fp8:Fp8TritonKernel": (FP8_TC, (BF16, F16)),
    "triton_fp8_blockscaled:Fp8BlockScaledTritonKernel": (FP8_B, (BF16, F32)),
    "cublas_int8:Int8IntMMKernel": (INT8, (BF16, F16)),
    "triton_int8:Int8TritonKernel": (INT8, (BF16, F16)),
    "triton_mxfp8:Mxfp8TritonKernel": ([("MXFP8", {})], (BF16, F32)),
}
# QUANTOPS_GPU_KERNELS=substr,...: run the cases of those kernels only (a partial re-run on a short lease)
if os.environ.get("QUANTOPS_GPU_KERNELS"):
    CASES = {spec: v for spec, v in CASES.items() if any(s in spec for s in os.environ["QUANTOPS_GPU_KERNELS"].split(","))}
# tensor-wise cuBLAS also writes fp16 / fp32 (per-tensor x per-tensor schemes only: row-wise is bf16-only)
EXTRA_DTYPES = {("cublas_fp8:Fp8ScaledMMKernel", "FP8"): (F16, F32), ("cublas_fp8:Fp8ScaledMMKernel", "FP8{act_dynamic=True}"): (F16, F32)}


def shapes(spec):
    return MX_SHAPES if "mxfp8" in spec else SHAPES


def load(spec):
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(f"quantops.kernels.{module}"), name)


def make_layer(scheme, n, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(dtype)
    amax = None
    if not scheme.act_dynamic:
        amax = torch.tensor(3.0) if scheme.act_symmetric else (torch.tensor(-2.5), torch.tensor(3.5))
    tensors = {name: t.cuda() for name, t in quantize_weight(w, scheme, input_amax=amax).items()}
    return tensors, LinearConfig(scheme, n, k, dtype)


def rel_err(y, ref):
    if ref.numel() == 0:
        return 0.0
    return float((y.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12))


def x_for(scheme, m, k, dtype):
    shift = 0.7 if scheme.act == "int8" and not scheme.act_symmetric else 0.0
    return (torch.randn(m, k, device="cuda") + shift).to(dtype)


def variants(spec):
    schemes, dtypes = CASES[spec]
    for preset, changes in schemes:
        scheme = get_scheme(preset, **changes)
        for dtype in dtypes + EXTRA_DTYPES.get((spec, scheme.key()), ()):
            yield scheme, dtype


@pytest.fixture(scope="module")
def capability():
    return device_capability("cuda")


@pytest.mark.parametrize("spec", list(CASES))
def test_kernel_vs_emulation(spec, capability):
    kcls = load(spec)
    ok, why = kcls.is_supported(capability)
    assert ok, f"{spec} should run on sm{capability[0]}{capability[1]} with the devkit: {why}"
    failures, report = [], []
    for scheme, dtype in variants(spec):
        for n, k in shapes(spec):
            tensors, cfg = make_layer(scheme, n, k, dtype)
            ok, why = kcls.can_implement(cfg)
            if not ok:
                failures.append(f"{scheme.key()} {n}x{k} {dtype}: cannot implement: {why}")
                continue
            kernel, ref = kcls(cfg), EmulationKernel(cfg)
            try:
                prepared, ref_prepared = kernel.prepare(tensors), ref.prepare(tensors)
                worst = 0.0
                for m in MS:
                    x = x_for(scheme, m, k, dtype)
                    y = kernel.apply_2d(x, prepared, None)
                    r = ref.apply_2d(x, ref_prepared, None)
                    err = rel_err(y, r)
                    worst = max(worst, err)
                    if y.shape != (m, n) or y.dtype != dtype or not y.is_contiguous():
                        failures.append(f"{scheme.key()} {n}x{k} M={m} {dtype}: got {tuple(y.shape)} {y.dtype} {y.stride()}")
                    elif not bool(torch.isfinite(y).all()) or err > TOL[dtype]:
                        failures.append(f"{scheme.key()} {n}x{k} M={m} {dtype}: rel err {err:.3e}")
                bias = torch.randn(n, device="cuda").to(dtype)
                x3 = x_for(scheme, 6, k, dtype).reshape(2, 3, k)
                err = rel_err(kernel.apply(x3, prepared, bias), ref.apply(x3, ref_prepared, bias))
                if err > TOL[dtype]:
                    failures.append(f"{scheme.key()} {n}x{k} 3-D+bias {dtype}: rel err {err:.3e}")
                report.append(f"{scheme.key()} {n}x{k} {str(dtype)[6:]}: worst {worst:.2e}")
            except Exception as e:
                failures.append(f"{scheme.key()} {n}x{k} {dtype}: {type(e).__name__}: {str(e)[:300]}")
    print(f"\n{spec}:\n  " + "\n  ".join(report + [f"FAIL {f}" for f in failures]), flush=True)
    assert not failures, f"{spec}: {len(failures)} failures:\n" + "\n".join(failures)


@pytest.mark.parametrize("spec", list(CASES))
def test_no_sync_and_cuda_graphs(spec, capability):
    kcls = load(spec)
    scheme, dtype = next(variants(spec))
    tensors, cfg = make_layer(scheme, 2048, 4096, dtype)
    kernel = kcls(cfg)
    prepared = kernel.prepare(tensors)
    for m in (1, 16, 33):  # warm up: JIT builds and autotuning may sync, the steady state must not
        kernel.apply_2d(x_for(scheme, m, 4096, dtype), prepared, None)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for m in (1, 16, 33):
            kernel.apply_2d(x_for(scheme, m, 4096, dtype), prepared, None)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for m in (1, 16, 33):
        x = x_for(scheme, m, 4096, dtype)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            kernel.apply_2d(x, prepared, None)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = kernel.apply_2d(x, prepared, None)
        x.copy_(x_for(scheme, m, 4096, dtype))  # new data, same buffer
        graph.replay()
        expect = kernel.apply_2d(x, prepared, None)
        assert rel_err(y, expect) < 1e-3, f"{spec} M={m}: graph replay differs from eager ({rel_err(y, expect):.2e})"


def test_compiled_cuda_graphs_have_no_skips(capability):
    """Every kernel in one compiled function under CUDA graphs (what the lowering hands to Inductor)."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    k = 1024
    layers = []
    for spec in CASES:
        kcls = load(spec)
        scheme, dtype = next(v for v in variants(spec) if v[1] == BF16)
        tensors, cfg = make_layer(scheme, 384, k, dtype)
        kernel = kcls(cfg)
        layers.append((spec, kernel, kernel.prepare(tensors), torch.randn(384, device="cuda").to(dtype)))

    def f(x):
        return [kernel.apply(x, p, b) for _, kernel, p, b in layers]

    torch._dynamo.reset()
    counters.clear()
    with inductor_config.patch(graph_partition=False):
        cf = torch.compile(f, mode="reduce-overhead")
        for m in (16, 16, 16):
            x = torch.randn(2, m // 2, k, device="cuda").to(BF16)
            outs = cf(x)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    eager = f(x)
    for (spec, *_), y, e in zip(layers, outs, eager):
        assert rel_err(y, e) < 1e-2, f"{spec}: compiled differs from eager ({rel_err(y, e):.2e})"


def test_opcheck_all_ops(capability):
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordQuantopsOps(TorchDispatchMode):  # the ops and arguments exactly as apply_2d builds them
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "quantops":
                self.calls.append((func, args))
            return func(*args, **(kwargs or {}))

    utils = ("test_faketensor", "test_aot_dispatch_dynamic")  # test_schema needs aten ops fp8 lacks
    for spec in CASES:
        kcls = load(spec)
        scheme, dtype = next(variants(spec))
        n, k = shapes(spec)[1]
        tensors, cfg = make_layer(scheme, n, k, dtype)
        kernel = kcls(cfg)
        prepared = kernel.prepare(tensors)
        with RecordQuantopsOps() as rec:
            kernel.apply_2d(x_for(scheme, 5, k, dtype), prepared, None)
        assert rec.calls, spec
        for op, args in rec.calls:
            torch.library.opcheck(op, args, test_utils=utils)


def test_registry_picks_a_real_kernel_here():
    for scheme in ("FP8", "FP8_DYNAMIC", "FP8_BLOCK", "W8A8", "MXFP8"):
        for n, k in ((4096, 4096), (200, 352 if scheme == "MXFP8" else 328)):
            sel = select_kernel(scheme, N=n, K=k, device="cuda")
            assert all(cls.backend != "emulation" for _, cls in sel.plan), str(sel)
            print(sel.config.describe(), "->", sel.plan_str())
