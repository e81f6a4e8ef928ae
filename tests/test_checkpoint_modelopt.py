"""quantops.load_pretrained on ModelOpt-layout checkpoints (FP8, FP8_PER_CHANNEL_PER_TOKEN, NVFP4, W4A16_NVFP4).

The checkpoints are written from ModelOpt's formulas (see test_checkpoint_helpers). Each dequantized weight
equals ModelOpt's own dequantization (FP8: bit for bit; NVFP4: quantops keeps compressed-tensors' convention,
weight_scale / (1 / weight_scale_2), so within an fp32 rounding of fp4 * weight_scale * weight_scale_2) and is
bit-identical to compressed-tensors' decompression of the tensors its own ModelOpt converter produces. Logits
are compared with the ModelOpt fake-quantized model.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from compressed_tensors.entrypoints.convert.converters.modelopt_nvfp4 import ModelOptNvfp4Converter  # noqa: E402
from compressed_tensors.quantization import QuantizationScheme  # noqa: E402
from compressed_tensors.quantization.quant_scheme import NVFP4  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from test_checkpoint_helpers import ct_decompress, modelopt_dequant, write_modelopt_checkpoint  # noqa: E402

import quantops  # noqa: E402
from quantops import QuantizedLinear, get_scheme  # noqa: E402
from quantops.checkpoint import CheckpointError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ALGO_SCHEME = {"FP8": "FP8", "FP8_PER_CHANNEL_PER_TOKEN": "FP8_DYNAMIC", "NVFP4": "NVFP4", "W4A16_NVFP4": "NVFP4A16"}


def _close(out, ref, tol, min_cos, what):
    out, ref = out.float(), ref.float()
    err = (out - ref).abs().max().item()
    assert err <= tol * ref.abs().max().item(), f"{what}: max |logits - ref| {err:.4g} vs max |ref| {ref.abs().max():.4g}"
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    assert cos >= min_cos, f"{what}: cosine {cos}"


@pytest.mark.parametrize("style", ["hf_quant_config", "config_json"])
@pytest.mark.parametrize("algo", list(ALGO_SCHEME))
def test_load_modelopt(tmp_path, algo, style):
    exclude = ["lm_head", "model.layers.1.mlp.down*"]
    layers, ids, ref = write_modelopt_checkpoint(tmp_path, algo, exclude=exclude, style=style)
    model = quantops.load_pretrained(tmp_path)
    scheme = get_scheme(ALGO_SCHEME[algo])
    q = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert set(q) == set(layers) and len(q) == 13 and all(m.scheme == scheme for m in q.values())
    assert type(model.model.layers[1].mlp.down_proj) is nn.Linear and type(model.lm_head) is nn.Linear
    for name, t in layers.items():
        ours = q[name].dequantize(torch.float32)
        theirs = modelopt_dequant(t, algo)
        if "NVFP4" in algo:
            torch.testing.assert_close(ours, theirs, rtol=2**-22, atol=0)
        else:
            assert torch.equal(ours, theirs), name
    with torch.no_grad():
        out32 = quantops.load_pretrained(tmp_path, dtype=torch.float32)(ids).logits
        out = model(ids).logits
    # fp32: the same fake quantization up to the fp32 rounding of the NVFP4 global scale's reciprocal (which
    # can move an activation across an FP4 rounding boundary); bf16: rounding of the hidden states, as in
    # test_checkpoint's compressed-tensors comparison
    fp4 = algo == "NVFP4"
    _close(out32, ref, 0.02 if fp4 else 1e-4, 0.999 if fp4 else 0.999999, f"{algo} fp32")
    _close(out, ref, 0.5 if fp4 else 0.15, 0.95 if fp4 else 0.995, f"{algo} bf16")


def test_modelopt_nvfp4_matches_compressed_tensors_converter(tmp_path):
    """compressed-tensors' own ModelOpt->compressed-tensors conversion, then its decompression: bit-identical to
    our dequantized weights (the global scales are the same fp32 reciprocals)."""
    layers, ids, ref = write_modelopt_checkpoint(tmp_path, "NVFP4")
    model = quantops.load_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    converted = ModelOptNvfp4Converter(ignore=["lm_head"], targets=["Linear"]).process(dict(tensors))
    scheme = QuantizationScheme(targets=["Linear"], format="nvfp4-pack-quantized", **NVFP4)
    for name in layers:
        # ModelOpt scalars become [1] tensors, the shape compressed-tensors checkpoints store
        sd = {k.rpartition(".")[2]: (v.reshape(1) if v.dim() == 0 else v) for k, v in converted.items()
              if k.rpartition(".")[0] == name}
        theirs = ct_decompress(sd, scheme)
        q = model.get_submodule(name)
        assert torch.equal(q.weight_global_scale, sd["weight_global_scale"].reshape(1))
        assert torch.equal(q.input_global_scale, sd["input_global_scale"].reshape(1))
        assert torch.equal(q.dequantize(theirs.dtype), theirs), name


def test_modelopt_mixed_precision(tmp_path):
    """MIXED_PRECISION: quantized_layers names each layer's algo; layers not named stay float."""
    layers, ids, ref = write_modelopt_checkpoint(tmp_path, "NVFP4")
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": {
        "quant_algo": "MIXED_PRECISION",
        "quantized_layers": {name: {"quant_algo": "W4A16_NVFP4" if "mlp" in name else "NVFP4", "group_size": 16}
                             for name in layers if not name.startswith("model.layers.1.self_attn")}}}))
    # layers 1's attention: make it float in the checkpoint too
    t = load_file(str(tmp_path / "model.safetensors"))
    for name in [n for n in layers if n.startswith("model.layers.1.self_attn")]:
        w = modelopt_dequant({k.rpartition(".")[2]: t.pop(k) for k in list(t) if k.rpartition(".")[0] == name}, "NVFP4")
        t[f"{name}.weight"] = w.to(torch.bfloat16)
    save_file(t, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model = quantops.load_pretrained(tmp_path)
    for name in layers:
        m = model.get_submodule(name)
        if name.startswith("model.layers.1.self_attn"):
            assert type(m) is nn.Linear
        else:
            assert m.scheme == get_scheme("NVFP4A16" if "mlp" in name else "NVFP4"), name
    with torch.no_grad():
        model(ids)


def _rewrite(path, edit):
    t = load_file(str(path / "model.safetensors"))
    edit(t)
    save_file(t, str(path / "model.safetensors"), metadata={"format": "pt"})


def _slice(t, key, index):
    t[key] = t[key][index].contiguous()


Q = "model.layers.0.self_attn.q_proj"
MALFORMED = {
    "missing_weight_scale_2": ("NVFP4", lambda t: t.pop(f"{Q}.weight_scale_2"), [Q, "missing weight_scale_2"]),
    "zero_weight_scale_2": ("NVFP4", lambda t: t[f"{Q}.weight_scale_2"].zero_(), [Q, "weight_scale_2", "finite positive"]),
    "nan_input_scale": ("NVFP4", lambda t: t[f"{Q}.input_scale"].fill_(float("nan")), [Q, "input_scale", "finite positive"]),
    "weight_not_packed": ("NVFP4", lambda t: t.__setitem__(f"{Q}.weight", t[f"{Q}.weight"].to(torch.int8)),
                          [Q, "weight has dtype torch.int8, expected torch.uint8"]),
    "block_scale_shape": ("W4A16_NVFP4", lambda t: _slice(t, f"{Q}.weight_scale", (slice(None), slice(0, 4))),
                          [Q, "weight_scale has shape (128, 4), expected (128, 8)"]),
    "fp8_channel_scale_shape": ("FP8_PER_CHANNEL_PER_TOKEN", lambda t: _slice(t, f"{Q}.weight_scale", slice(0, 5)),
                                [Q, "weight_scale has shape (5,), expected (128,)"]),
    "fp8_vector_weight_scale": ("FP8", lambda t: t.__setitem__(f"{Q}.weight_scale", torch.ones(3)),
                                [Q, "weight_scale has shape (3,), expected a scalar"]),
    "fp8_missing_input_scale": ("FP8", lambda t: t.pop(f"{Q}.input_scale"), [Q, "missing input_scale"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_modelopt(tmp_path, case, monkeypatch):
    algo, edit, words = MALFORMED[case]
    write_modelopt_checkpoint(tmp_path, algo)
    _rewrite(tmp_path, edit)
    monkeypatch.setattr(quantops.modules, "select_kernel", lambda *a, **k: (_ for _ in ()).throw(AssertionError("kernel")))
    with pytest.raises(ValueError) as e:
        quantops.load_pretrained(tmp_path)
    for w in words:
        assert w in str(e.value), f"{w!r} not in: {e.value}"


def test_unknown_modelopt_algo(tmp_path):
    write_modelopt_checkpoint(tmp_path, "FP8")
    cfg = json.loads((tmp_path / "hf_quant_config.json").read_text())
    cfg["quantization"]["quant_algo"] = "INT4_AWQ"
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="quant_algo 'INT4_AWQ' is not supported"):
        quantops.load_pretrained(tmp_path)
