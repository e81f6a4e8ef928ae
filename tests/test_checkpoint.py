"""quantops.load_pretrained / save_pretrained on compressed-tensors checkpoints made by compressed-tensors itself.

For every scheme: each layer's dequantized weight is bit-identical to compressed-tensors' decompression, and
the logits are within tolerance of compressed-tensors' fake-quantized forward. Saving writes tensors that
compressed-tensors decompresses to exactly our dequantized weights (and transformers loads). Malformed
checkpoints raise CheckpointError naming the tensor, before any kernel is selected. Loading keeps peak host
memory near the checkpoint's size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme  # noqa: E402
from compressed_tensors.quantization.quant_scheme import NVFP4 as CT_NVFP4  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from test_checkpoint_helpers import (  # noqa: E402
    ct_decompress,
    input_ids,
    make_ct_checkpoint,
    tiny_config,
    tiny_llama,
)

import quantops  # noqa: E402
from quantops import QuantizedLinear, get_scheme  # noqa: E402
from quantops.checkpoint import CheckpointError  # noqa: E402
from quantops.checkpoint.compressed_tensors import config_group_from_scheme, scheme_from_config_group  # noqa: E402
from quantops.schemes import PRESETS  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

def assert_logits_close(path, ids, ref, scheme, model=None):
    """Loaded in fp32, our logits equal compressed-tensors' fake-quantized forward (fp32, exact dequantized
    weights) up to summation order: both quantize the same activations the same way. The exception is dynamic
    int8 activations, where compressed-tensors' reference scale is amax/127.5 and quantops' (vLLM's) amax/127.
    Loaded in bf16 (the checkpoint's dtype) the hidden states are rounded to bf16 between layers, and in this
    small random model a few activations then land on the other side of a rounding boundary: the logits stay
    highly correlated (FP4 activations, whose steps are coarse, less so)."""
    with torch.no_grad():
        _assert_logits_close(path, ids, ref, scheme, model)


def _assert_logits_close(path, ids, ref, scheme, model):
    out32 = quantops.load_pretrained(path, dtype=torch.float32)(ids).logits
    tol, min_cos = (0.05, 0.999) if (scheme.act == "int8" and scheme.act_dynamic) else (1e-4, 0.999999)
    _close(out32, ref, tol, min_cos, scheme.key() + " fp32")
    out = (model or quantops.load_pretrained(path))(ids).logits
    assert out.dtype == torch.bfloat16
    fp4_act = scheme.act in ("nvfp4", "mxfp4")
    _close(out, ref, 0.5 if fp4_act else 0.15, 0.95 if fp4_act else 0.995, scheme.key() + " bf16")


def _close(out, ref, tol, min_cos, what):
    out, ref = out.detach().float(), ref.float()
    err = (out - ref).abs().max().item()
    assert err <= tol * ref.abs().max().item(), f"{what}: max |logits - ref| {err:.4g} vs max |ref| {ref.abs().max():.4g}"
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    assert cos >= min_cos, f"{what}: cosine similarity {cos}"


def check_weights(model, ct_weights: dict[str, torch.Tensor]):
    """Every quantized layer: our dequantize() == compressed-tensors' decompression, bit for bit."""
    qlayers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert set(qlayers) == set(ct_weights)
    for name, ref in ct_weights.items():
        ours = qlayers[name].dequantize(ref.dtype)
        assert torch.equal(ours, ref), f"{name}: {(ours.float() - ref.float()).abs().max()}"


CT_PRESETS = ["FP8_DYNAMIC", "FP8", "FP8_BLOCK", "W8A8", "W4A16", "W4A16_ASYM", "W8A16", "W4AFP8", "NVFP4",
              "NVFP4A16", "MXFP4", "MXFP4A16", "MXFP8"]


@pytest.mark.parametrize("preset", CT_PRESETS)
def test_load_compressed_tensors_preset(tmp_path, preset):
    weights, ids, ref = make_ct_checkpoint(tmp_path, preset)
    model = quantops.load_pretrained(tmp_path)
    expected = get_scheme(preset)
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 14 and all(m.scheme == expected for m in layers)
    assert type(model.lm_head) is nn.Linear  # ignored
    check_weights(model, weights)
    assert_logits_close(tmp_path, ids, ref, expected, model)


def test_nvfp4_fused_layers_share_global_scale(tmp_path):
    """llm-compressor gives q/k/v (and gate/up) one global scale; each layer loads it and dequantizes right."""
    weights, ids, ref = make_ct_checkpoint(tmp_path, "NVFP4")
    model = quantops.load_pretrained(tmp_path)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    gs = [attn.q_proj.weight_global_scale, attn.k_proj.weight_global_scale, attn.v_proj.weight_global_scale]
    assert all(torch.equal(g, gs[0]) for g in gs)
    assert torch.equal(mlp.gate_proj.weight_global_scale, mlp.up_proj.weight_global_scale)
    assert not torch.equal(attn.q_proj.weight_global_scale, attn.o_proj.weight_global_scale)
    check_weights(model, weights)


def _args(**kw):
    return QuantizationArgs(**kw)


# non-preset variants: (compressed-tensors group, the QuantScheme it must parse to)
VARIANTS = {
    "w4a16_g32": (dict(weights=_args(num_bits=4, type="int", strategy="group", group_size=32)),
                  get_scheme("W4A16", group_size=32)),
    "w4a16_channel": (dict(weights=_args(num_bits=4, type="int", strategy="channel")),
                      get_scheme("W4A16", weight_strategy="channel", group_size=None)),
    "w4a16_asym_g64": (dict(weights=_args(num_bits=4, type="int", strategy="group", group_size=64, symmetric=False)),
                       get_scheme("W4A16_ASYM", group_size=64)),
    "w8a16_asym_channel": (dict(weights=_args(num_bits=8, type="int", strategy="channel", symmetric=False)),
                           get_scheme("W8A16", weight_strategy="channel", group_size=None, symmetric=False)),
    "fp8_channel_static_act": (dict(weights=_args(num_bits=8, type="float", strategy="channel"),
                                    input_activations=_args(num_bits=8, type="float", strategy="tensor", dynamic=False)),
                               get_scheme("FP8", weight_strategy="channel")),
    "fp8_dynamic_tensor_act": (dict(weights=_args(num_bits=8, type="float", strategy="tensor"),
                                    input_activations=_args(num_bits=8, type="float", strategy="tensor", dynamic=True)),
                               get_scheme("FP8", act_dynamic=True)),
    "w8a8_static_asym_act": (dict(weights=_args(num_bits=8, type="int", strategy="channel"),
                                  input_activations=_args(num_bits=8, type="int", strategy="tensor", dynamic=False,
                                                          symmetric=False)),
                             get_scheme("W8A8", act_strategy="tensor", act_dynamic=False, act_symmetric=False)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_load_compressed_tensors_variant(tmp_path, variant):
    group, expected = VARIANTS[variant]
    weights, ids, ref = make_ct_checkpoint(tmp_path, {"group_0": QuantizationScheme(targets=["Linear"], **group)})
    model = quantops.load_pretrained(tmp_path)
    assert {m.scheme for m in model.modules() if isinstance(m, QuantizedLinear)} == {expected}
    check_weights(model, weights)
    assert_logits_close(tmp_path, ids, ref, expected, model)


def test_mixed_precision_and_ignore_patterns(tmp_path):
    """Two schemes (regex and exact-name targets), a "re:" ignore entry: each layer gets its group's scheme."""
    names = [f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    groups = {
        "attn": QuantizationScheme(targets=[r"re:.*self_attn\.(q|k|v|o)_proj$"],
                                   weights=_args(num_bits=8, type="float", strategy="channel"),
                                   input_activations=_args(num_bits=8, type="float", strategy="token", dynamic=True)),
        "mlp": QuantizationScheme(targets=names, **CT_NVFP4),
    }
    ignore = ["lm_head", r"re:.*layers\.1\.mlp\.down_proj$"]
    weights, ids, ref = make_ct_checkpoint(tmp_path, groups, ignore=ignore)
    qcfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qcfg["format"] == "mixed-precision"
    model = quantops.load_pretrained(tmp_path)
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, QuantizedLinear)):
            continue
        if name in ("lm_head", "model.layers.1.mlp.down_proj"):
            assert type(m) is nn.Linear, name
        elif "self_attn" in name:
            assert m.scheme == get_scheme("FP8_DYNAMIC"), name
        else:
            assert m.scheme == get_scheme("NVFP4"), name
    check_weights(model, weights)
    assert_logits_close(tmp_path, ids, ref, get_scheme("NVFP4"), model)


def test_scheme_config_round_trip():
    """Our config group for every preset (and variants) parses back to the same scheme, and compressed-tensors
    accepts it."""
    schemes = list(PRESETS.values()) + [v for _, v in VARIANTS.values()] + [get_scheme("W4A16", actorder=True)]
    for s in schemes:
        group = config_group_from_scheme(s, ["Linear"])
        assert scheme_from_config_group(group) == s, s.key()
        if not s.actorder:  # compressed-tensors 0.20 removed actorder="group" (and weight_g_idx)
            QuantizationScheme.model_validate(group)


def _ct_weights_of_saved(path) -> dict[str, torch.Tensor]:
    """compressed-tensors' decompression of every quantized layer of a checkpoint quantops saved."""
    qcfg = QuantizationConfig.model_validate(json.loads((path / "config.json").read_text())["quantization_config"])
    tensors = load_file(str(path / "model.safetensors"))
    by_module: dict[str, dict] = {}
    for key, t in tensors.items():
        mod, _, local = key.rpartition(".")
        by_module.setdefault(mod, {})[local] = t
    out = {}
    for mod, sd in by_module.items():
        if "weight_scale" not in sd:
            continue
        group = next(g for g in qcfg.config_groups.values() if "Linear" in g.targets or mod in g.targets)
        out[mod] = ct_decompress(sd, group)
    return out


@pytest.mark.parametrize("preset", ["W4A16_ASYM", "NVFP4", "FP8_BLOCK", "W8A8", "MXFP4", "W4AFP8"])
def test_save_then_compressed_tensors_decompresses_identically(tmp_path, preset):
    make_ct_checkpoint(tmp_path / "src", preset)
    model = quantops.load_pretrained(tmp_path / "src")
    quantops.save_pretrained(model, tmp_path / "out")
    check_weights(model, _ct_weights_of_saved(tmp_path / "out"))
    again = quantops.load_pretrained(tmp_path / "out")
    for (n1, a), (n2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b), n1


def test_save_quantize_model_mixed_then_transformers_loads(tmp_path):
    """A model quantized by quantops (two schemes, one layer left float) saves as mixed-precision; transformers
    + compressed-tensors load it and decompress every weight to exactly our dequantized weights."""
    model = tiny_llama(0)
    ids = input_ids()
    # (symmetric: transformers 5.23 + compressed-tensors 0.20 cannot load asymmetric pack-quantized checkpoints,
    # their own included: the meta-device compress leaves weight_zero_point unpacked)
    quantops.quantize_model(model, get_scheme("W4A16", group_size=64), exclude=["lm_head", "re:.*mlp.*"])
    quantops.quantize_model(model, get_scheme("FP8_DYNAMIC"), exclude=["lm_head", "re:.*down_proj"])
    quantops.save_pretrained(model, tmp_path)
    qcfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qcfg["format"] == "mixed-precision" and "model.layers.0.mlp.down_proj" in qcfg["ignore"]
    check_weights(model, _ct_weights_of_saved(tmp_path))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    with torch.no_grad():
        hf_logits = hf(ids).logits  # the first forward decompresses the model
        _close(model(ids).logits, hf_logits, 0.15, 0.995, "transformers-loaded")
    for name, m in model.named_modules():
        if isinstance(m, QuantizedLinear):
            assert torch.equal(hf.get_submodule(name).weight, m.dequantize(torch.bfloat16)), name


def test_save_actorder_round_trip(tmp_path):
    """Act-order (weight_g_idx) saves with actorder "group" and loads back identical."""
    model = tiny_llama(0)
    quantops.quantize_model(model, get_scheme("W4A16", group_size=32, actorder=True), exclude=["lm_head"])
    quantops.save_pretrained(model, tmp_path)
    group = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert group["weights"]["actorder"] == "group"
    again = quantops.load_pretrained(tmp_path)
    for name, m in model.named_modules():
        if isinstance(m, QuantizedLinear):
            other = again.get_submodule(name)
            assert other.scheme == m.scheme and torch.equal(other.weight_g_idx, m.weight_g_idx)
            assert torch.equal(other.dequantize(), m.dequantize())


def test_save_shards_and_overwrite_loaded_directory(tmp_path):
    """Sharded output with an index; saving over the directory a model was loaded from (its tensors are views
    of those files) leaves the model intact."""
    make_ct_checkpoint(tmp_path, "W4A16")
    model = quantops.load_pretrained(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantops.save_pretrained(model, tmp_path, max_shard_size="100KB")
    assert not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    again = quantops.load_pretrained(tmp_path)
    for k, v in again.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_tied_embeddings_and_generate(tmp_path):
    """tie_word_embeddings: lm_head is not in the checkpoint and shares embed_tokens' weight after loading;
    generate() runs (what `quantops run --model DIR` does)."""
    make_ct_checkpoint(tmp_path, "W4A16", tie=True)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
    model = quantops.load_pretrained(tmp_path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    out = model.generate(input_ids()[:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_float_model_directory(tmp_path):
    """A checkpoint without quantization_config loads as the float model transformers loads."""
    model = tiny_llama(0)
    model.save_pretrained(str(tmp_path))
    ours = quantops.load_pretrained(tmp_path)
    assert not any(isinstance(m, QuantizedLinear) for m in ours.modules())
    ids = input_ids()
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, model(ids).logits)


class NotATensor:
    pass


def test_pytorch_bin_read_without_unpickling_objects(tmp_path):
    """A pytorch_model.bin is read with torch.load(weights_only=True); one holding other objects is refused."""
    model = tiny_llama(0)
    model.config.save_pretrained(str(tmp_path))
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "pytorch_model.bin")
    ids = input_ids()
    with torch.no_grad():
        assert torch.equal(quantops.load_pretrained(tmp_path)(ids).logits, model(ids).logits)
    torch.save({"model.norm.weight": NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="unpickles nothing but tensors"):
        quantops.load_pretrained(tmp_path)


def test_device_and_dtype_arguments(tmp_path):
    make_ct_checkpoint(tmp_path, "FP8_DYNAMIC")
    model = quantops.load_pretrained(tmp_path, device="cpu", dtype=torch.float16)
    q = model.model.layers[0].self_attn.q_proj
    assert q.dtype == torch.float16 and model.model.embed_tokens.weight.dtype == torch.float16
    assert q.weight_scale.dtype == torch.bfloat16  # quantized tensors keep their checkpoint dtypes
    with torch.no_grad():
        assert model(input_ids()).logits.dtype == torch.float16


# -- malformed checkpoints --------------------------------------------------------------------------------

Q = "model.layers.0.self_attn.q_proj"


def _rewrite(path, edit):
    f = path / "model.safetensors"
    t = load_file(str(f))
    edit(t)
    save_file(t, str(f), metadata={"format": "pt"})


def _edit_config(path, edit):
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg["quantization_config"])
    (path / "config.json").write_text(json.dumps(cfg))


def _set(key, fn):
    return lambda t: t.__setitem__(key, fn(t[key]))


MALFORMED = {
    # name: (preset, tensor edit, config edit, words the message must contain)
    "missing_tensor": ("W4A16", lambda t: t.pop(f"{Q}.weight_scale"), None, [Q, "missing weight_scale"]),
    "wrong_shape": ("W4A16", _set(f"{Q}.weight_scale", lambda s: s[:, :1].repeat(1, 2)), None,
                    [Q, "weight_scale has shape (128, 2), expected (128, 1)"]),
    "wrong_dtype": ("W4A16", _set(f"{Q}.weight_packed", lambda p: p.to(torch.int64)), None,
                    [Q, "weight_packed has dtype torch.int64, expected torch.int32"]),
    "nan_scale": ("W4A16", _set(f"{Q}.weight_scale", lambda s: s.index_fill(0, torch.tensor([3]), float("nan"))),
                  None, [Q, "weight_scale", "NaN/Inf"]),
    "inf_global_scale": ("NVFP4", _set(f"{Q}.weight_global_scale", lambda s: s * float("inf")), None,
                         [Q, "weight_global_scale", "NaN/Inf"]),
    "nan_e4m3_block_scale": ("NVFP4", _set(f"{Q}.weight_scale", lambda s: s.view(torch.uint8).index_fill(
        0, torch.tensor([0]), 0x7F).view(torch.float8_e4m3fn)), None, [Q, "weight_scale", "NaN"]),
    "e8m0_nan_scale": ("MXFP4", _set(f"{Q}.weight_scale", lambda s: s.index_fill(0, torch.tensor([1]), 255)), None,
                       [Q, "weight_scale", "0xFF"]),
    "packed_size_vs_weight_shape": ("W4A16", _set(f"{Q}.weight_shape", lambda s: torch.tensor([128, 160])), None,
                                    [Q, "weight_shape is (128, 160), but the layer is 128x128"]),
    "packed_cols": ("W4A16", _set(f"{Q}.weight_packed", lambda p: p[:, :-1].contiguous()), None,
                    [Q, "weight_packed has shape (128, 15), expected (128, 16)"]),
    "unknown_format": ("W4A16", None, lambda q: q["config_groups"]["group_0"].__setitem__("format", "int3-quantized"),
                       ["unknown format 'int3-quantized'", "pack-quantized"]),
    "format_for_other_scheme": ("W4A16", None, lambda q: q["config_groups"]["group_0"].__setitem__(
        "format", "nvfp4-pack-quantized"), ["format 'nvfp4-pack-quantized' cannot hold W4A16 weights"]),
    "unknown_method": ("W4A16", None, lambda q: q.__setitem__("quant_method", "bitsandbytes"),
                       ["'bitsandbytes' is not supported"]),
    "unsupported_scheme": ("W4A16", None, lambda q: q["config_groups"]["group_0"]["weights"].__setitem__("num_bits", 3),
                           ["3-bit int weights have no quantops scheme"]),
    "missing_float_tensor": ("W4A16", lambda t: t.pop("model.norm.weight"), None, ["model.norm.weight", "(128,)"]),
    "quantized_but_not_in_config": ("FP8_DYNAMIC", None, lambda q: q["ignore"].append(Q),
                                    [f"{Q}.weight has dtype torch.float8_e4m3fn, expected a float tensor"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_checkpoint_raises_before_any_kernel(tmp_path, case, monkeypatch):
    preset, edit, cfg_edit, words = MALFORMED[case]
    make_ct_checkpoint(tmp_path, preset)
    if edit:
        _rewrite(tmp_path, edit)
    if cfg_edit:
        _edit_config(tmp_path, cfg_edit)

    def no_kernels(*a, **k):
        raise AssertionError("a kernel was selected while loading a malformed checkpoint")

    monkeypatch.setattr(quantops.modules, "select_kernel", no_kernels)
    with pytest.raises(ValueError) as e:
        quantops.load_pretrained(tmp_path)
    for w in words:
        assert w in str(e.value), f"{w!r} not in: {e.value}"


def test_not_a_model_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        quantops.load_pretrained(tmp_path)


# -- memory --------------------------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, torch, transformers.models.llama.modeling_llama, quantops

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    before = rss("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    model = quantops.load_pretrained(sys.argv[1])
    loaded = rss("VmHWM:")
    layers = [m for m in model.modules() if isinstance(m, quantops.QuantizedLinear)]
    assert len(layers) == 42
    # read every page of every packed weight (one int32 in each 2 KB: no temporary as large as a weight)
    total = sum(int(m.weight_packed.view(-1)[::512].sum()) for m in layers)
    read = rss("VmHWM:")
    print(json.dumps({"loaded": loaded - before, "read": read - before}))
""")


def test_peak_memory_near_checkpoint_size(tmp_path):
    """A W4A16 checkpoint whose float model would be ~4x larger: loading it (in a fresh process) raises peak
    resident memory by about the checkpoint's size, not the float model's."""
    from quantops.formats import tensor_specs

    cfg = tiny_config(hidden=1024, intermediate=4096, layers=6)  # config only: the float weights are
    scheme = get_scheme("W4A16")                                             # never built here either
    tensors, float_bytes = {}, 0
    g = torch.Generator().manual_seed(0)
    for i in range(cfg.num_hidden_layers):
        for name, (n, k) in {"self_attn.q_proj": (1024, 1024), "self_attn.k_proj": (512, 1024),
                             "self_attn.v_proj": (512, 1024), "self_attn.o_proj": (1024, 1024),
                             "mlp.gate_proj": (4096, 1024), "mlp.up_proj": (4096, 1024),
                             "mlp.down_proj": (1024, 4096)}.items():
            float_bytes += 2 * n * k
            p = f"model.layers.{i}.{name}"
            specs = tensor_specs(scheme, n, k)
            packed_shape, scale_shape = specs["weight_packed"][0], specs["weight_scale"][0]
            tensors[f"{p}.weight_packed"] = torch.randint(-2**31, 2**31 - 1, packed_shape, dtype=torch.int32, generator=g)
            tensors[f"{p}.weight_scale"] = (torch.rand(scale_shape, generator=g) * 1e-2 + 1e-3).to(torch.bfloat16)
            tensors[f"{p}.weight_shape"] = torch.tensor([n, k])
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{i}.{norm}.weight"] = torch.ones(1024, dtype=torch.bfloat16)
    tensors["model.embed_tokens.weight"] = torch.randn(256, 1024, generator=g).to(torch.bfloat16)
    tensors["lm_head.weight"] = torch.randn(256, 1024, generator=g).to(torch.bfloat16)
    tensors["model.norm.weight"] = torch.ones(1024, dtype=torch.bfloat16)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    ckpt_bytes = os.path.getsize(tmp_path / "model.safetensors")
    del tensors
    config = json.loads(cfg.to_json_string())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "pack-quantized",
                                     "config_groups": {"group_0": config_group_from_scheme(scheme, ["Linear"])},
                                     "ignore": ["lm_head"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-3000:]
    peak = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"checkpoint {ckpt_bytes / 1e6:.1f} MB, float model {float_bytes / 1e6:.1f} MB, peak RSS "
          f"+{peak['loaded'] / 1e6:.1f} MB after loading, +{peak['read'] / 1e6:.1f} MB after reading every weight")
    assert ckpt_bytes > 40e6 and float_bytes > 3.5 * ckpt_bytes
    # loading maps the files and reads only what it validates (scales, float tensors); reading every weight
    # then brings in the rest of the mapped pages: the checkpoint's size plus small change, far below the
    # float model's size
    assert peak["loaded"] < 1.25 * ckpt_bytes + 16e6, peak
    assert 0.8 * ckpt_bytes < peak["read"] < 1.25 * ckpt_bytes + 16e6, peak
