"""FP8 / INT8 / MXFP8 W8A8 kernels on the CPU: the Triton kernels under TRITON_INTERPRET=1 (tiny shapes), the
torch._scaled_mm / torch._int_mm wrappers on CPU tensors, prepare() padding and layouts, hardware reasons,
fake impls, FX recordability, and a `quantops bench --quick` smoke run.

Tolerances (relative Frobenius error against the scheme's EmulationKernel, which quantizes the activations
with the same plain-torch code): fp32 output 1e-5 (accumulation order only); fp16/bf16 output 1e-2 (one
rounding of the output, 2^-11 / 2^-8 per element, plus the interpreter's bf16 conversion).
"""

from __future__ import annotations

import os

import pytest
import torch

from quantops import get_scheme, quantize_weight
from quantops.kernels.base import LinearConfig
from quantops.kernels.emulation import EmulationKernel

if not torch.cuda.is_available():
    assert os.environ.get("TRITON_INTERPRET") == "1", "conftest sets TRITON_INTERPRET=1 before kernels are defined"

from quantops.kernels.cublas_fp8 import Fp8BlockScaledMMKernel, Fp8ScaledMMKernel  # noqa: E402
from quantops.kernels.cublas_int8 import Int8IntMMKernel  # noqa: E402
from quantops.kernels.fbgemm_fp8 import (  # noqa: E402
    Fp8BlockScaledFbgemmKernel,
    Fp8RowwiseFbgemmKernel,
    Fp8TensorwiseFbgemmKernel,
)
from quantops.kernels.flashinfer_fp8 import Fp8BlockScaledFlashInferKernel, Fp8FlashInferKernel  # noqa: E402
from quantops.kernels.triton_fp8 import Fp8TritonKernel  # noqa: E402
from quantops.kernels.triton_fp8_blockscaled import Fp8BlockScaledTritonKernel  # noqa: E402
from quantops.kernels.triton_int8 import Int8TritonKernel  # noqa: E402
from quantops.kernels.triton_mxfp8 import Mxfp8TritonKernel  # noqa: E402

ALL_KERNELS = [
    Fp8ScaledMMKernel, Fp8BlockScaledMMKernel, Fp8RowwiseFbgemmKernel, Fp8TensorwiseFbgemmKernel,
    Fp8BlockScaledFbgemmKernel, Fp8FlashInferKernel,
    Fp8BlockScaledFlashInferKernel, Fp8TritonKernel, Fp8BlockScaledTritonKernel, Int8IntMMKernel, Int8TritonKernel,
    Mxfp8TritonKernel,
]
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}

# scheme variants: (preset, changes)
FP8_TENSOR_CHANNEL = [
    ("FP8", {}),  # static per-tensor activations, per-tensor weights
    ("FP8_DYNAMIC", {}),  # per-token x per-channel
    ("FP8_DYNAMIC", {"weight_strategy": "tensor"}),
    ("FP8", {"weight_strategy": "channel"}),
    ("FP8", {"act_dynamic": True}),  # dynamic per-tensor
]
INT8_VARIANTS = [
    ("W8A8", {}),
    ("W8A8", {"act_symmetric": False}),
    ("W8A8", {"act_dynamic": False, "act_strategy": "tensor"}),
    ("W8A8", {"act_dynamic": False, "act_strategy": "tensor", "act_symmetric": False, "weight_strategy": "tensor"}),
]


def make_layer(scheme, n, k, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(dtype)
    amax = None
    if not scheme.act_dynamic:
        amax = (torch.tensor(-2.5), torch.tensor(3.5)) if not scheme.act_symmetric else torch.tensor(3.0)
    tensors = {name: t.to(device) for name, t in quantize_weight(w, scheme, input_amax=amax).items()}
    return tensors, LinearConfig(scheme, n, k, dtype)


def rel_err(y, ref):
    if ref.numel() == 0:
        return 0.0
    return float((y.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12))


def check_against_emulation(kcls, scheme, n, k, ms, dtype, shift=0.0, device="cpu"):
    tensors, cfg = make_layer(scheme, n, k, dtype, device)
    ok, why = kcls.can_implement(cfg)
    assert ok, why
    kernel, ref = kcls(cfg), EmulationKernel(cfg)
    before = {name: t.clone() for name, t in tensors.items()}
    prepared = kernel.prepare(tensors)
    for name, t in tensors.items():  # prepare is pure
        assert torch.equal(t.view(torch.uint8) if t.dtype.itemsize == 1 else t, before[name].view(torch.uint8)
                           if t.dtype.itemsize == 1 else before[name]), name
    ref_prepared = ref.prepare(tensors)
    for m in ms:
        x = (torch.randn(m, k, dtype=torch.float32) + shift).to(dtype=dtype, device=device)
        y = kernel.apply_2d(x, prepared, None)
        r = ref.apply_2d(x, ref_prepared, None)
        assert y.shape == (m, n) and y.dtype == dtype and y.is_contiguous(), (y.shape, y.dtype, y.stride())
        assert torch.isfinite(y).all()
        assert rel_err(y, r) <= TOL[dtype], f"{kcls.__name__} {scheme.key()} {n}x{k} M={m}: {rel_err(y, r):.2e}"
    # 3-D input, with a bias
    bias = torch.randn(n, dtype=torch.float32).to(dtype=dtype, device=device)
    x3 = torch.randn(2, 3, k).to(dtype=dtype, device=device)
    y3 = kernel.apply(x3, prepared, bias)
    r3 = ref.apply(x3, ref_prepared, bias)
    assert y3.shape == (2, 3, n)
    assert rel_err(y3, r3) <= TOL[dtype]


# -- Triton kernels, interpreted ----------------------------------------------------------------------


@pytest.mark.parametrize("n,k", [(64, 256), (200, 328)])
def test_triton_fp8_blockscaled_vs_emulation(n, k):
    check_against_emulation(Fp8BlockScaledTritonKernel, get_scheme("FP8_BLOCK"), n, k, (0, 1, 5, 33), torch.bfloat16)


def test_triton_fp8_blockscaled_fp32_output():
    check_against_emulation(Fp8BlockScaledTritonKernel, get_scheme("FP8_BLOCK"), 72, 130, (3,), torch.float32)


@pytest.mark.parametrize("preset,changes", FP8_TENSOR_CHANNEL)
def test_triton_fp8_vs_emulation(preset, changes):
    check_against_emulation(Fp8TritonKernel, get_scheme(preset, **changes), 40, 72, (0, 1, 17), torch.float32)


def test_triton_fp8_split_k_half():
    # K = 2048: the M <= 16 config splits K across programs; fp16 output through the reduction kernel
    check_against_emulation(Fp8TritonKernel, get_scheme("FP8_DYNAMIC"), 64, 2048, (3,), torch.float16)


def test_triton_large_m_tiles():
    # M > 512 takes the prefill tiles (256 tokens x 128 weight rows for FP8, 128 x 256 for INT8)
    check_against_emulation(Fp8TritonKernel, get_scheme("FP8_DYNAMIC"), 136, 256, (600,), torch.float32)
    check_against_emulation(Int8TritonKernel, get_scheme("W8A8", act_symmetric=False), 264, 256, (600,), torch.float32,
                            shift=0.7)


@pytest.mark.parametrize("preset,changes", INT8_VARIANTS)
def test_triton_int8_vs_emulation(preset, changes):
    check_against_emulation(Int8TritonKernel, get_scheme(preset, **changes), 40, 72, (0, 1, 17), torch.float32, shift=0.7)


def test_triton_int8_split_k_asymmetric():
    check_against_emulation(Int8TritonKernel, get_scheme("W8A8", act_symmetric=False), 64, 2048, (2,), torch.bfloat16,
                            shift=0.7)


# -- torch._scaled_mm / torch._int_mm wrappers on CPU tensors -------------------------------------------


@pytest.mark.parametrize("preset,changes", FP8_TENSOR_CHANNEL)
def test_scaled_mm_wrapper_cpu(preset, changes):
    scheme = get_scheme(preset, **changes)
    dtype = torch.bfloat16 if Fp8ScaledMMKernel._rowwise(scheme) else torch.float16
    check_against_emulation(Fp8ScaledMMKernel, scheme, 40, 72, (0, 1, 5), dtype)


@pytest.mark.parametrize("preset,changes", INT8_VARIANTS)
def test_int_mm_wrapper_cpu(preset, changes):
    check_against_emulation(Int8IntMMKernel, get_scheme(preset, **changes), 40, 72, (0, 1, 5), torch.float32, shift=0.7)


# -- prepare(): padding, layouts, purity, bad input ----------------------------------------------------


def test_prepare_pads_and_lays_out_scales():
    s = get_scheme("FP8_BLOCK")
    tensors, cfg = make_layer(s, 200, 328, torch.bfloat16)
    nb, kb = 2, 3
    w = tensors["weight"].view(torch.uint8)

    p = Fp8BlockScaledMMKernel(cfg).prepare(tensors)  # N -> 208, K -> 512 (K/128 a multiple of 4)
    assert p["weight"].shape == (208, 512) and p["weight"].dtype == torch.float8_e4m3fn
    assert torch.equal(p["weight"].view(torch.uint8)[:200, :328], w)
    assert p["weight"].view(torch.uint8)[200:].eq(0).all() and p["weight"].view(torch.uint8)[:, 328:].eq(0).all()
    assert p["weight_scale"].shape == (nb, 4) and p["weight_scale"].dtype == torch.float32
    assert torch.equal(p["weight_scale"][:, :kb], tensors["weight_scale"].float())

    p = Fp8BlockScaledFbgemmKernel(cfg).prepare(tensors)  # MN-major [K/128, N/128]
    assert p["weight"].shape == (256, 384)
    assert p["weight_scale"].shape == (kb, nb) and p["weight_scale"].is_contiguous()
    assert torch.equal(p["weight_scale"], tensors["weight_scale"].float().t())

    p = Fp8BlockScaledFlashInferKernel(cfg).prepare(tensors)  # N % 64, K % 128
    assert p["weight"].shape == (256, 384) and p["weight_scale"].shape == (nb, kb)

    p = Fp8BlockScaledTritonKernel(cfg).prepare(tensors)  # N % 128, K % 256
    assert p["weight"].shape == (256, 512) and p["weight_scale"].shape == (2, 4)

    s = get_scheme("FP8_DYNAMIC")
    tensors, cfg = make_layer(s, 40, 72, torch.bfloat16)
    p = Fp8ScaledMMKernel(cfg).prepare(tensors)
    assert p["weight"].shape == (48, 80) and p["weight_scale"].shape == (1, 48)
    assert torch.equal(p["weight_scale"][0, :40], tensors["weight_scale"].float().reshape(-1))
    p = Fp8RowwiseFbgemmKernel(cfg).prepare(tensors)
    assert p["weight"].shape == (48, 80) and p["weight_scale"].shape == (48,)

    s = get_scheme("W8A8", act_symmetric=False)
    tensors, cfg = make_layer(s, 40, 72, torch.bfloat16)
    p = Int8TritonKernel(cfg).prepare(tensors)
    assert p["weight"].shape == (256, 256) and p["weight_sum"].shape == (256,)
    assert torch.equal(p["weight_sum"][:40], tensors["weight"].float().sum(1))
    p = Int8IntMMKernel(cfg).prepare(tensors)
    assert p["weight"].shape == (48, 80) and p["weight_sum"].shape == (1, 40)


# -- MXFP8 W8A8 on FP8 tensor cores, scales applied every 32 K (interpreted) --------------------------------


@pytest.mark.parametrize("n,k", [(72, 96), (200, 160)])
def test_triton_mxfp8_vs_emulation(n, k):
    # M = 1 / 5, 20, 33, 130: the 16-, 32-, 64- and 128-token tile configs
    check_against_emulation(Mxfp8TritonKernel, get_scheme("MXFP8"), n, k, (0, 1, 5, 20, 33, 130), torch.bfloat16)


def test_triton_mxfp8_exact_in_fp32_split_k_zero_blocks_and_extreme_exponents():
    """fp32 output is the emulation's up to summation order: zero blocks (E8M0 code 0, which the kernel decodes
    to 0.0 where emulation has 2^-127), blocks 2^-40 and 2^+40 apart (the per-32 scales really differ), and
    K = 2048 so that M <= 16 splits K across programs (fp32 partials, then the reduction kernel)."""
    scheme = get_scheme("MXFP8")
    n, k = 136, 2048
    g = torch.Generator().manual_seed(3)
    w = torch.randn(n, k, generator=g) / k**0.5
    w[:, 64:96] = 0  # a zero weight block in every row
    w[:, 1024:1056] *= 2.0**20
    tensors = quantize_weight(w, scheme)
    assert (tensors["weight_scale"][:, 2] == 0).all()
    cfg = LinearConfig(scheme, n, k, torch.float32)
    kernel, ref = Mxfp8TritonKernel(cfg), EmulationKernel(cfg)
    prepared, ref_prepared = kernel.prepare(tensors), ref.prepare(tensors)
    for m in (3, 17):
        x = torch.randn(m, k, generator=g)
        x[:, 32:64] = 0  # a zero activation block
        x[:, 512:544] *= 2.0**-40
        x[:, 1056:1088] *= 2.0**20
        y, r = kernel.apply_2d(x, prepared, None), ref.apply_2d(x, ref_prepared, None)
        assert rel_err(y, r) <= 1e-5, f"M={m}: {rel_err(y, r):.2e}"
        # the scales matter: dropping the per-32 scaling of one block changes the result
        assert rel_err(y, ref.apply_2d(x.index_fill(1, torch.arange(1056, 1088), 0.0), ref_prepared, None)) > 1e-2


def test_mxfp8_prepare_layout_and_bad_tensors():
    scheme = get_scheme("MXFP8")
    tensors, cfg = make_layer(scheme, 200, 160, torch.bfloat16)
    kernel = Mxfp8TritonKernel(cfg)
    p = kernel.prepare(tensors)
    w, ws = p["weight"], p["weight_scale"]
    assert w.shape == (256, 256) and w.dtype == torch.float8_e4m3fn  # N and K padded to 128
    assert torch.equal(w[:200, :160].view(torch.uint8), tensors["weight"].view(torch.uint8))
    assert not w[200:].view(torch.uint8).any() and not w[:, 160:].view(torch.uint8).any()
    # [Kp/128, Np] int32, coalesced along N; word [k, n] holds row n's codes of blocks 4k..4k+3, byte j = block 4k+j
    assert ws.shape == (2, 256) and ws.dtype == torch.int32 and ws.is_contiguous()
    codes = tensors["weight_scale"]
    for blk in range(5):
        assert torch.equal(((ws[blk // 4, :200] >> (8 * (blk % 4))) & 0xFF).to(torch.uint8), codes[:, blk])
    assert not (ws[1, :200] >> 8).any() and not ws[:, 200:].any()  # padded blocks and rows: code 0
    with pytest.raises(ValueError, match="weight is \\(200, 128\\)"):
        kernel.prepare(dict(tensors, weight=tensors["weight"][:, :128]))
    with pytest.raises(ValueError, match="weight_scale is"):
        kernel.prepare(dict(tensors, weight_scale=tensors["weight_scale"].float()))
    with pytest.raises(ValueError, match="missing weight_scale"):
        kernel.prepare({"weight": tensors["weight"]})
    assert "MXFP8 W8A8" in Mxfp8TritonKernel.can_implement(LinearConfig(get_scheme("MXFP8A16"), 64, 64, torch.bfloat16))[1]
    assert "compute capability" in Mxfp8TritonKernel.is_supported((8, 9))[1]


def test_fp8_triton_ops_reject_bad_operands_before_launch():
    f8, u8 = torch.float8_e4m3fn, torch.uint8
    xq, w = torch.randn(5, 256).to(f8), torch.randn(128, 256).to(f8)
    mx = torch.ops.quantops.mxfp8_triton_mm
    good = (xq, torch.full((5, 8), 120, dtype=u8), w, torch.full((2, 128), 0x78787878, dtype=torch.int32), 100,
            torch.bfloat16)
    assert mx(*good).shape == (5, 100)
    cases = [
        (mx, (xq[:, :224],) + good[1:], "weight must be"),  # K differs
        (mx, (xq[:, :160], good[1][:, :5], w[:, :160]) + good[3:], "multiple of 128"),  # K not padded to 128
        (mx, good[:2] + (w[:100],) + good[3:], "multiple of 128"),  # weight rows not padded
        (mx, good[:1] + (torch.zeros(5, 8),) + good[2:], "expected x_scale"),  # scales not E8M0 codes
        (mx, good[:3] + (torch.zeros(128, 2, dtype=torch.int32),) + good[4:], "expected x_scale"),  # not transposed
        (mx, good[:3] + (torch.zeros(8, 128, dtype=u8),) + good[4:], "expected x_scale"),  # codes not packed
        (mx, good[:4] + (129,) + good[5:], "n=129"),
        (mx, (xq.to(torch.bfloat16),) + good[1:], "2-D e4m3"),
        (torch.ops.quantops.fp8_blockscaled_triton_mm,
         (xq, torch.ones(5, 2), w, torch.ones(1, 1), 100, torch.bfloat16), "w_scale \\(1, 2\\)"),
        (torch.ops.quantops.fp8_triton_mm, (xq, torch.ones(4, 1), w, torch.ones(128), 100, torch.bfloat16), "x_scale"),
    ]
    for op, args, match in cases:
        with pytest.raises(ValueError, match=match):
            op(*args)


def test_prepare_aliases_aligned_weights():
    # no padding needed: the prepared weight is the module's tensor, not a copy (memory stays 1x)
    tensors, cfg = make_layer(get_scheme("FP8_DYNAMIC"), 256, 512, torch.bfloat16)
    assert Fp8ScaledMMKernel(cfg).prepare(tensors)["weight"].data_ptr() == tensors["weight"].data_ptr()


@pytest.mark.parametrize("kcls,preset", [(Fp8ScaledMMKernel, "FP8_DYNAMIC"), (Fp8BlockScaledTritonKernel, "FP8_BLOCK"),
                                         (Int8TritonKernel, "W8A8"), (Fp8BlockScaledFbgemmKernel, "FP8_BLOCK")])
def test_prepare_rejects_bad_tensors(kcls, preset):
    tensors, cfg = make_layer(get_scheme(preset), 64, 256, torch.bfloat16)
    kernel = kcls(cfg)
    bad = dict(tensors, weight=tensors["weight"][:, :128])
    with pytest.raises(ValueError, match="weight has shape"):
        kernel.prepare(bad)
    bad = dict(tensors, weight_scale=tensors["weight_scale"].to(torch.int32))
    with pytest.raises(ValueError, match="weight_scale has dtype"):
        kernel.prepare(bad)
    with pytest.raises(ValueError, match="missing tensor 'weight_scale'"):
        kernel.prepare({"weight": tensors["weight"]})


# -- hardware and library reasons ---------------------------------------------------------------------


def test_reasons():
    for kcls in ALL_KERNELS:
        ok, why = kcls.is_supported(None)
        assert not ok and "CUDA" in why, kcls
    assert "compute capability" in Fp8BlockScaledMMKernel.is_supported((10, 0))[1]
    assert "compute capability" in Fp8BlockScaledFlashInferKernel.is_supported((8, 9))[1]
    assert "compute capability" in Fp8ScaledMMKernel.is_supported((8, 0))[1]
    from quantops.kernels.registry import assume_libraries

    with assume_libraries(["triton"]):
        assert "fbgemm not installed" in Fp8RowwiseFbgemmKernel.is_supported((9, 0))[1]
        assert "flashinfer not installed" in Fp8BlockScaledFlashInferKernel.is_supported((9, 0))[1]
        assert Fp8BlockScaledTritonKernel.is_supported((9, 0)) == (True, None)
    block = LinearConfig(get_scheme("FP8_BLOCK"), 256, 256, torch.bfloat16)
    dyn = LinearConfig(get_scheme("FP8_DYNAMIC"), 256, 256, torch.float16)
    assert not Fp8ScaledMMKernel.can_implement(block)[0]
    assert "bf16" in Fp8ScaledMMKernel.can_implement(dyn)[1]
    assert Fp8TritonKernel.can_implement(dyn)[0]
    assert not Fp8FlashInferKernel.can_implement(LinearConfig(get_scheme("FP8_DYNAMIC"), 256, 256, torch.bfloat16))[0]


def test_registry_sees_the_kernels():
    from quantops.kernels.registry import select_kernel

    libs = ["triton", "fbgemm", "flashinfer"]
    for scheme in ("FP8", "FP8_DYNAMIC", "FP8_BLOCK", "W8A8"):
        sel = select_kernel(scheme, N=4096, K=4096, capability=(9, 0), libraries=libs)
        assert all(cls.backend != "emulation" for _, cls in sel.plan), str(sel)
    # fp16 FP8_DYNAMIC: the bf16-only library kernels say why, Triton takes it
    sel = select_kernel("FP8_DYNAMIC", N=4096, K=4096, dtype=torch.float16, capability=(9, 0), libraries=libs)
    assert sel.kernel is Fp8TritonKernel or Fp8TritonKernel in [c for _, c in sel.plan], str(sel)


# -- ops: fake impls match the real outputs; FX recordability -------------------------------------------


def test_opcheck_cpu_runnable_ops():
    s = get_scheme("FP8_DYNAMIC")
    tensors, cfg = make_layer(s, 40, 72, torch.bfloat16)
    k = Fp8ScaledMMKernel(cfg)
    p = k.prepare(tensors)
    x = torch.randn(5, 80, dtype=torch.bfloat16)
    from quantops.formats import quantize_activation

    xq, (xs,) = quantize_activation(x, s, 80)
    # test_schema compares inputs with aten ops that fp8 lacks on the CPU; the other checks run
    utils = ("test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.quantops.fp8_scaled_mm, (xq, xs, p["weight"], p["weight_scale"], True, 40,
                                                              torch.bfloat16), test_utils=utils)
    mx = get_scheme("MXFP8")
    tensors, cfg = make_layer(mx, 40, 96, torch.bfloat16)
    p = Mxfp8TritonKernel(cfg).prepare(tensors)
    from quantops.formats.mxfp8 import quantize_mxfp8

    xq, xs = quantize_mxfp8(torch.randn(5, 128), 128)  # activations padded to the prepared K
    torch.library.opcheck(torch.ops.quantops.mxfp8_triton_mm, (xq, xs, p["weight"], p["weight_scale"], 40,
                                                                torch.bfloat16), test_utils=utils)
    xi = torch.randint(-128, 127, (5, 80), dtype=torch.int8)
    torch.library.opcheck(torch.ops.quantops.int8_int_mm, (xi, torch.randint(-128, 127, (48, 80), dtype=torch.int8)))


def test_fake_impls_shapes_and_strides():
    from torch._subclasses.fake_tensor import FakeTensorMode

    f8 = torch.float8_e4m3fn
    with FakeTensorMode():
        xq = torch.empty(7, 256, dtype=f8)
        w = torch.empty(256, 256, dtype=f8)
        cases = [
            torch.ops.quantops.fbgemm_fp8_rowwise_mm(xq, torch.empty(7, 1), w, torch.empty(256), 200),
            torch.ops.quantops.fbgemm_fp8_tensorwise_mm(xq, torch.empty(1), w, 200),
            torch.ops.quantops.fbgemm_fp8_groupwise_mm(xq, torch.empty(2, 7), w, torch.empty(2, 2), 200),
            torch.ops.quantops.flashinfer_fp8_bmm(xq, torch.empty(1), w, torch.empty(1), 200, torch.float16),
            torch.ops.quantops.flashinfer_fp8_blockscale_mm(xq, torch.empty(2, 7), w, torch.empty(2, 2), 200),
            torch.ops.quantops.fp8_blockwise_scaled_mm(xq, torch.empty(2, 7), w, torch.empty(2, 4), 200, torch.bfloat16),
            torch.ops.quantops.mxfp8_triton_mm(xq, torch.empty(7, 8, dtype=torch.uint8), w,
                                               torch.empty(2, 256, dtype=torch.int32), 200, torch.bfloat16),
        ]
        for out in cases:
            assert out.shape == (7, 200) and out.stride() == (200, 1)


def test_apply_is_recordable_on_fx_proxies():
    """apply_2d may only branch on static facts: trace it symbolically with the prepared tensors as inputs."""
    cases = [(Fp8ScaledMMKernel, "FP8"), (Fp8BlockScaledMMKernel, "FP8_BLOCK"), (Fp8RowwiseFbgemmKernel, "FP8_DYNAMIC"),
             (Fp8TensorwiseFbgemmKernel, "FP8"), (Fp8BlockScaledFbgemmKernel, "FP8_BLOCK"), (Fp8FlashInferKernel, "FP8"),
             (Fp8BlockScaledFlashInferKernel, "FP8_BLOCK"), (Fp8TritonKernel, "FP8_DYNAMIC"),
             (Fp8BlockScaledTritonKernel, "FP8_BLOCK"), (Int8IntMMKernel, "W8A8"), (Int8TritonKernel, "W8A8"),
             (Mxfp8TritonKernel, "MXFP8")]
    for kcls, preset in cases:
        scheme = get_scheme(preset)
        tensors, cfg = make_layer(scheme, 200, 352, torch.bfloat16)  # K unaligned but whole MX blocks
        kernel = kcls(cfg)
        names = sorted(kernel.prepare(tensors))
        graph = torch.fx.Graph()
        tracer = torch.fx.proxy.GraphAppendingTracer(graph)
        x = torch.fx.Proxy(graph.placeholder("x"), tracer)
        prepared = {name: torch.fx.Proxy(graph.placeholder(name), tracer) for name in names}
        graph.output(kernel.apply_2d(x, prepared, None).node)
        gm = torch.fx.GraphModule(torch.nn.Module(), graph)
        targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
        assert any("quantops" in t for t in targets), (kcls.__name__, targets)


# -- quantops bench --quick on the CPU ------------------------------------------------------------------


def test_bench_quick_cpu(tmp_path, capsys):
    from quantops import bench

    rc = bench.main(["--quick", "--schemes", "W8A8", "--rep-ms", "1", "--out", str(tmp_path), "--device", "cpu"])
    assert rc == 0
    text = (tmp_path / "bench.csv").read_text().splitlines()
    assert text[0].startswith("scheme,preset,layer,n,k,m,kernel")
    rows = [line.split(",") for line in text[1:]]
    kernels = {r[6] for r in rows}
    assert "bf16 F.linear" in kernels and "EmulationKernel" in kernels
    assert all(float(r[8]) > 0 for r in rows if not r[-1]), "every timed row has a time"
    out = capsys.readouterr().out
    assert "summary" in out and ("wrote" in out or "matplotlib" in out)


def test_bench_chosen_only_and_bytes_cpu(tmp_path):
    """--chosen-only times bf16 and the registry's choice only; bytes moved = weight as stored + x + output."""
    import csv

    from quantops import bench, get_scheme, quantize_weight

    rc = bench.main(["--quick", "--schemes", "W4A16", "--chosen-only", "--rep-ms", "1", "--out", str(tmp_path),
                     "--device", "cpu"])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "bench.csv")))
    assert rows and all(r["kernel"] == "bf16 F.linear" or r["chosen"] == "True" for r in rows)
    assert {r["m"] for r in rows if r["kernel"] != "bf16 F.linear"} == {"1", "16"}  # a choice at every M
    w = torch.randn(256, 512, dtype=torch.bfloat16)  # the bench quantizes bf16 weights (bf16 scales)
    stored = sum(t.numel() * t.element_size() for t in quantize_weight(w, get_scheme("W4A16")).values())
    for r in rows:
        n, k, m = int(r["n"]), int(r["k"]), int(r["m"])
        weight = n * k * 2 if r["kernel"] == "bf16 F.linear" else stored if (n, k) == (256, 512) else None
        if weight is not None:
            assert int(r["bytes_moved"]) == weight + 2 * m * (n + k), r
        assert float(r["tbps"]) == pytest.approx(int(r["bytes_moved"]) / float(r["us"]) / 1e6)
        assert r["pct_copy_bw"] == ""  # no copy bandwidth on the CPU
