"""save_pretrained: a model with QuantizedLinear layers -> a compressed-tensors checkpoint directory.

QuantizedLinear keeps its tensors under compressed-tensors names in the canonical layout, so the state dict
is the checkpoint; config.json gets a compressed-tensors `quantization_config` (one config group per scheme,
targets ["Linear"] with an ignore list when the whole model has one scheme, exact layer names otherwise).
compressed-tensors (and so transformers and vLLM) decompresses the tensors to exactly QuantizedLinear's
dequantize(). Files are written under a temporary name and renamed, so a model loaded from the same directory
(whose tensors are views of the old, memory-mapped files) keeps working while it is overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from ..modules import QuantizedLinear
from .compressed_tensors import config_group_from_scheme

TOKENIZER_FILES = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\.(json|txt)|merges\.txt|"
    r"chat_template\.(jinja|json)|generation_config\.json|preprocessor_config\.json)$"
)


def quantization_config(model: nn.Module) -> dict | None:
    """The compressed-tensors quantization_config describing the model's QuantizedLinear layers (None if it
    has none)."""
    by_scheme: dict[str, tuple] = {}
    float_linears = []
    for name, m in model.named_modules():
        if isinstance(m, QuantizedLinear):
            by_scheme.setdefault(m.scheme.key(), (m.scheme, []))[1].append(name)
        elif isinstance(m, nn.Linear):
            float_linears.append(name)
    if not by_scheme:
        return None
    if len(by_scheme) == 1:
        (scheme, _), = by_scheme.values()
        groups = {"group_0": config_group_from_scheme(scheme, ["Linear"])}
    else:
        groups = {f"group_{i}": config_group_from_scheme(s, names) for i, (s, names) in enumerate(by_scheme.values())}
    fmts = {g["format"] for g in groups.values()}
    return {
        "quant_method": "compressed-tensors",
        "format": fmts.pop() if len(fmts) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": float_linears,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
    }


def _config_dict(model: nn.Module) -> dict:
    cfg = getattr(model, "config", None)
    if hasattr(cfg, "to_json_string"):  # a transformers config
        d = json.loads(cfg.to_json_string(use_diff=True))
        if hasattr(type(model), "_from_config"):  # a transformers model: name its class, as transformers does
            d["architectures"] = [type(model).__name__]
    elif dataclasses.is_dataclass(cfg):
        d = dataclasses.asdict(cfg)
    else:
        d = {}
    d.pop("quantization_config", None)
    return d


def _parse_size(size) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", str(size), re.I)
    if not m:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or a size like '5GB'")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * mult)


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on the CPU, each storage once: aliases (tied embeddings) keep their first name, which the
    loaders re-tie from the config."""
    seen: dict[tuple, str] = {}
    out: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict(keep_vars=False).items():
        sig = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride())) if t.numel() else None
        if sig is not None and sig in seen:
            continue
        if sig is not None:
            seen[sig] = key
        out[key] = t.detach().to("cpu").contiguous()
    # tensors that share a storage without being the same tensor (mmap-loaded .bin files) are copied, which
    # safetensors requires
    storages: dict[int, int] = {}
    for t in out.values():
        if t.numel():
            storages[t.untyped_storage().data_ptr()] = storages.get(t.untyped_storage().data_ptr(), 0) + 1
    return {k: (t.clone() if t.numel() and storages[t.untyped_storage().data_ptr()] > 1 else t) for k, t in out.items()}


def _write_atomic(path: Path, write):
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_pretrained(model: nn.Module, path, *, max_shard_size="5GB") -> Path:
    """Write `model` to the directory `path` as a compressed-tensors checkpoint: config.json with its
    quantization_config, safetensors shards (model.safetensors, or model-0000i-of-0000n.safetensors with an
    index) and, for a model loaded by quantops.load_pretrained, the source directory's tokenizer files."""
    from safetensors.torch import save_file

    path = Path(os.fspath(path))
    path.mkdir(parents=True, exist_ok=True)
    limit = _parse_size(max_shard_size)
    tensors = _tensors(model)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards):
        _write_atomic(path / name, lambda p, shard=shard: save_file(shard, str(p), metadata={"format": "pt"}))
    written = set(names)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {key: name for name, shard in zip(names, shards) for key in shard}}
        _write_atomic(path / "model.safetensors.index.json",
                      lambda p: p.write_text(json.dumps(index, indent=2, sort_keys=True)))
        written.add("model.safetensors.index.json")
    # files of an older checkpoint in this directory would contradict the new one
    stale = [path / "model.safetensors.index.json", path / "hf_quant_config.json"]
    for old in list(path.glob("model*.safetensors")) + stale:
        if old.exists() and old.name not in written:
            old.unlink()

    config = _config_dict(model)
    qcfg = quantization_config(model)
    if qcfg is not None:
        config["quantization_config"] = qcfg
    _write_atomic(path / "config.json", lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))

    source = getattr(model, "quantops_source", {}).get("path")
    if source and Path(source).resolve() != path.resolve():
        for f in Path(source).iterdir():
            if f.is_file() and TOKENIZER_FILES.match(f.name):
                shutil.copyfile(f, path / f.name)
    elif getattr(model, "generation_config", None) is not None and hasattr(model.generation_config, "save_pretrained"):
        try:
            model.generation_config.save_pretrained(str(path))
        except Exception:  # a generation config is optional; never fail a save over it
            pass
    return path
