"""QuantizedLinear and quantize_model, for every preset (issue 2, "Done when").

Each preset quantizes a random 3-layer MLP with odd sizes where the scheme allows (K a multiple of its group,
N odd), plus one layer it cannot represent (K=33: stays float, with the reason in quantization_report); for
schemes that represent every shape (FP8*, W8A8) that layer is excluded by name instead.

Tolerance of the eager output against dequantize-then-matmul (F.linear on the dequantized weight in fp32, same
layer input), as relative Frobenius error per layer. It is the activation quantization the scheme prescribes
(the kernels quantize activations; the reference does not), plus the output rounding to the model dtype:
  weight-only (A16): fp32 1e-5, bf16 1e-2 (one bf16 rounding, 2^-8 per element)
  int8 activations (per token): 2e-2      fp8 / mxfp8 activations (3 mantissa bits): 5e-2
  nvfp4 activations (E2M1, 16-blocks): 0.15      mxfp4 activations (E2M1, 32-blocks, power-of-two scales): 0.2
"""

from __future__ import annotations

import warnings

import pytest
import safetensors.torch
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from quantops import QuantizedLinear, get_scheme, quantization_report, quantize_model, scheme_names
from quantops.formats import tensor_specs
from quantops.modules import load_quantized_state_dict

ACT_TOL = {None: None, "int8": 2e-2, "fp8": 5e-2, "mxfp8": 5e-2, "nvfp4": 0.15, "mxfp4": 0.2}
WEIGHT_ONLY_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
# (d0, d1, d2, d3) for K multiples of 1, 16, 32, 128: layers d0->d1->d2->d3, then d3 (=33) -> 5
DIMS = {1: (320, 200, 75, 33), 16: (320, 208, 80, 33), 32: (320, 224, 96, 33), 128: (384, 256, 128, 33)}


def tolerance(scheme, dtype):
    return ACT_TOL[scheme.act] or WEIGHT_ONLY_TOL[dtype]


def needs_calibration(scheme):
    return (not scheme.act_dynamic) or scheme.act == "nvfp4"


def float_mlp(scheme, dtype, seed=0, device=None):
    torch.manual_seed(seed)
    d0, d1, d2, d3 = DIMS[scheme.k_multiple]
    with torch.device(device or "cpu"):
        return nn.Sequential(
            nn.Linear(d0, d1), nn.SiLU(), nn.Linear(d1, d2, bias=False), nn.SiLU(), nn.Linear(d2, d3), nn.Linear(d3, 5),
        ).to(dtype)


def quantized_mlp(scheme, dtype, seed=0):
    model = float_mlp(scheme, dtype, seed)
    x = torch.randn(4, 3, model[0].in_features, dtype=dtype)
    exclude = ("5",) if scheme.k_multiple == 1 else ()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report of the float layer is checked below
        quantize_model(model, scheme, exclude=exclude, calibration=[x] if needs_calibration(scheme) else None)
    return model, x


def param_bytes(model):
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def bits(t):
    """The bytes of a tensor (bit-exact comparison of any dtype, NaN included)."""
    return t.detach().flatten().view(torch.uint8)


def rel_err(y, ref):
    y, ref = y.detach().float(), ref.detach().float()
    return float((y - ref).norm() / ref.norm().clamp(min=1e-12))


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


# -- every preset: quantize, run, compare, report, save/load, memory ------------------------------------


@pytest.mark.parametrize("name", scheme_names())
def test_mlp_every_preset(name, tmp_path):
    scheme = get_scheme(name)
    dtype = torch.bfloat16
    model, x = quantized_mlp(scheme, dtype)
    float_model = float_mlp(scheme, dtype)  # same seed: the weights before quantization

    # structure and report: three quantized layers, one float layer with its reason
    assert [type(m).__name__ for m in model] == ["QuantizedLinear", "SiLU", "QuantizedLinear", "SiLU",
                                                  "QuantizedLinear", "Linear"]
    report = quantization_report(model)
    assert report.quantized == ["0", "2", "4"]
    if scheme.k_multiple == 1:
        assert report.skipped == {"5": "excluded"}
    else:
        assert report.skipped == {"5": f"K=33 is not a multiple of the {scheme.name} group size {scheme.k_multiple}"}
    assert "1 left in float" in str(report) and "5: " in str(report)
    assert f"scheme={scheme.key()}" in repr(model[0]) and "kernel=" in repr(model[0])

    # eager output, per layer, against dequantize-then-matmul on the same input
    tol = tolerance(scheme, dtype)
    h = x
    for layer in model:
        if isinstance(layer, QuantizedLinear):
            y = layer(h)
            ref = nn.functional.linear(h.float(), layer.dequantize(torch.float32),
                                       None if layer.bias is None else layer.bias.float())
            assert y.shape == h.shape[:-1] + (layer.out_features,) and y.dtype == dtype
            err = rel_err(y, ref)
            assert err <= tol, f"{name} layer {layer.layer_name}: rel err {err:.3g} > {tol}"
            h = y
        else:
            h = layer(h)
    y = model(x)
    assert torch.equal(y, h)
    # the quantized weights are those of the float model, to the scheme's precision
    w_err = rel_err(model[0].dequantize(torch.float32), float_model[0].weight.float())
    assert 0 < w_err < (0.2 if scheme.weight_bits == 4 else 0.05), w_err

    # memory: exactly the packed tensors (+ bias) of the quantized layers, and the float layer
    expected = param_bytes(model[5])
    for layer in (model[0], model[2], model[4]):
        for tname, (shape, tdtype) in tensor_specs(scheme, layer.out_features, layer.in_features).items():
            itemsize = (torch.empty(0, dtype=dtype if tdtype == "float" else tdtype)).element_size()
            expected += itemsize * torch.Size(shape).numel()
        expected += 0 if layer.bias is None else layer.out_features * dtype.itemsize
    assert param_bytes(model) == expected
    assert param_bytes(model) < param_bytes(float_model) * (0.35 if scheme.weight_bits == 4 else 0.6)

    # state_dict: the checkpoint's keys; safetensors save/load round-trips bit for bit
    sd = model.state_dict()
    assert [k for k in sd if k.startswith("0.")] == \
        [f"0.{t}" for t in tensor_specs(scheme, model[0].out_features, model[0].in_features)] + ["0.bias"]
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(sd, str(path))
    loaded = safetensors.torch.load_file(str(path))
    assert loaded.keys() == sd.keys()
    for key, t in sd.items():
        assert loaded[key].dtype == t.dtype and torch.equal(bits(loaded[key]), bits(t)), key

    # a fresh model (different random weights) rebuilt from the checkpoint alone: same tensors, same outputs
    fresh = load_quantized_state_dict(float_mlp(scheme, dtype, seed=1), loaded, scheme)
    assert quantization_report(fresh).quantized == ["0", "2", "4"]
    _assert_same_state(fresh, model)
    assert torch.equal(fresh(x), y)
    # ... or quantize a fresh float model the same way, then load_state_dict over it
    fresh2, _ = quantized_mlp(scheme, dtype, seed=2)
    fresh2.load_state_dict(loaded)
    _assert_same_state(fresh2, model)
    assert torch.equal(fresh2(x), y)


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(bits(sa[key]), bits(sb[key])), key


@pytest.mark.parametrize("name,dtype", [("W4A16", torch.float32), ("W8A16", torch.float16), ("NVFP4A16", torch.float32),
                                        ("W8A8", torch.float32), ("MXFP8A16", torch.float16)])
def test_mlp_other_dtypes(name, dtype):
    scheme = get_scheme(name)
    model, x = quantized_mlp(scheme, dtype)
    tol = tolerance(scheme, dtype)
    for m in (1, 12):  # fp32 weight-only: a CPU kernel for M <= 8, emulation above
        h = x.reshape(-1, x.shape[-1])[:m]
        for layer in model:
            if isinstance(layer, QuantizedLinear):
                y = layer(h)
                ref = nn.functional.linear(h.float(), layer.dequantize(torch.float32),
                                           None if layer.bias is None else layer.bias.float())
                assert y.dtype == dtype and rel_err(y, ref) <= tol, (layer.layer_name, m, rel_err(y, ref))
                h = y
            else:
                h = layer(h)


def test_load_into_meta_model():
    """The float skeleton may be built on the meta device (no memory for float weights); assign=True."""
    scheme = get_scheme("W4A16")
    model, x = quantized_mlp(scheme, torch.bfloat16)
    sd = model.state_dict()
    skeleton = float_mlp(scheme, torch.bfloat16, device="meta")
    fresh = load_quantized_state_dict(skeleton, sd, scheme, assign=True)
    assert all(p.device.type == "cpu" for p in fresh.parameters())
    assert torch.equal(fresh(x), model(x))


def test_load_quantized_state_dict_refuses_partial_layers():
    scheme = get_scheme("W4A16")
    model, _ = quantized_mlp(scheme, torch.bfloat16)
    sd = dict(model.state_dict())
    del sd["2.weight_scale"]
    with pytest.raises(ValueError, match=r"^2: the checkpoint has some W4A16 tensors of this layer but not 2.weight_scale"):
        load_quantized_state_dict(float_mlp(scheme, torch.bfloat16), sd, scheme)


# -- prepare runs once ----------------------------------------------------------------------------------


def test_prepare_runs_once_and_again_after_load(monkeypatch):
    from quantops.kernels.cpu_wna16 import Int4WeightOnlyCpuKernel

    calls = []
    original = Int4WeightOnlyCpuKernel.prepare
    monkeypatch.setattr(Int4WeightOnlyCpuKernel, "prepare", lambda self, t: calls.append(1) or original(self, t))
    model, x = quantized_mlp(get_scheme("W4A16"), torch.bfloat16)
    for _ in range(3):
        model(x)
    assert len(calls) == 3  # once per quantized layer
    other, _ = quantized_mlp(get_scheme("W4A16"), torch.bfloat16, seed=3)
    model.load_state_dict(other.state_dict())
    y = model(x)
    assert len(calls) == 6 and torch.equal(y, other(x))


# -- invalid input --------------------------------------------------------------------------------------


def test_invalid_input_raises_before_any_kernel_naming_the_layer():
    model, x = quantized_mlp(get_scheme("W8A8"), torch.bfloat16)
    model(x)  # validated and prepared
    bad_inputs = [
        (x.float(), r"^0: input dtype must be torch.bfloat16 \(the layer's dtype\), got torch.float32"),
        (x[..., :100], r"^0: input last dimension must be 320, got shape \(4, 3, 100\)"),
        (torch.empty(2, 320, dtype=torch.bfloat16, device="meta"), r"^0: input is on meta, weights are on cpu"),
        (x.new_empty(()), r"^0: input last dimension must be 320"),
    ]
    for bad, msg in bad_inputs:
        with RecordOps() as rec, pytest.raises(ValueError, match=msg):
            model(bad)
        assert not rec.ops, rec.ops  # nothing was launched, not even activation quantization
    with pytest.raises(ValueError, match=r"^2: input last dimension must be 200"):
        model[2](x)


def _load_error(model, sd):
    with RecordOps() as rec, pytest.raises(ValueError) as e:
        model.load_state_dict(sd)
    assert not any(op.namespace == "quantops" for op in rec.ops)
    return str(e.value)


@pytest.mark.parametrize("name", ["W4A16_ASYM", "FP8", "NVFP4", "MXFP4"])
def test_malformed_tensors_raise_naming_the_layer(name):
    scheme = get_scheme(name)
    model, x = quantized_mlp(scheme, torch.bfloat16)
    good = model.state_dict()
    main = "weight_packed" if "0.weight_packed" in good else "weight"
    # wrong shape
    sd = dict(good, **{"0.weight_scale": good["0.weight_scale"][:-1]})
    msg = _load_error(model, sd)
    assert msg.startswith("0 (loading 0.): weight_scale has shape") and "expected" in msg
    # wrong dtype
    sd = dict(good, **{f"0.{main}": good[f"0.{main}"].to(torch.float32)})
    msg = _load_error(model, sd)
    assert msg.startswith(f"0 (loading 0.): {main} has dtype torch.float32, expected")
    # NaN scales (as the format can hold them: float NaN, e4m3 NaN, E8M0 0xFF)
    scale = good["0.weight_scale"].clone()
    if scale.dtype == torch.uint8:
        scale[0, 0] = 255
    else:
        scale.view(-1)[0] = float("nan")
    msg = _load_error(model, dict(good, **{"0.weight_scale": scale}))
    assert msg.startswith("0 (loading 0.): weight_scale has") and ("NaN" in msg or "0xFF" in msg)
    # nothing was changed by the refused loads
    _assert_same_state(model, quantized_mlp(scheme, torch.bfloat16)[0])
    # the same checks guard from_tensors and an in-place edit after validation (checked at the next forward)
    tensors = {k: v.clone() for k, v in model[0].quant_tensors().items()}
    tensors["weight_scale"] = scale
    with pytest.raises(ValueError, match=r"^mlp.up: weight_scale has"):
        QuantizedLinear.from_tensors(tensors, scheme, name="mlp.up")
    with torch.no_grad():
        model[0].weight_scale.copy_(scale)
    with RecordOps() as rec, pytest.raises(ValueError, match=r"^0: weight_scale has"):
        model(x)
    assert not any(op.namespace == "quantops" for op in rec.ops)


def test_partial_load_checks_each_tensor():
    model, _ = quantized_mlp(get_scheme("W8A8"), torch.bfloat16)
    with pytest.raises(ValueError, match=r"^0 \(loading 0\.\): weight is \(200, 320\) torch.float32"):
        model.load_state_dict({"0.weight": torch.zeros(200, 320)}, strict=False)


def test_checkpoint_scale_dtype_is_kept():
    """fp32 scales loaded into a bf16 model keep their exact values (copying would round them to bf16)."""
    scheme = get_scheme("W4A16")
    model32, _ = quantized_mlp(scheme, torch.float32)
    sd = model32.state_dict()
    model16, x = quantized_mlp(scheme, torch.bfloat16)
    model16.load_state_dict({k: (v.to(torch.bfloat16) if k.endswith("bias") else v) for k, v in sd.items()
                             if not k.startswith("5.")}, strict=False)
    assert model16[0].weight_scale.dtype == torch.float32
    assert torch.equal(model16[0].weight_scale, sd["0.weight_scale"])
    model16(x)


# -- .to() ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["FP8_DYNAMIC", "W4A16_ASYM", "NVFP4", "MXFP8"])
def test_to_keeps_quantized_dtypes(name):
    scheme = get_scheme(name)
    model, x = quantized_mlp(scheme, torch.bfloat16)
    before = {k: (v.dtype, v.clone()) for k, v in model.state_dict().items()}
    y = model(x)
    model.to(torch.float32)
    for key, t in model.state_dict().items():
        layer = key.split(".", 1)[0]
        if layer == "5" or key.endswith("bias"):  # float layers and biases follow the model dtype
            assert t.dtype == torch.float32, key
        else:
            assert t.dtype == before[key][0] and torch.equal(bits(t), bits(before[key][1])), key
    assert model[0].dtype == torch.float32
    y32 = model(x.float())
    assert y32.dtype == torch.float32 and rel_err(y32, y) <= 2 * tolerance(scheme, torch.bfloat16)
    model.half()
    assert model[0].dtype == torch.float16 and model(x.half()).dtype == torch.float16
    model.to("meta")
    assert model[0].device.type == "meta"
    for key, t in model.state_dict().items():
        if not (key.startswith("5.") or key.endswith("bias")):
            assert t.dtype == before[key][0], key


# -- calibration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["FP8", "NVFP4"])
def test_static_schemes_need_calibration(name):
    scheme = get_scheme(name)
    model = float_mlp(scheme, torch.bfloat16)
    with pytest.raises(ValueError, match=f"{name} has static activation scales: pass calibration="):
        quantize_model(model, scheme)
    assert all(type(m) is not QuantizedLinear for m in model)  # nothing was changed
    with pytest.raises(ValueError, match="static activation scales"):
        quantize_model(nn.Linear(64, 64), scheme)
    x = torch.randn(5, model[0].in_features, dtype=torch.bfloat16) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_model(model, scheme, calibration=[x, (x * 0.5,)])
    amax = x.float().abs().max()
    if name == "FP8":
        assert torch.equal(model[0].input_scale.float(), (amax / 448).to(torch.bfloat16).float().reshape(1))
    else:
        torch.testing.assert_close(model[0].input_global_scale, (448 * 6 / amax).reshape(1))
    # a bare nn.Linear is returned as a QuantizedLinear, calibrated the same way
    lin = nn.Linear(64, 48).to(torch.bfloat16)
    q = quantize_model(lin, scheme, calibration=[torch.randn(3, 64, dtype=torch.bfloat16)])
    assert isinstance(q, QuantizedLinear) and q(torch.randn(2, 64, dtype=torch.bfloat16)).shape == (2, 48)


def test_layers_not_reached_by_calibration_stay_float():
    scheme = get_scheme("FP8")
    model = nn.ModuleDict({"used": nn.Linear(16, 16), "unused": nn.Linear(16, 16)}).to(torch.bfloat16)

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner["used"](x)

    wrapped = Wrapper(model)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        quantize_model(wrapped, scheme, calibration=[torch.randn(2, 16, dtype=torch.bfloat16)])
    assert quantization_report(wrapped).skipped == {"inner.unused": "not reached by the calibration data"}
    assert any("left in float" in str(x.message) for x in w)
    assert isinstance(model["used"], QuantizedLinear) and type(model["unused"]) is nn.Linear


def test_inference_mode():
    """Quantizing and running under torch.inference_mode (its tensors have no version counter) works, and the
    same model runs outside it afterwards."""
    scheme = get_scheme("W4A16")
    with torch.inference_mode():
        model, x = quantized_mlp(scheme, torch.bfloat16)
        y = model(x)
    assert torch.equal(model(x.clone()), y)
