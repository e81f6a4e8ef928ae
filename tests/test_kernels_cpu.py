"""The CPU kernels (PyTorch's CPU int8/int4 GEMMs) against the scheme's EmulationKernel.

Random (never all-zero) weights and activations, odd N and K where the op allows them, M = 0, 1, 5 and a 3-D
input. Tolerance: relative Frobenius error against emulation (which quantizes activations with the same plain-
torch code and multiplies dequantized operands in fp32):
  fp32 1e-5 (accumulation order only; _int_mm is exact, then one fp32 epilogue);
  fp16 2e-3, bf16 1e-2 (the ops round the output, and weight-only ops the zero term -zp*s, to the activation dtype:
  2^-11 / 2^-8 relative per element).
"""

from __future__ import annotations

import pytest
import torch

from quantops import dequantize_weight, get_scheme, quantize_weight, select_kernel
from quantops.kernels.base import LinearConfig
from quantops.kernels.cpu_int8 import Int8IntMMCpuKernel
from quantops.kernels.cpu_wna16 import (
    Int4WeightOnlyCpuFp32Kernel,
    Int4WeightOnlyCpuKernel,
    Int8WeightOnlyCpuFp32Kernel,
    Int8WeightOnlyCpuKernel,
)
from quantops.kernels.emulation import EmulationKernel

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
MS = (0, 1, 5)

INT8_W8A8 = [
    ("W8A8", {}),
    ("W8A8", {"act_symmetric": False}),
    ("W8A8", {"act_dynamic": False, "act_strategy": "tensor"}),
    ("W8A8", {"act_dynamic": False, "act_strategy": "tensor", "act_symmetric": False, "weight_strategy": "tensor"}),
]
# (preset, changes, N, K): odd sizes where the op takes them
INT8_WEIGHT_ONLY = [
    ("W8A16", {"weight_strategy": "channel"}, 200, 320),
    ("W8A16", {}, 24, 128),  # the preset, with K == its group of 128: one scale per channel
]
INT8_WEIGHT_ONLY_ODD_K = [("W8A16", {"weight_strategy": "channel"}, 7, 33)]  # fp16/fp32 only (bf16 needs K % 16)
INT4_WEIGHT_ONLY = [
    ("W4A16", {}, 200, 384),  # N padded to 208 inside prepare()
    ("W4A16_ASYM", {}, 24, 256),
    ("W4A16", {"group_size": 64, "actorder": True}, 40, 320),
    ("W4A16_ASYM", {"group_size": 32, "actorder": True}, 17, 96),
    ("W4A16", {"weight_strategy": "channel", "group_size": None}, 7, 96),  # per-channel -> groups of 32
    ("W4A16", {"group_size": 512}, 9, 1024),  # group 512 -> op groups of 256
]


def make_layer(scheme, n, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(dtype)
    amax = None
    if not scheme.act_dynamic:
        amax = torch.tensor(3.0) if scheme.act_symmetric else (torch.tensor(-2.5), torch.tensor(3.5))
    return quantize_weight(w, scheme, input_amax=amax)


def rel_err(y, ref):
    if ref.numel() == 0:
        return 0.0
    return float((y.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12))


def check(kcls, preset, changes, n, k, dtype, bias=True):
    scheme = get_scheme(preset, **changes)
    tensors = make_layer(scheme, n, k, dtype)
    cfg = LinearConfig(scheme, n, k, dtype, has_bias=bias)
    ok, why = kcls.is_supported(None)
    assert ok, why
    ok, why = kcls.can_implement(cfg)
    assert ok, why
    assert dtype in kcls.dtypes
    kernel, ref = kcls(cfg), EmulationKernel(cfg)
    before = {name: t.clone() for name, t in tensors.items()}
    prepared = kernel.prepare(tensors)
    for name, t in tensors.items():  # prepare() is pure
        assert torch.equal(t, before[name]), name
    ref_prepared = ref.prepare(tensors)
    b = torch.randn(n, dtype=dtype) if bias else None
    for shape in [(m, k) for m in MS] + [(2, 3, k)]:
        x = (torch.randn(shape) + 0.25).to(dtype)  # a shift makes the asymmetric zero points non-trivial
        y = kernel.apply(x, prepared, b)
        r = ref.apply(x, ref_prepared, b)
        assert y.shape == shape[:-1] + (n,) and y.dtype == dtype and y.is_contiguous()
        err = rel_err(y, r)
        assert err <= TOL[dtype], f"{kcls.__name__} {scheme.key()} {shape} {dtype}: rel err {err:.2e} > {TOL[dtype]}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("preset,changes", INT8_W8A8)
@pytest.mark.parametrize("n,k", [(200, 320), (5, 37)])
def test_int8_int_mm_matches_emulation(preset, changes, n, k, dtype):
    check(Int8IntMMCpuKernel, preset, changes, n, k, dtype, bias=(n == 5))


@pytest.mark.parametrize(
    "preset,changes,n,k,dtype",
    [(*case, dt) for case in INT8_WEIGHT_ONLY for dt in (torch.bfloat16, torch.float16, torch.float32)]
    + [(*case, dt) for case in INT8_WEIGHT_ONLY_ODD_K for dt in (torch.float16, torch.float32)],
)
def test_int8_weight_only_matches_emulation(preset, changes, n, k, dtype):
    kcls = Int8WeightOnlyCpuFp32Kernel if dtype == torch.float32 else Int8WeightOnlyCpuKernel
    check(kcls, preset, changes, n, k, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("preset,changes,n,k", INT4_WEIGHT_ONLY)
def test_int4_weight_only_matches_emulation(preset, changes, n, k, dtype):
    kcls = Int4WeightOnlyCpuFp32Kernel if dtype == torch.float32 else Int4WeightOnlyCpuKernel
    check(kcls, preset, changes, n, k, dtype, bias=(n % 2 == 1))


def test_refusals_name_the_reason():
    cpu_int8 = LinearConfig(get_scheme("W8A16"), 64, 256, torch.bfloat16)
    ok, why = Int8WeightOnlyCpuKernel.can_implement(cpu_int8)
    assert not ok and "one scale per output channel" in why
    odd_k = LinearConfig(get_scheme("W8A16", weight_strategy="channel"), 64, 40, torch.bfloat16)
    ok, why = Int8WeightOnlyCpuKernel.can_implement(odd_k)
    assert not ok and "K % 16" in why
    ok, why = Int8WeightOnlyCpuKernel.can_implement(
        LinearConfig(get_scheme("W8A16", weight_strategy="channel", symmetric=False), 64, 64, torch.bfloat16))
    assert not ok and "zero points" in why
    ok, why = Int4WeightOnlyCpuKernel.can_implement(LinearConfig(get_scheme("W4A16", group_size=16), 64, 64, torch.bfloat16))
    assert not ok and "32/64/128/256" in why
    ok, why = Int4WeightOnlyCpuKernel.can_implement(
        LinearConfig(get_scheme("W4A16", weight_strategy="channel"), 64, 80, torch.bfloat16))
    assert not ok and "K (80)" in why
    ok, why = Int8IntMMCpuKernel.can_implement(LinearConfig(get_scheme("W8A8"), 64, 200_000, torch.bfloat16))
    assert not ok and "int32 accumulator" in why
    for kcls in (Int8IntMMCpuKernel, Int8WeightOnlyCpuKernel, Int4WeightOnlyCpuKernel):
        ok, why = kcls.is_supported((9, 0))
        assert not ok and "CPU" in why


def test_registry_ranks_cpu_kernels_above_emulation():
    cases = [
        ("W8A8", {}, 200, 320, torch.bfloat16, "Int8IntMMCpuKernel"),
        ("W8A8", {"act_symmetric": False}, 5, 37, torch.float32, "Int8IntMMCpuKernel"),
        ("W4A16", {}, 200, 384, torch.bfloat16, "Int4WeightOnlyCpuKernel"),
        ("W4A16_ASYM", {}, 200, 384, torch.float16, "Int4WeightOnlyCpuKernel"),
        ("W8A16", {"weight_strategy": "channel"}, 200, 320, torch.bfloat16, "Int8WeightOnlyCpuKernel"),
        ("W8A16", {}, 200, 256, torch.bfloat16, "EmulationKernel"),  # group 128 of K=256: one scale per channel only
        ("W4A16", {"group_size": 16}, 64, 64, torch.bfloat16, "EmulationKernel"),
    ]
    for preset, changes, n, k, dtype, want in cases:
        sel = select_kernel(get_scheme(preset, **changes), N=n, K=k, dtype=dtype, device="cpu")
        assert sel.kernel.kernel_name() == want, str(sel)
    # fp32: the per-row GEMV ops win only for small M; larger batches go to emulation
    sel = select_kernel("W4A16", N=64, K=256, dtype=torch.float32, device="cpu")
    assert [(m, c.kernel_name()) for m, c in sel.plan] == [(8, "Int4WeightOnlyCpuFp32Kernel"), (None, "EmulationKernel")]
    assert sel.for_m(1).kernel_name() == "Int4WeightOnlyCpuFp32Kernel" and sel.for_m(9).kernel_name() == "EmulationKernel"
    sel = select_kernel("W8A16", N=64, K=128, dtype=torch.float32, device="cpu")
    assert sel.plan_str() == "Int8WeightOnlyCpuFp32Kernel (M<=8), EmulationKernel (M>=9)"


def test_int8_int_mm_is_batch_invariant():
    assert Int8IntMMCpuKernel.batch_invariant
    for changes in ({}, {"act_symmetric": False}):
        scheme = get_scheme("W8A8", **changes)
        cfg = LinearConfig(scheme, 48, 96, torch.bfloat16, batch_invariant=True)
        kernel = Int8IntMMCpuKernel(cfg)
        prepared = kernel.prepare(make_layer(scheme, 48, 96, torch.bfloat16))
        x = torch.randn(33, 96, dtype=torch.bfloat16)
        full = kernel.apply(x, prepared, None)
        for i in (0, 7, 32):
            assert torch.equal(full[i], kernel.apply(x[i : i + 1], prepared, None)[0])


def test_int4_act_order_matches_dequantize():
    """Act-order tensors (a real column permutation) against dequantize-then-matmul; a g_idx whose groups do not
    hold group_size columns each is refused when prepared."""
    scheme = get_scheme("W4A16", group_size=32, actorder=True)
    n, k = 16, 128
    tensors = make_layer(scheme, n, k, torch.bfloat16)
    g_idx = tensors["weight_g_idx"]
    assert not torch.equal(g_idx, torch.arange(k, dtype=torch.int32) // 32)
    cfg = LinearConfig(scheme, n, k, torch.bfloat16)
    kernel = Int4WeightOnlyCpuKernel(cfg)
    x = torch.randn(3, k, dtype=torch.bfloat16)
    y = kernel.apply(x, kernel.prepare(tensors), None)
    w = dequantize_weight(tensors, scheme, shape=(n, k))
    assert rel_err(y, x.float() @ w.t()) <= TOL[torch.bfloat16]
    bad = g_idx.clone()
    bad[(g_idx == 0).nonzero()[0]] = 1  # group 0 now has 31 columns, group 1 has 33
    with pytest.raises(RuntimeError, match="exactly group_size columns"):
        kernel.prepare(dict(tensors, weight_g_idx=bad))
