"""Kernel selection: ranking, simulated GPUs and libraries, overrides (API and environment), forced kernels that
cannot run, third-party kernels, M plans, and the batch-invariant mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantops
from quantops import LinearKernel, QuantizedLinear, get_scheme, register_kernel, scheme_names, select_kernel, unregister_kernel
from quantops.formats import dequantize_weight, quantize_activation, quantize_weight
from quantops.kernels import ranking, registry
from quantops.kernels.base import LinearConfig, check_all, needs_cpu, needs_cuda, needs_library
from quantops.kernels.emulation import EmulationKernel

CAPABILITIES = [None, (8, 0), (8, 9), (9, 0), (10, 0), (12, 0)]
SHAPE = dict(N=256, K=512)  # representable by every preset


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in (registry.ENV_BACKEND, registry.ENV_DISABLED, registry.ENV_BATCH_INVARIANT):
        monkeypatch.delenv(var, raising=False)


OK_ANYWHERE = (True, None)


class DequantLinearKernel(LinearKernel):
    """A third-party kernel for the tests: dequantize, then F.linear in the activation dtype (weight-only)."""

    backend = "thirdparty"
    families = ("wna16", "nvfp4a16", "mxfp4a16", "mxfp8a16")
    calls = 0

    @classmethod
    def is_supported(cls, capability):
        return OK_ANYWHERE

    def prepare(self, tensors):
        w = dequantize_weight(dict(tensors), self.scheme, shape=(self.config.n, self.config.k))
        return {"weight": w.to(self.config.dtype)}

    def apply_2d(self, x, prepared, bias):
        type(self).calls += 1
        return torch.nn.functional.linear(x, prepared["weight"], bias)



class Blackwell4BitKernel(LinearKernel):
    """A third-party kernel that states hardware needs: sm100+, and a library."""

    backend = "flashinfer"
    families = ("nvfp4",)

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (10, 0)), lambda: needs_library("flashinfer"))


@pytest.fixture
def registered():
    added = []

    def add(cls, **kw):
        register_kernel(cls, **kw)
        added.append(cls)
        return cls

    yield add
    for cls in added:
        unregister_kernel(cls)


# -- ranking and selection ------------------------------------------------------------------------------


@pytest.mark.parametrize("capability", CAPABILITIES, ids=str)
def test_every_preset_selects_and_explains(capability):
    for name in scheme_names():
        sel = select_kernel(name, **SHAPE, dtype=torch.bfloat16, capability=capability, device="cpu", libraries=())
        assert sel.plan and sel.plan[-1][0] is None, str(sel)  # something runs every M
        assert all(why for _, why in sel.rejected)
        text = str(sel)
        assert sel.config.describe() in text and sel.plan[-1][1].kernel_name() in text
        for kname, why in sel.rejected:
            assert f"rejected {kname}: {why}" in text
    for fam, plats in ranking.RANKING.items():  # emulation is every list's last resort
        for entries in plats.values():
            assert entries[-1] == ranking.EMULATION, fam


def test_cpu_choices_and_reasons():
    sel = select_kernel("W8A8", N=200, K=320, dtype=torch.bfloat16, device="cpu")
    assert sel.kernel.kernel_name() == "Int8IntMMCpuKernel" and sel.platform == "cpu"
    assert sel.rejected == [("EmulationKernel", "ranked below Int8IntMMCpuKernel")]
    sel = select_kernel("W8A16", N=200, K=256, dtype=torch.bfloat16, device="cpu")
    assert sel.kernel is EmulationKernel
    reasons = dict(sel.rejected)
    assert "one scale per output channel" in reasons["Int8WeightOnlyCpuKernel"]
    assert reasons["Int4WeightOnlyCpuKernel"] == "INT4 weights only"
    # capability as a number, and the selection for one M
    assert select_kernel("W4A16", N=64, K=256, dtype=torch.float32, device="cpu", m=1).kernel.kernel_name() == \
        "Int4WeightOnlyCpuFp32Kernel"
    assert select_kernel("W4A16", N=64, K=256, capability=90).capability == (9, 0)
    with pytest.raises(ValueError, match="cannot represent"):
        select_kernel("W4A16", N=64, K=100)


def test_simulated_gpu_capabilities_and_libraries(registered):
    registered(Blackwell4BitKernel, platforms=("cuda", "cpu"), position=0)
    want = dict(N=256, K=512, dtype=torch.bfloat16)
    sel = select_kernel("NVFP4", **want, capability=(10, 0), libraries=("flashinfer",))
    assert sel.kernel is Blackwell4BitKernel and sel.platform == "cuda sm100"
    sel = select_kernel("NVFP4", **want, capability=(10, 0), libraries=())
    assert sel.kernel is not Blackwell4BitKernel
    assert dict(sel.rejected)["Blackwell4BitKernel"] == "flashinfer not installed (simulated)"
    sel = select_kernel("NVFP4", **want, capability=(9, 0), libraries=("flashinfer",))
    assert dict(sel.rejected)["Blackwell4BitKernel"] == "needs compute capability >= 10.0, have 9.0"
    sel = select_kernel("NVFP4", **want, device="cpu")
    assert dict(sel.rejected)["Blackwell4BitKernel"] == "needs a CUDA GPU"
    # CPU kernels state their platform
    sel = select_kernel("W8A8", **want, capability=(9, 0), libraries=())
    assert sel.kernel.kernel_name() != "Int8IntMMCpuKernel"
    # no CPU kernel is a candidate on CUDA: the CPU list is not the CUDA list
    assert all(not n.endswith("CpuKernel") for n, _ in sel.rejected)


# -- overrides ------------------------------------------------------------------------------------------


def test_overrides_by_api_and_env_change_the_selection(monkeypatch):
    base = dict(N=200, K=320, dtype=torch.bfloat16, device="cpu")
    assert select_kernel("W8A8", **base).kernel.kernel_name() == "Int8IntMMCpuKernel"
    # API
    assert select_kernel("W8A8", **base, linear_backend="emulation").kernel is EmulationKernel
    assert select_kernel("W8A8", **base, linear_backend="EmulationKernel").kernel is EmulationKernel
    sel = select_kernel("W8A8", **base, disabled_kernels=["Int8IntMMCpuKernel"])
    assert sel.kernel is EmulationKernel and ("Int8IntMMCpuKernel", "disabled") in sel.rejected
    assert select_kernel("W8A8", **base, disabled_kernels="cpu").kernel is EmulationKernel  # a whole backend
    sel = select_kernel("W8A8", **base, linear_backend="emulation")
    assert dict(sel.rejected)["Int8IntMMCpuKernel"] == "not the forced backend 'emulation'"
    # environment
    monkeypatch.setenv(registry.ENV_BACKEND, "emulation")
    assert select_kernel("W8A8", **base).kernel is EmulationKernel
    assert select_kernel("W8A8", **base, linear_backend="cpu").kernel.kernel_name() == "Int8IntMMCpuKernel"  # API wins
    monkeypatch.delenv(registry.ENV_BACKEND)
    monkeypatch.setenv(registry.ENV_DISABLED, " Int4WeightOnlyCpuKernel , Int8IntMMCpuKernel")
    assert select_kernel("W8A8", **base).kernel is EmulationKernel
    assert select_kernel("W4A16", N=200, K=384, dtype=torch.bfloat16, device="cpu").kernel is EmulationKernel


def test_env_overrides_reach_eager_modules(monkeypatch):
    torch.manual_seed(0)
    model = quantops.quantize_model(nn.Sequential(nn.Linear(64, 48)).to(torch.bfloat16), "W8A8")
    layer = model[0]
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    y_cpu = model(x)
    assert layer._kernel_for(x)[0].kernel_name() == "Int8IntMMCpuKernel"
    monkeypatch.setenv(registry.ENV_DISABLED, "Int8IntMMCpuKernel")
    assert layer._kernel_for(x)[0].kernel_name() == "EmulationKernel"
    y_emu = model(x)
    torch.testing.assert_close(y_cpu, y_emu, rtol=1e-2, atol=1e-2)
    monkeypatch.delenv(registry.ENV_DISABLED)
    layer.linear_backend = "emulation"  # per-layer API override (quantize_model(linear_backend=...) sets it)
    assert layer._kernel_for(x)[0].kernel_name() == "EmulationKernel"
    assert "kernel=EmulationKernel" in repr(layer)
    model = quantops.quantize_model(nn.Sequential(nn.Linear(64, 48)).to(torch.bfloat16), "W8A8",
                                    disabled_kernels="Int8IntMMCpuKernel,Foo")
    assert model[0].disabled_kernels == ("Foo", "Int8IntMMCpuKernel")
    assert model[0]._kernel_for(x)[0].kernel_name() == "EmulationKernel"


def test_impossible_force_names_every_reason():
    with pytest.raises(ValueError) as e:
        select_kernel(get_scheme("W4A16", group_size=16), N=64, K=64, dtype=torch.bfloat16, device="cpu",
                      linear_backend="Int4WeightOnlyCpuKernel")
    msg = str(e.value)
    assert msg.startswith("forced backend 'Int4WeightOnlyCpuKernel' cannot run W4A16")
    assert "Int4WeightOnlyCpuKernel: _weight_int4pack_mm_for_cpu takes groups of 32/64/128/256" in msg
    for name in ("Int8WeightOnlyCpuKernel", "Int8WeightOnlyCpuFp32Kernel", "Int4WeightOnlyCpuFp32Kernel", "EmulationKernel"):
        assert f"{name}: " in msg
    with pytest.raises(ValueError, match="no wna16 kernel on cpu is named or has backend 'cublas'"):
        select_kernel("W4A16", N=64, K=128, dtype=torch.bfloat16, device="cpu", linear_backend="cublas")
    with pytest.raises(ValueError) as e:
        select_kernel("W8A8", N=64, K=128, dtype=torch.bfloat16, device="cpu", disabled_kernels="cpu,emulation")
    assert str(e.value).startswith("no kernel can run W8A8 N=64 K=128 bfloat16 on cpu:")
    assert "Int8IntMMCpuKernel: disabled; EmulationKernel: disabled" in str(e.value)
    # a forced kernel on a module raises at the first forward, naming the same reasons
    layer = QuantizedLinear.from_float(nn.Linear(64, 64).to(torch.bfloat16), get_scheme("W4A16", group_size=16), name="mlp.up")
    layer.linear_backend = "Int4WeightOnlyCpuKernel"
    with pytest.raises(ValueError, match="32/64/128/256"):
        layer(torch.randn(2, 64, dtype=torch.bfloat16))


# -- third-party kernels and M plans --------------------------------------------------------------------


def test_register_kernel_third_party(registered):
    scheme = get_scheme("W4A16")
    registered(DequantLinearKernel, platforms=("cpu",), position=0)
    sel = select_kernel(scheme, N=48, K=256, dtype=torch.bfloat16, device="cpu")
    assert sel.kernel is DequantLinearKernel
    assert dict(sel.rejected)["Int4WeightOnlyCpuKernel"] == "ranked below DequantLinearKernel"
    assert registry.kernel_class("DequantLinearKernel") is DequantLinearKernel
    # it runs in eager modules and agrees with the reference
    torch.manual_seed(0)
    lin = nn.Linear(256, 48).to(torch.bfloat16)
    layer = QuantizedLinear.from_float(lin, scheme)
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    DequantLinearKernel.calls = 0
    y = layer(x)
    assert DequantLinearKernel.calls == 1
    ref = EmulationKernel(sel.config).apply(x, dict(layer.quant_tensors()), layer.bias)
    torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2)
    unregister_kernel(DequantLinearKernel)
    assert select_kernel(scheme, N=48, K=256, dtype=torch.bfloat16, device="cpu").kernel.kernel_name() == \
        "Int4WeightOnlyCpuKernel"
    # position None: just above emulation
    registered(DequantLinearKernel, platforms=("cpu",), position=None)
    sel = select_kernel(get_scheme("W4A16", group_size=16), N=48, K=256, dtype=torch.bfloat16, device="cpu")
    assert sel.kernel is DequantLinearKernel
    assert [c.name for c in registry.candidates("wna16", "cpu")][-2:] == ["DequantLinearKernel", "EmulationKernel"]
    with pytest.raises(TypeError):
        register_kernel(object)


def test_m_plan_from_register_kernel(registered):
    registered(DequantLinearKernel, platforms=("cpu",), position=0, max_m=4)
    sel = select_kernel("W4A16", N=48, K=256, dtype=torch.bfloat16, device="cpu")
    assert [(m, c.kernel_name()) for m, c in sel.plan] == [(4, "DequantLinearKernel"), (None, "Int4WeightOnlyCpuKernel")]
    assert sel.plan_str() == "DequantLinearKernel (M<=4), Int4WeightOnlyCpuKernel (M>=5)"
    assert sel.for_m(1) is DequantLinearKernel and sel.for_m(4) is DequantLinearKernel
    assert sel.for_m(5).kernel_name() == "Int4WeightOnlyCpuKernel"
    assert sel.kernel.kernel_name() == "Int4WeightOnlyCpuKernel"  # no M given: the kernel of the largest M
    sel_m = select_kernel("W4A16", N=48, K=256, dtype=torch.bfloat16, device="cpu", m=2)
    assert sel_m.kernel is DequantLinearKernel
    # eager modules follow the plan per call (M counts every row of a 3-D input)
    torch.manual_seed(0)
    layer = QuantizedLinear.from_float(nn.Linear(256, 48).to(torch.bfloat16), "W4A16")
    DequantLinearKernel.calls = 0
    y_small = layer(torch.randn(2, 2, 256, dtype=torch.bfloat16))  # M = 4
    assert DequantLinearKernel.calls == 1
    layer(torch.randn(5, 256, dtype=torch.bfloat16))  # M = 5
    assert DequantLinearKernel.calls == 1
    assert y_small.shape == (2, 2, 48)


def test_m_plan_from_ranking_entries(monkeypatch):
    table = dict(ranking.RANKING)
    table["int8"] = {"cpu": [
        "emulation:EmulationKernel@m<=16",
        "cpu_int8:Int8IntMMCpuKernel@m<=8",  # already covered by the entry above
        "cpu_int8:Int8IntMMCpuKernel",
        ranking.EMULATION,
    ]}
    monkeypatch.setattr(registry, "RANKING", table)
    sel = select_kernel("W8A8", N=64, K=128, dtype=torch.bfloat16, device="cpu")
    assert sel.plan_str() == "EmulationKernel (M<=16), Int8IntMMCpuKernel (M>=17)"
    assert sel.rejected == [("Int8IntMMCpuKernel", "M<=8 already covered"),
                            ("EmulationKernel", "ranked below Int8IntMMCpuKernel")]
    # only M-limited entries left: no kernel for large M is an error that says so
    table["int8"] = {"cpu": ["emulation:EmulationKernel@m<=16"]}
    with pytest.raises(ValueError, match="no kernel can run"):
        select_kernel("W8A8", N=64, K=128, dtype=torch.bfloat16, device="cpu")


def test_layer_size_condition_in_ranking_entries(monkeypatch):
    """"nk>=W" ranks an entry only for layers of at least W weights; smaller ones get the next candidate, with the
    reason; an unknown condition is an error that names it."""
    table = dict(ranking.RANKING)
    table["int8"] = {"cpu": [
        "emulation:EmulationKernel@m<=16,nk>=10e3",
        "cpu_int8:Int8IntMMCpuKernel",
        ranking.EMULATION,
    ]}
    monkeypatch.setattr(registry, "RANKING", table)
    big = select_kernel("W8A8", N=64, K=256, dtype=torch.bfloat16, device="cpu")  # 16384 weights
    assert big.plan_str() == "EmulationKernel (M<=16), Int8IntMMCpuKernel (M>=17)"
    small = select_kernel("W8A8", N=32, K=256, dtype=torch.bfloat16, device="cpu")  # 8192 weights
    assert small.plan_str() == "Int8IntMMCpuKernel"
    assert small.rejected[0] == (
        "EmulationKernel", "ranked here at M<=16 for layers of at least 0.01M weights; this one has 0.00819M")
    table["int8"] = {"cpu": ["emulation:EmulationKernel@n>=4", ranking.EMULATION]}
    with pytest.raises(ValueError, match="unknown condition 'n>=4'"):
        select_kernel("W8A8", N=32, K=256, dtype=torch.bfloat16, device="cpu")


def test_wna16_hopper_plan_by_layer_size():
    """On sm_90 with FBGEMM, the CUDA op's wgmma GEMM keeps 33..64 rows only on large layers (ranking.py's
    numbers): Llama-3-8B's o projection hands over to FBGEMM's shuffled GEMM at 33, its MLP layers at 65; with N not
    a multiple of 16 the row-wise FBGEMM GEMM takes the shuffled one's place, to 2048."""
    libs = ["fbgemm", "triton", "quantops_cuda"]
    small = select_kernel("W4A16", N=4096, K=4096, capability=90, libraries=libs)
    big = select_kernel("W4A16", N=4096, K=14336, capability=90, libraries=libs)
    odd = select_kernel("W4A16", N=4104, K=4096, capability=90, libraries=libs)
    assert small.plan_str() == "WeightOnlyGemvCudaKernel (M<=32), Int4ShuffledFbgemmKernel (M>=33)"
    assert big.plan_str() == "WeightOnlyGemvCudaKernel (M<=64), Int4ShuffledFbgemmKernel (M>=65)"
    assert odd.plan_str() == ("WeightOnlyGemvCudaKernel (M<=32), Int4RowwiseFbgemmKernel (33<=M<=2048), "
                              "WeightOnlyDequantCublasKernel (M>=2049)")
    assert dict(odd.rejected)["Int4ShuffledFbgemmKernel"] == (
        "N=4104 must be a multiple of 16 (the shuffle reorders whole blocks of 16 rows)")
    # where FBGEMM cannot run (fp16 activations), the op keeps 33..128 on small layers too
    fp16 = select_kernel("W4A16", N=4096, K=4096, dtype=torch.float16, capability=90, libraries=libs)
    assert fp16.plan_str() == "WeightOnlyGemvCudaKernel (M<=128), WeightOnlyDequantCublasKernel (M>=129)"


# -- batch invariance -----------------------------------------------------------------------------------


def test_batch_invariant_mode_restricts_choice(monkeypatch):
    base = dict(N=200, K=384, dtype=torch.bfloat16, device="cpu")
    sel = select_kernel("W4A16", **base, batch_invariant=True)
    assert sel.kernel is EmulationKernel and sel.config.batch_invariant
    assert dict(sel.rejected)["Int4WeightOnlyCpuKernel"] == "not batch-invariant"
    # integer accumulation is exact: the int8 CPU kernel keeps its place
    assert select_kernel("W8A8", **base, batch_invariant=True).kernel.kernel_name() == "Int8IntMMCpuKernel"
    monkeypatch.setenv(registry.ENV_BATCH_INVARIANT, "1")
    assert select_kernel("W4A16", **base).kernel is EmulationKernel
    assert select_kernel("W4A16", **base, batch_invariant=False).kernel.kernel_name() == "Int4WeightOnlyCpuKernel"
    # one activation scale over the whole batch cannot be batch-invariant, whatever the kernel
    with pytest.raises(ValueError, match="dynamic per-tensor activation scale depends on the whole batch"):
        select_kernel(get_scheme("FP8", act_dynamic=True), **base)


@pytest.mark.parametrize("name", scheme_names())
def test_emulation_rows_are_batch_invariant(name):
    """In batch-invariant mode, the output row for x[i] in a batch of M equals the output for x[i] alone, bit
    for bit, for every preset."""
    scheme = get_scheme(name)
    n, k = 40, 256
    torch.manual_seed(0)
    w = torch.randn(n, k, dtype=torch.bfloat16)
    tensors = quantize_weight(w, scheme, input_amax=torch.tensor(4.0))
    cfg = LinearConfig(scheme, n, k, torch.bfloat16, has_bias=True, batch_invariant=True)
    kernel = EmulationKernel(cfg)
    prepared = kernel.prepare(tensors)
    x = torch.randn(37, k, dtype=torch.bfloat16) * torch.linspace(0.1, 3, 37, dtype=torch.bfloat16)[:, None]
    bias = torch.randn(n, dtype=torch.bfloat16)
    full = kernel.apply(x, prepared, bias)
    for i in (0, 5, 36):
        alone = kernel.apply(x[i : i + 1], prepared, bias)
        assert torch.equal(full[i], alone[0]), (name, i)
    # the quantized activation of a row does not depend on the others either
    xq_full, _ = quantize_activation(x, scheme, k, prepared)
    xq_one, _ = quantize_activation(x[5:6], scheme, k, prepared)
    assert torch.equal(xq_full[5].view(torch.uint8) if xq_full.dtype.itemsize == 1 else xq_full[5],
                       xq_one[0].view(torch.uint8) if xq_one.dtype.itemsize == 1 else xq_one[0])


def test_needs_helpers():
    assert needs_cpu(None) == (True, None) and needs_cpu((9, 0)) == (False, "CPU kernel")
    assert needs_cuda((9, 0), (8, 9)) == (True, None)
    assert needs_cuda((12, 0), (10, 0), (10, 3)) == (False, "needs compute capability <= 10.3, have 12.0")
    with registry.assume_libraries(["fbgemm"]):
        assert needs_library("fbgemm") == (True, None)
        assert needs_library("flashinfer") == (False, "flashinfer not installed (simulated)")
    ok, why = needs_library("surely_not_a_module_xyz")
    assert not ok and why.startswith("surely_not_a_module_xyz not available")


def test_plan_merges_one_kernel_ranked_for_adjacent_m_ranges(monkeypatch):
    """A kernel that wins a small-M entry and the unrestricted entry after it is one plan entry, not two."""
    from quantops.kernels import ranking

    monkeypatch.setitem(ranking.RANKING, "wna16", {"cpu": ["emulation:EmulationKernel@m<=4", "emulation:EmulationKernel"]})
    sel = select_kernel("W4A16", N=64, K=128, device="cpu")
    assert [cls.__name__ for _, cls in sel.plan] == ["EmulationKernel"]
    assert sel.plan[0][0] is None
