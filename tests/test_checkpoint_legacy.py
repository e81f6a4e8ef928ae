"""GPTQ (v1, v2) and AWQ (GEMM) layouts -> canonical pack-quantized tensors.

The legacy tensors are packed here, element by element with Python loops, from known unsigned values q, zero
points z and scales s; the converted layer must dequantize to exactly (q - z) * s (fp32), and the AWQ
conversion must equal compressed-tensors' own AutoAWQ converter's tensors.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402
from test_checkpoint_helpers import input_ids, pack_dim0, pack_dim1, tiny_llama  # noqa: E402

import quantops  # noqa: E402
from quantops import QuantizedLinear, get_scheme  # noqa: E402
from quantops.checkpoint import CheckpointError  # noqa: E402
from quantops.checkpoint.legacy import AWQ_ORDER, LegacyConfig, awq_to_canonical, gptq_to_canonical  # noqa: E402
from quantops.formats import dequantize_weight, validate_tensors  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def known_values(n, k, bits, group, g_idx=None, zero=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = 1 if group == -1 else k // group
    q = torch.randint(0, 1 << bits, (n, k), generator=g)  # unsigned, [N, K]
    z = torch.randint(0, 1 << bits, (groups, n), generator=g) if zero is None else torch.full((groups, n), zero)
    s = (torch.rand(groups, n, generator=g) * 0.02 + 0.001).to(torch.float16)
    if g_idx is None:
        g_idx = torch.arange(k) // (k if group == -1 else group)
    w = (q - z[g_idx].t()).float() * s.float()[g_idx].t()  # [N, K]: column c uses group g_idx[c]
    return q, z, s, g_idx.to(torch.int32), w


def gptq_tensors(q, z, s, g_idx, bits, v1):
    stored_z = z - 1 if v1 else z
    return {"qweight": pack_dim0(q.t(), bits), "qzeros": pack_dim1(stored_z & ((1 << bits) - 1), bits),
            "scales": s, "g_idx": g_idx}


@pytest.mark.parametrize("version", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("bits,group,sym,desc_act", [(4, 32, False, False), (4, 32, True, False), (4, 32, False, True),
                                                     (8, 64, True, False), (4, -1, False, False)])
def test_gptq_to_canonical(version, bits, group, sym, desc_act):
    n, k = 48, 128
    g_idx = None
    if desc_act:  # act-order: a permutation of the columns' groups
        g_idx = (torch.arange(k) // group)[torch.randperm(k, generator=torch.Generator().manual_seed(3))]
    zero = (1 << (bits - 1)) if sym else None
    q, z, s, g_idx, w = known_values(n, k, bits, group, g_idx, zero)
    if version == "gptq":
        z = z.clamp(min=1)  # v1 cannot store a zero point of 0 (z - 1 = -1 wraps to 15, read back as 16)
        w = (q - z[g_idx.long()].t()).float() * s.float()[g_idx.long()].t()
    cfg = LegacyConfig("gptq", bits, group, sym, version)
    scheme, t, unused = gptq_to_canonical(gptq_tensors(q, z, s, g_idx, bits, version == "gptq"), cfg, n, k, "layer")
    base = get_scheme(("W4A16" if sym else "W4A16_ASYM") if bits == 4 else "W8A16")
    expected = (base.replace(weight_strategy="channel", group_size=None, symmetric=sym) if group == -1
                else base.replace(group_size=group, symmetric=sym, actorder=desc_act))
    assert scheme == expected and not unused
    validate_tensors(t, scheme, n, k)
    assert torch.equal(dequantize_weight(t, scheme), w)


def test_gptq_v1_zero_point_16_is_rejected():
    n, k, bits, group = 16, 64, 4, 32
    q, z, s, g_idx, _ = known_values(n, k, bits, group)
    z[0, 3] = 0  # stored as 15 by v1, which means 16
    with pytest.raises(CheckpointError, match="zero point 16"):
        gptq_to_canonical(gptq_tensors(q, z, s, g_idx, bits, v1=True), LegacyConfig("gptq", 4, 32, False, "gptq"),
                          n, k, "layer")


def test_gptq_shape_errors():
    n, k = 16, 64
    q, z, s, g_idx, _ = known_values(n, k, 4, 32)
    t = gptq_tensors(q, z, s, g_idx, 4, False)
    t["scales"] = t["scales"][:1]
    with pytest.raises(CheckpointError, match=r"layer: scales has shape \(1, 16\), expected \(2, 16\)"):
        gptq_to_canonical(t, LegacyConfig("gptq", 4, 32, False, "gptq_v2"), n, k, "layer")


def awq_tensors(q, z, s):
    return {"qweight": pack_dim1(q.t(), 4, list(AWQ_ORDER)), "qzeros": pack_dim1(z, 4, list(AWQ_ORDER)), "scales": s}


@pytest.mark.parametrize("zero_point", [True, False])
def test_awq_to_canonical(zero_point):
    n, k, group = 64, 128, 32
    q, z, s, g_idx, w = known_values(n, k, 4, group, zero=None if zero_point else 8)
    t_awq = awq_tensors(q, z, s)
    if not zero_point:
        del t_awq["qzeros"]
    scheme, t, unused = awq_to_canonical(t_awq, LegacyConfig("awq", 4, group, not zero_point, "gemm"), n, k, "layer")
    assert scheme == get_scheme("W4A16" if not zero_point else "W4A16_ASYM", group_size=group) and not unused
    validate_tensors(t, scheme, n, k)
    assert torch.equal(dequantize_weight(t, scheme), w)


def test_awq_matches_compressed_tensors_converter():
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter

    n, k, group = 64, 128, 32
    q, z, s, _, _ = known_values(n, k, 4, group)
    raw = awq_tensors(q, z, s)
    theirs = AutoAWQConverter(group_size=group, ignore=[]).process({f"m.{k_}": v for k_, v in raw.items()})
    _, ours, _ = awq_to_canonical(raw, LegacyConfig("awq", 4, group, False, "gemm"), n, k, "layer")
    for name in ("weight_packed", "weight_zero_point", "weight_scale", "weight_shape"):
        assert torch.equal(ours[name], theirs[f"m.{name}"]), name


def _legacy_dir(path, method):
    """A tiny Llama whose linear layers (not lm_head) are stored GPTQ v1 (with a zero bias, as AutoGPTQ writes) or
    AWQ; returns {layer: expected float weight}."""
    model = tiny_llama(0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    expected = {}
    for i, (name, mod) in enumerate((n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"):
        n, k = mod.out_features, mod.in_features
        q, z, s, g_idx, w = known_values(n, k, 4, 64, seed=i)
        del state[f"{name}.weight"]
        if method == "gptq":
            z = z.clamp(min=1)
            w = (q - z[g_idx.long()].t()).float() * s.float()[g_idx.long()].t()
            t = {**gptq_tensors(q, z, s, g_idx, 4, v1=True), "bias": torch.zeros(n, dtype=torch.float16)}
        else:
            t = awq_tensors(q, z, s)
        state.update({f"{name}.{k_}": v for k_, v in t.items()})
        expected[name] = w
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads(model.config.to_json_string())
    if method == "gptq":
        q = {"quant_method": "gptq", "bits": 4, "group_size": 64, "desc_act": False, "sym": False,
             "checkpoint_format": "gptq"}
    else:
        q = {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm"}
    cfg["quantization_config"] = q
    (path / "config.json").write_text(json.dumps(cfg))
    return expected


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_load_legacy_checkpoint(tmp_path, method):
    expected = _legacy_dir(tmp_path, method)
    model = quantops.load_pretrained(tmp_path)
    for name, w in expected.items():
        m = model.get_submodule(name)
        assert isinstance(m, QuantizedLinear) and m.bias is None, name  # the zero GPTQ bias is dropped
        assert m.scheme == get_scheme("W4A16_ASYM", group_size=64)
        assert torch.equal(m.dequantize(torch.float32), w), name
    assert type(model.lm_head) is nn.Linear
    with torch.no_grad():
        assert torch.isfinite(model(input_ids()).logits).all()
