"""NVIDIA ModelOpt checkpoints (`hf_quant_config.json`, or config.json's quantization_config with quant_method
"modelopt") -> canonical tensors.

Per linear layer, by `quant_algo`:
- FP8: `weight` e4m3 [N, K], `weight_scale` fp32 scalar (w = q * weight_scale), `input_scale` fp32 scalar
  (static per-tensor activations) -> FP8.
- FP8_PER_CHANNEL_PER_TOKEN: `weight_scale` fp32 [N] -> FP8_DYNAMIC (per-token dynamic activations).
- FP8_PB_WO: `weight_scale` fp32 [N/128, 1, K/128, 1] -> FP8_BLOCK (run with per-token-group activations).
- NVFP4 / W4A16_NVFP4: `weight` uint8 [N, K/2] (same bytes as compressed-tensors' weight_packed),
  `weight_scale` e4m3 [N, K/16], `weight_scale_2` fp32 scalar = amax(W)/(6*448) and (NVFP4) `input_scale`
  = amax(x)/(6*448). compressed-tensors' global scales are the reciprocals: weight_global_scale =
  1/weight_scale_2 and input_global_scale = 1/input_scale (the conversion compressed-tensors' own
  ModelOpt converter makes) -> NVFP4 / NVFP4A16.
- MIXED_PRECISION: a `quantized_layers` map names each layer's quant_algo.
Excluded modules are fnmatch wildcards ("lm_head", "model.layers.0.mlp*").
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from ..formats.elements import FP8
from ..schemes import QuantScheme, get_scheme
from .errors import CheckpointError

ALGOS: dict[str, str] = {
    "FP8": "FP8",
    "FP8_PER_CHANNEL_PER_TOKEN": "FP8_DYNAMIC",
    "FP8_PB_WO": "FP8_BLOCK",
    "NVFP4": "NVFP4",
    "W4A16_NVFP4": "NVFP4A16",
}
UNUSED_TENSORS = ("k_scale", "v_scale", "output_scale")


@dataclass
class ModelOptConfig:
    algo: str | None  # one algo for every quantized layer, or None with `layers`
    exclude: list[str] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=dict)  # MIXED_PRECISION: module name -> algo
    group_size: int | None = None

    def algo_for(self, name: str) -> str | None:
        if self.layers:
            return self.layers.get(name)
        if any(name == p or fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return None
        return self.algo

    def scheme_for(self, name: str, module: nn.Module) -> QuantScheme | None:
        algo = self.algo_for(name)
        return None if algo is None else get_scheme(ALGOS[algo])


def _algo(value, where) -> str:
    algo = str(value or "").upper()
    if algo not in ALGOS:
        raise CheckpointError(f"{where}: quant_algo {value!r} is not supported; supported: {', '.join(ALGOS)}")
    return algo


def parse_config(cfg: dict, source: str) -> ModelOptConfig:
    """`hf_quant_config.json` ({"producer": ..., "quantization": {...}}) or config.json's quantization_config
    ({"quant_method": "modelopt", "quant_algo": ..., "ignore"/"exclude_modules": ...})."""
    q = cfg.get("quantization", cfg)
    if not isinstance(q, dict):
        raise CheckpointError(f"{source}: 'quantization' must be an object")
    group_size = q.get("group_size")
    if group_size not in (None, 16) and str(q.get("quant_algo", "")).upper() in ("NVFP4", "W4A16_NVFP4"):
        raise CheckpointError(f"{source}: NVFP4 uses groups of 16, got group_size {group_size}")
    raw_algo = q.get("quant_algo")
    exclude = list(q.get("exclude_modules") or q.get("ignore") or [])
    if str(raw_algo or "").upper() == "MIXED_PRECISION":
        layers = q.get("quantized_layers") or {}
        if not layers:
            raise CheckpointError(f"{source}: MIXED_PRECISION without quantized_layers")
        return ModelOptConfig(None, exclude, {name: _algo(v.get("quant_algo"), f"{source}: quantized_layers.{name}")
                                              for name, v in layers.items()}, group_size)
    return ModelOptConfig(_algo(raw_algo, source), exclude, {}, group_size)


def _scalar(t: torch.Tensor, name: str, where: str) -> torch.Tensor:
    if t.numel() != 1:
        raise CheckpointError(f"{where}: {name} has shape {tuple(t.shape)}, expected a scalar (per-tensor scale)")
    if not t.is_floating_point() or t.dtype == FP8:
        raise CheckpointError(f"{where}: {name} has dtype {t.dtype}, expected a float scale")
    v = t.float().reshape(1)
    if not bool(torch.isfinite(v).all()) or not bool((v > 0).all()):
        raise CheckpointError(f"{where}: {name} is {v.item()!r}, expected a finite positive scale")
    return v


def _require(raw, names, where, algo):
    missing = [n for n in names if n not in raw]
    if missing:
        raise CheckpointError(f"{where}: missing {', '.join(missing)} for ModelOpt {algo}")


def to_canonical(raw: dict[str, torch.Tensor], algo: str, n: int, k: int, where: str):
    """A layer's ModelOpt tensors (local names) -> (canonical tensors, unused tensor names)."""
    t = dict(raw)
    unused = [name for name in UNUSED_TENSORS if t.pop(name, None) is not None]
    out: dict[str, torch.Tensor] = {}
    if "bias" in t:
        out["bias"] = t.pop("bias")
    if algo in ("FP8", "FP8_PER_CHANNEL_PER_TOKEN", "FP8_PB_WO"):
        _require(t, ["weight", "weight_scale"] + (["input_scale"] if algo == "FP8" else []), where, algo)
        out["weight"] = t.pop("weight")
        ws = t.pop("weight_scale")
        if algo == "FP8":
            out["weight_scale"] = _scalar(ws, "weight_scale", where)
            out["input_scale"] = _scalar(t.pop("input_scale"), "input_scale", where)
        elif algo == "FP8_PER_CHANNEL_PER_TOKEN":
            if ws.numel() != n:
                raise CheckpointError(f"{where}: weight_scale has shape {tuple(ws.shape)}, expected ({n},) "
                                      "(one scale per output channel)")
            out["weight_scale"] = ws.reshape(n, 1)
        else:
            nb, kb = -(-n // 128), -(-k // 128)
            if ws.numel() != nb * kb:
                raise CheckpointError(f"{where}: weight_scale has shape {tuple(ws.shape)}, expected ({nb}, 1, {kb}, 1) "
                                      "(128x128 blocks)")
            out["weight_scale"] = ws.reshape(nb, kb)
        if "input_scale" in t:  # dynamic activations: a calibrated input_scale is not used
            unused.append("input_scale")
            t.pop("input_scale")
    elif algo in ("NVFP4", "W4A16_NVFP4"):
        _require(t, ["weight", "weight_scale", "weight_scale_2"] + (["input_scale"] if algo == "NVFP4" else []),
                 where, algo)
        w = t.pop("weight")
        if w.dtype != torch.uint8:
            raise CheckpointError(f"{where}: weight has dtype {w.dtype}, expected torch.uint8 (two FP4 values a byte) "
                                  f"for ModelOpt {algo}")
        out["weight_packed"] = w
        out["weight_scale"] = t.pop("weight_scale")
        # 1/x in fp32, exactly as compressed-tensors' ModelOpt converter computes the global scales
        out["weight_global_scale"] = 1 / _scalar(t.pop("weight_scale_2"), "weight_scale_2", where)
        if algo == "NVFP4":
            out["input_global_scale"] = 1 / _scalar(t.pop("input_scale"), "input_scale", where)
        elif "input_scale" in t:
            unused.append("input_scale")
            t.pop("input_scale")
    else:  # parse_config admits only ALGOS
        raise CheckpointError(f"{where}: quant_algo {algo!r} is not supported")
    if t:
        raise CheckpointError(f"{where}: unexpected tensors {', '.join(sorted(t))} for ModelOpt {algo}")
    return out, unused
