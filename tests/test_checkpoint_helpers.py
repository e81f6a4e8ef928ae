"""Checkpoint builders for the checkpoint tests (no tests here).

Everything here is independent of quantops' own quantizers and loaders:
- compressed-tensors checkpoints are made by the compressed-tensors library itself: `apply_quantization_config`,
  a min-max "observer" that calls its `calculate_qparams` / `generate_gparam` (as llm-compressor's observers
  do, sharing one NVFP4 global scale across q/k/v and across gate/up as llm-compressor does), then
  `ModelCompressor.compress_model` + `save_pretrained` + `update_config`. Its fake-quantized forward (before
  compression) is the logits reference, and its compressors' `decompress` the weight reference.
- ModelOpt checkpoints are written here from ModelOpt's formulas (FORMATS.md): FP8 per-tensor or per-channel
  scales amax/448, NVFP4 weight_scale_2 = amax/(6*448), block scales e4m3(amax_block / (6*weight_scale_2)),
  an FP4 encoder of its own (nearest, ties to the even code), input_scale = amax(x)/(6*448).
- GPTQ / AWQ tensors are packed with plain Python loops over known values.
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from compressed_tensors.compressors import BaseCompressor, ModelCompressor  # noqa: E402
from compressed_tensors.quantization import (  # noqa: E402
    QuantizationConfig,
    apply_quantization_config,
    preset_name_to_scheme,
)
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam  # noqa: E402
from compressed_tensors.utils import get_direct_state_dict  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

VOCAB = 256


def tiny_config(hidden=128, intermediate=256, layers=2, tie=False, vocab=VOCAB) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64, tie_word_embeddings=tie,
        initializer_range=0.05,
    )


def tiny_llama(seed=0, dtype=torch.bfloat16, **kw) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    # built in `dtype` as from_pretrained builds it: the RoPE buffer stays fp32 (a .to(bf16) would round it)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(**kw), dtype=dtype)
    return model.eval()


def input_ids(seed=1, batch=2, seq=12, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)


def fused_key(name: str) -> str:
    """q/k/v share one global scale, and gate/up (llm-compressor fuses them into one GEMM)."""
    for shard, fused in (("q_proj", "qkv"), ("k_proj", "qkv"), ("v_proj", "qkv"), ("gate_proj", "gate_up"),
                         ("up_proj", "gate_up")):
        if name.endswith(shard):
            return name[: -len(shard)] + fused
    return name


def input_ranges(model, ids, modules) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    ranges, hooks = {}, []
    for name, m in modules.items():
        def hook(mod, args, name=name):
            x = args[0].detach().float()
            lo, hi = x.amin(), x.amax()
            old = ranges.get(name)
            ranges[name] = (lo, hi) if old is None else (torch.minimum(old[0], lo), torch.maximum(old[1], hi))
        hooks.append(m.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return ranges


def _weight_minmax(w, args):
    n, k = w.shape
    if args.strategy == "tensor":
        return w.amin().reshape(1), w.amax().reshape(1)
    if args.strategy == "channel":
        return w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    if args.strategy in ("group", "tensor_group"):
        g = w.reshape(n, k // args.group_size, args.group_size)
        return g.amin(-1), g.amax(-1)
    bn, bk = args.block_structure
    p = F.pad(w, (0, -k % bk, 0, -n % bn))
    b = p.reshape(p.shape[0] // bn, bn, p.shape[1] // bk, bk)
    return b.amin((1, 3)), b.amax((1, 3))


def ct_calibrate(model, ids):
    """Min-max qparams for every module compressed-tensors marked, through its own calculate_qparams."""
    mods = {n: m for n, m in model.named_modules() if getattr(m, "quantization_scheme", None) is not None}
    for m in mods.values():
        m.quantization_enabled = False
    ranges = input_ranges(model, ids, mods)
    wmax: dict[str, torch.Tensor] = {}
    for n, m in mods.items():
        k = fused_key(n)
        wmax[k] = torch.maximum(wmax.get(k, torch.tensor(0.0)), m.weight.detach().float().abs().amax())
    for n, m in mods.items():
        s = m.quantization_scheme
        w = m.weight.detach()
        gs = None
        if s.weights.strategy == "tensor_group":
            amax = wmax[fused_key(n)]
            gs = generate_gparam(-amax, amax)
            m.weight_global_scale.data.copy_(gs)
        lo, hi = _weight_minmax(w, s.weights)
        scale, zp = calculate_qparams(lo, hi, s.weights, global_scale=gs)
        m.weight_scale.data = scale.to(m.weight_scale.dtype)
        if hasattr(m, "weight_zero_point"):
            m.weight_zero_point.data = zp.to(m.weight_zero_point.dtype)
        a = s.input_activations
        if a is not None and a.dynamic is False:
            lo, hi = ranges[n]
            sc, z = calculate_qparams(lo.reshape(1), hi.reshape(1), a)
            m.input_scale.data = sc.to(m.input_scale.dtype)
            if hasattr(m, "input_zero_point"):
                m.input_zero_point.data = z.to(m.input_zero_point.dtype)
        if a is not None and a.dynamic == "local":
            lo, hi = ranges[n]
            m.input_global_scale.data.copy_(generate_gparam(lo, hi))
        m.quantization_enabled = True


def make_ct_checkpoint(path, groups, ignore=("lm_head",), seed=0, **model_kw):
    """groups: a preset name, or {group name: QuantizationScheme}. Writes the checkpoint and returns
    (compressed-tensors' decompression of every quantized layer, ids, reference logits).

    The reference is compressed-tensors' own forward of the decompressed model in fp32 (its activations
    fake-quantized by compressed-tensors), with each weight decompressed from fp32 scales, so that it is the
    exact dequantized weight rather than that weight rounded to bf16."""
    model = tiny_llama(seed, **model_kw)
    if isinstance(groups, str):
        groups = {"group_0": preset_name_to_scheme(groups, ["Linear"])}
    apply_quantization_config(model, QuantizationConfig(config_groups=groups, ignore=list(ignore)), show_progress=False)
    ids = input_ids()
    ct_calibrate(model, ids)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(str(path))
    compressor.update_config(str(path))
    weights, exact = {}, {}
    for name, m in model.named_modules():
        if getattr(m, "quantization_scheme", None) is not None:
            sd = get_direct_state_dict(m)
            weights[name] = ct_decompress(sd, m.quantization_scheme)
            exact[name] = ct_decompress_fp32(sd, m.quantization_scheme)
    compressor.decompress_model(model)
    model.float()
    for name, w in exact.items():
        model.get_submodule(name).weight.data = w
    with torch.no_grad():
        ref = model(ids).logits.float()
    return weights, ids, ref


def ct_decompress(state_dict: dict, scheme) -> torch.Tensor:
    """compressed-tensors' own decompression of one layer's tensors."""
    fmt = scheme.format.value if hasattr(scheme.format, "value") else scheme.format
    return BaseCompressor.get_value_from_registry(fmt).decompress(dict(state_dict), scheme)["weight"]


def ct_decompress_fp32(sd: dict, scheme) -> torch.Tensor:
    """compressed-tensors' dequantization of one layer computed and returned in fp32 (its compressors round
    FP4 and MX weights to bf16; the same functions with fp32 operands give the exact values)."""
    from compressed_tensors.compressors.mx_utils import decompress_mx_scale
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    fmt = scheme.format.value if hasattr(scheme.format, "value") else scheme.format
    if fmt in ("nvfp4-pack-quantized", "mxfp4-pack-quantized", "mxfp8-quantized"):
        if fmt == "mxfp8-quantized":
            q = sd["weight"]
        else:
            p = sd["weight_packed"]
            q = unpack_fp4_from_uint8(p, p.shape[0], p.shape[1] * 2, dtype=torch.float32)
        scale = sd["weight_scale"]
        scale = decompress_mx_scale(scale).float() if scale.dtype == torch.uint8 else scale.float()
        return dequantize(x_q=q, scale=scale, args=scheme.weights, global_scale=sd.get("weight_global_scale"),
                          dtype=torch.float32)
    sd32 = {k: (v.float() if v is not None and v.dtype in (torch.bfloat16, torch.float16) else v) for k, v in sd.items()}
    return ct_decompress(sd32, scheme).float()


# -- ModelOpt ------------------------------------------------------------------------------------------

FP4_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def fp4_codes(x: torch.Tensor) -> torch.Tensor:
    """Nearest E2M1 code (ties to the even code index), saturating; sign in bit 3."""
    d = (x.abs().unsqueeze(-1) - FP4_GRID).abs() + (torch.arange(8) % 2) * 1e-9
    idx = d.argmin(-1).to(torch.uint8)
    return idx | ((x < 0).to(torch.uint8) << 3)


def fp4_values(codes: torch.Tensor) -> torch.Tensor:
    v = FP4_GRID[(codes & 7).long()]
    return torch.where((codes & 8) > 0, -v, v)


def modelopt_nvfp4(w: torch.Tensor, ws2: torch.Tensor):
    """ModelOpt NVFP4 weight export: (packed uint8 [N, K/2], e4m3 block scales [N, K/16])."""
    n, k = w.shape
    blocks = w.float().reshape(n, k // 16, 16)
    sf = blocks.abs().amax(-1) / (6.0 * ws2)
    sf = torch.where(sf == 0, torch.ones_like(sf), sf).clamp(max=448).to(torch.float8_e4m3fn)
    codes = fp4_codes(blocks / (sf.float() * ws2).unsqueeze(-1)).reshape(n, k)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed, sf


def modelopt_dequant(t: dict, algo: str) -> torch.Tensor:
    """ModelOpt's own dequantization of one layer (fp32)."""
    if algo in ("NVFP4", "W4A16_NVFP4"):
        p = t["weight"]
        codes = torch.stack([p & 0xF, p >> 4], -1).reshape(p.shape[0], -1)
        sf = t["weight_scale"].float().repeat_interleave(16, 1)
        return fp4_values(codes) * sf * t["weight_scale_2"].float()
    ws = t["weight_scale"].float()
    return t["weight"].float() * (ws.reshape(-1, 1) if ws.dim() == 1 else ws)


def modelopt_fake_quant_input(x: torch.Tensor, algo: str, t: dict) -> torch.Tensor:
    """ModelOpt activation fake-quantization (fp32)."""
    xf = x.float()
    if algo == "FP8":
        s = t["input_scale"].float()
        return (xf / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s
    if algo == "FP8_PER_CHANNEL_PER_TOKEN":
        s = xf.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 448
        return (xf / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s
    if algo == "NVFP4":
        g = t["input_scale"].float()
        shape = xf.shape
        b = xf.reshape(-1, shape[-1] // 16, 16)
        sf = (b.abs().amax(-1) / (6.0 * g)).clamp(max=448).to(torch.float8_e4m3fn).float()
        sf = torch.where(sf == 0, torch.ones_like(sf), sf)
        q = fp4_values(fp4_codes(b / (sf * g).unsqueeze(-1)))
        return (q * (sf * g).unsqueeze(-1)).reshape(shape)
    return xf


class FakeQuantLinear(nn.Module):
    def __init__(self, w, algo, t, bias=None):
        super().__init__()
        self.w, self.algo, self.t, self.b = w, algo, t, bias

    def forward(self, x):
        y = F.linear(modelopt_fake_quant_input(x, self.algo, self.t), self.w.float())
        return y.to(x.dtype)


def write_modelopt_checkpoint(path, algo, exclude=("lm_head",), style="hf_quant_config", seed=0, **model_kw):
    """A ModelOpt-layout checkpoint of a tiny Llama. Returns (dict layer -> its ModelOpt tensors, ids,
    reference logits of the ModelOpt fake-quantized model)."""
    path = Path(path)
    model = tiny_llama(seed, **model_kw)
    ids = input_ids()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)
               and not any(n == p or fnmatch.fnmatchcase(n, p) for p in exclude)}
    ranges = input_ranges(model, ids, linears)
    ws2 = {}
    for n, m in linears.items():
        k = fused_key(n)
        amax = m.weight.detach().float().abs().amax() / (6.0 * 448.0)
        ws2[k] = torch.maximum(ws2.get(k, torch.tensor(0.0)), amax)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    layers = {}
    for n, m in linears.items():
        w = m.weight.detach().float()
        amax_in = torch.maximum(-ranges[n][0], ranges[n][1])
        t = {}
        if algo == "FP8":
            t["weight_scale"] = (w.abs().amax() / 448.0).reshape(())
            t["weight"] = (w / t["weight_scale"]).clamp(-448, 448).to(torch.float8_e4m3fn)
            t["input_scale"] = (amax_in / 448.0).reshape(())
        elif algo == "FP8_PER_CHANNEL_PER_TOKEN":
            t["weight_scale"] = w.abs().amax(1) / 448.0
            t["weight"] = (w / t["weight_scale"][:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
        else:
            t["weight_scale_2"] = ws2[fused_key(n)].clone().reshape(())
            t["weight"], t["weight_scale"] = modelopt_nvfp4(w, t["weight_scale_2"])
            if algo == "NVFP4":
                t["input_scale"] = (amax_in / (6.0 * 448.0)).reshape(())
        del state[f"{n}.weight"]
        state.update({f"{n}.{k}": v for k, v in t.items()})
        layers[n] = t
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads(model.config.to_json_string())
    q = {"quant_algo": algo, "kv_cache_quant_algo": None, "exclude_modules": list(exclude)}
    if "NVFP4" in algo:
        q["group_size"] = 16
    if style == "hf_quant_config":
        (path / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt", "version": "0.29.0"},
                                                               "quantization": q}))
    else:
        config["quantization_config"] = {"quant_method": "modelopt", "quant_algo": algo,
                                         "ignore": list(exclude), **({"group_size": 16} if "NVFP4" in algo else {})}
    (path / "config.json").write_text(json.dumps(config))
    # reference, in fp32: the model with ModelOpt-dequantized weights and fake-quantized activations
    model.float()
    for n, t in layers.items():
        parent, _, child = n.rpartition(".")
        setattr(model.get_submodule(parent), child, FakeQuantLinear(modelopt_dequant(t, algo), algo, t))
    with torch.no_grad():
        ref = model(ids).logits.float()
    return layers, ids, ref


# -- GPTQ / AWQ packing, element by element ------------------------------------------------------------


def _to_int32(words: list[list[int]]) -> torch.Tensor:
    return torch.tensor([[w - (1 << 32) if w >= (1 << 31) else w for w in row] for row in words], dtype=torch.int32)


def pack_dim0(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned [R, C] -> int32 [R*bits/32, C]: element r of a column in bits bits*(r mod per) of word r/per."""
    per = 32 // bits
    v = values.tolist()
    rows, cols = len(v), len(v[0])
    words = [[0] * cols for _ in range(math.ceil(rows / per))]
    for r in range(rows):
        for c in range(cols):
            words[r // per][c] |= v[r][c] << (bits * (r % per))
    return _to_int32(words)


def pack_dim1(values: torch.Tensor, bits: int, order=None) -> torch.Tensor:
    """Unsigned [R, C] -> int32 [R, C*bits/32] packed along dim 1; nibble i of a word holds element order[i]."""
    per = 32 // bits
    order = order or list(range(per))
    v = values.tolist()
    words = []
    for row in v:
        out = []
        for j in range(len(row) // per):
            w = 0
            for i in range(per):
                w |= row[j * per + order[i]] << (bits * i)
            out.append(w)
        words.append(out)
    return _to_int32(words)
