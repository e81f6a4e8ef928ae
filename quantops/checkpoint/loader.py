"""load_pretrained: a local Hugging Face model directory -> a transformers model with QuantizedLinear layers.

The model is built with its parameters on the meta device (buffers such as RoPE tables are computed as usual),
then filled from memory-mapped safetensors shards: every quantized linear becomes a QuantizedLinear that holds
the checkpoint's tensors in the canonical layout, every other parameter takes its checkpoint tensor. The float
model is never materialised; on the CPU the tensors stay views of the mapped files (their pages are read on
first use), so peak host memory is about the checkpoint's size. Nothing is unpickled: safetensors only, and a
`pytorch_model.bin` is read with torch.load(weights_only=True).

Every quantized layer's tensors are checked (names, shapes, dtypes, NaN/Inf scales, weight_shape against the
layer) before any kernel runs, and a problem raises CheckpointError naming the layer, the tensor and what was
expected.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import formats
from ..modules import QuantizedLinear
from ..schemes import get_scheme
from . import compressed_tensors as ct
from . import legacy, modelopt
from .errors import CheckpointError

SUPPORTED_METHODS = ("compressed-tensors", "modelopt", "gptq", "awq")


def _transformers():
    try:
        import transformers
    except ImportError as e:  # the `hf` extra
        raise ImportError("quantops.load_pretrained needs transformers: pip install 'quantops[hf]'") from e
    return transformers


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


# -- the checkpoint's tensors ------------------------------------------------------------------------


class Shards:
    """Every tensor of a checkpoint directory, by name, read lazily from memory-mapped safetensors files."""

    def __init__(self, path: Path):
        self._stack = contextlib.ExitStack()
        self._files: dict[str, object] = {}
        self.where: dict[str, str] = {}  # tensor name -> file name
        self._bin: dict[str, torch.Tensor] | None = None
        index = path / "model.safetensors.index.json"
        if index.exists():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no weight_map")
            files = sorted(set(weight_map.values()))
        elif (path / "model.safetensors").exists():
            files, weight_map = ["model.safetensors"], None
        else:
            files, weight_map = sorted(p.name for p in path.glob("*.safetensors")), None
        if files:
            from safetensors import safe_open

            for name in files:
                if not (path / name).exists():
                    raise CheckpointError(f"{index}: names shard {name}, which is not in {path}")
                f = self._stack.enter_context(safe_open(str(path / name), framework="pt", device="cpu"))
                self._files[name] = f
                for key in f.keys():
                    if key in self.where:
                        raise CheckpointError(f"{path}: tensor {key} is in both {self.where[key]} and {name}")
                    self.where[key] = name
            if weight_map is not None:
                for key, name in weight_map.items():
                    if self.where.get(key) != name:
                        raise CheckpointError(f"{index}: says {key} is in {name}, but that shard has no such tensor")
            return
        bins = sorted(path.glob("pytorch_model*.bin"))
        if not bins:
            raise CheckpointError(f"{path}: no model.safetensors, safetensors shards or pytorch_model.bin")
        self._bin = {}
        for b in bins:  # never unpickle arbitrary objects: tensors only, memory-mapped
            try:
                sd = torch.load(b, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise CheckpointError(f"{b}: not a plain tensor file (quantops unpickles nothing but tensors; "
                                      f"convert it to safetensors): {type(e).__name__}: {str(e)[:200]}") from None
            if not isinstance(sd, dict) or not all(isinstance(t, torch.Tensor) for t in sd.values()):
                raise CheckpointError(f"{b}: expected a dict of tensors")
            for key, t in sd.items():
                self._bin[key] = t
                self.where[key] = b.name

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def keys(self):
        return self.where.keys()

    def get(self, key: str) -> torch.Tensor:
        if self._bin is not None:
            return self._bin[key]
        return self._files[self.where[key]].get_tensor(key)

    def close(self):
        self._stack.close()


def _by_module(keys) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key in keys:
        mod, _, local = key.rpartition(".")
        out.setdefault(mod, {})[local] = key
    return out


# -- what the checkpoint's quantization config says ---------------------------------------------------


class _Handler:
    """One checkpoint convention: which linear layers are quantized and how their tensors become canonical."""

    method = "none"

    def layer(self, name: str, module: nn.Module, local: dict[str, str]) -> object | None:
        return None  # float

    def convert(self, info, raw, n, k, where):
        raise NotImplementedError


class _CompressedTensors(_Handler):
    method = "compressed-tensors"

    def __init__(self, qcfg):
        self.cfg = ct.parse_config(qcfg)
        if self.cfg.version == "0.13.0" and any(g.scheme.weight in ("mxfp4", "mxfp8") for g in self.cfg.groups):
            warnings.warn("compressed-tensors 0.13.0 wrote MX scale exponents 2 too low: check this checkpoint's "
                          "outputs against its float model", stacklevel=3)

    def layer(self, name, module, local):
        return self.cfg.scheme_for(name, module)

    def convert(self, group, raw, n, k, where):
        t, unused = ct.to_canonical(raw, group, n, k, where)
        scheme = group.scheme
        # a weight_g_idx makes the layer act-order whatever the config's actorder says
        if "weight_g_idx" in t and not scheme.actorder and scheme.weight_strategy == "group":
            scheme = scheme.replace(actorder=True)
        return scheme, t, unused


class _ModelOpt(_Handler):
    method = "modelopt"

    def __init__(self, cfg, source):
        self.cfg = modelopt.parse_config(cfg, source)

    def layer(self, name, module, local):
        algo = self.cfg.algo_for(name)
        if algo is None:
            return None
        if "weight" in local and not ({"weight_scale", "weight_scale_2", "input_scale"} & set(local)):
            # older ModelOpt versions left some layers (vision towers) in float without listing them
            return "float-unlisted"
        return algo

    def convert(self, algo, raw, n, k, where):
        t, unused = modelopt.to_canonical(raw, algo, n, k, where)
        return get_scheme(modelopt.ALGOS[algo]), t, unused


class _Legacy(_Handler):
    def __init__(self, qcfg):
        self.cfg = legacy.parse_config(qcfg)
        self.method = self.cfg.method

    def layer(self, name, module, local):
        return self.cfg if "qweight" in local else None

    def convert(self, cfg, raw, n, k, where):
        fn = legacy.gptq_to_canonical if cfg.method == "gptq" else legacy.awq_to_canonical
        return fn(raw, cfg, n, k, where)


def _handler(path: Path, config: dict) -> _Handler:
    qcfg = config.get("quantization_config")
    method = str((qcfg or {}).get("quant_method", "")).lower()
    if qcfg is not None and not isinstance(qcfg, dict):
        raise CheckpointError(f"{path / 'config.json'}: quantization_config must be an object")
    if method.startswith("modelopt"):
        return _ModelOpt(qcfg, f"{path / 'config.json'}: quantization_config")
    if (path / "hf_quant_config.json").exists() and not method:
        return _ModelOpt(_read_json(path / "hf_quant_config.json"), str(path / "hf_quant_config.json"))
    if method == "compressed-tensors":
        return _CompressedTensors(qcfg)
    if method in ("gptq", "awq"):
        return _Legacy(qcfg)
    if qcfg is None:
        return _Handler()  # a float model
    raise CheckpointError(f"{path / 'config.json'}: quantization_config.quant_method {qcfg.get('quant_method')!r} "
                          f"is not supported; supported: {', '.join(SUPPORTED_METHODS)}")


# -- building the model -------------------------------------------------------------------------------


@contextlib.contextmanager
def _parameters_on_meta():
    """Every parameter registered inside goes to the meta device; buffers are created as usual (so RoPE tables
    and other non-persistent buffers hold their real values)."""
    register = nn.Module.register_parameter

    def register_on_meta(self, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _float_dtype(dtype):
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""), None)
    ok = isinstance(dtype, torch.dtype) and dtype in (torch.bfloat16, torch.float16, torch.float32)
    return dtype if ok else None


def _resolve_dtype(dtype, config) -> torch.dtype:
    """The model (activation) dtype: the argument, else the config's, else bfloat16."""
    if dtype is not None:
        if _float_dtype(dtype) is None:
            raise ValueError(f"dtype must be torch.bfloat16, torch.float16 or torch.float32, got {dtype!r}")
        return _float_dtype(dtype)
    return _float_dtype(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)) or torch.bfloat16


def _build(transformers, config, dtype):
    cls = None
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            break
    with _parameters_on_meta():
        if cls is not None:
            return cls._from_config(config, dtype=dtype)
        try:
            return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
        except ValueError:
            return transformers.AutoModel.from_config(config, dtype=dtype)


def _set_module(root: nn.Module, path: str, new: nn.Module):
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def _float_tensor(t: torch.Tensor, like: torch.Tensor, key: str) -> torch.Tensor:
    if tuple(t.shape) != tuple(like.shape):
        raise CheckpointError(f"{key} has shape {tuple(t.shape)}, expected {tuple(like.shape)}")
    if like.is_floating_point() and (not t.is_floating_point() or t.dtype == formats.elements.FP8):
        raise CheckpointError(f"{key} has dtype {t.dtype}, expected a float tensor ({like.dtype}); if this layer is "
                              "quantized, the checkpoint's quantization config does not say so")
    return t.to(like.dtype) if like.is_floating_point() else t


# -- the loader ---------------------------------------------------------------------------------------


def load_pretrained(path, *, device=None, dtype=None) -> nn.Module:
    """Load a local Hugging Face model directory (compressed-tensors, ModelOpt, GPTQ or AWQ checkpoint, or a
    float model) as a transformers model whose quantized linear layers are QuantizedLinear modules.

    device: where the tensors go (default CPU, where they stay memory-mapped views of the files).
    dtype: the activation/model dtype (default: the config's dtype, else bfloat16); quantized tensors keep
    their checkpoint dtypes.
    """
    path = Path(os.fspath(path))
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a model directory (no config.json)")
    transformers = _transformers()
    raw_config = _read_json(path / "config.json")
    handler = _handler(path, raw_config)
    config = transformers.AutoConfig.from_pretrained(str(path))
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # quantops, not a transformers quantizer, handles it
    shards = Shards(path)
    try:
        dtype = _resolve_dtype(dtype, config)
        model = _build(transformers, config, dtype)
        model = _fill(model, shards, handler, device, dtype)
    finally:
        shards.close()
    if (path / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(str(path))
    model.eval()
    model.quantops_source = {"path": str(path), "method": handler.method}
    return model


def _fill(model, shards: Shards, handler: _Handler, device, dtype) -> nn.Module:
    by_module = _by_module(shards.keys())
    used: set[str] = set()
    unused_in_layers: dict[str, list[str]] = {}
    move = (lambda t: t) if device is None else (lambda t: t.to(device))

    # 1. quantized linear layers
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear) or isinstance(mod, QuantizedLinear):
            continue
        local = by_module.get(name, {})
        info = handler.layer(name, mod, local)
        if info is None:
            continue
        if info == "float-unlisted":
            warnings.warn(f"{name}: not excluded by the ModelOpt config but stored in float; loading it as float",
                          stacklevel=3)
            continue
        n, k = mod.out_features, mod.in_features
        if not local:
            raise CheckpointError(f"{name}: the quantization config quantizes this layer, but the checkpoint has no "
                                  f"tensors {name}.*")
        raw = {ln: shards.get(key) for ln, key in local.items()}
        scheme, tensors, unused = handler.convert(info, raw, n, k, name)
        bias = tensors.pop("bias", None)
        if bias is not None and mod.bias is None and not bool(bias.any()):
            bias = None  # GPTQ/AWQ writers save a zero bias for layers that have none
        if mod.bias is not None and bias is None:
            raise CheckpointError(f"{name}: missing bias ({n},)")
        if bias is not None and tuple(bias.shape) != (n,):
            raise CheckpointError(f"{name}: bias has shape {tuple(bias.shape)}, expected ({n},)")
        formats.validate_tensors(tensors, scheme, n, k, where=name)
        q = QuantizedLinear.from_tensors({t: move(v) for t, v in tensors.items()}, scheme,
                                         bias=None if bias is None else move(bias.to(dtype)), dtype=dtype, name=name)
        _set_module(model, name, q)
        used.update(local.values())
        if unused:
            unused_in_layers[name] = unused

    # 2. everything else: parameters (shared ones once, under every alias) and persistent buffers
    aliases: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for mname, mod in model.named_modules():
        if isinstance(mod, QuantizedLinear):
            continue
        for pname, p in mod._parameters.items():
            if p is not None and p.device.type == "meta":
                key = f"{mname}.{pname}" if mname else pname
                aliases.setdefault(id(p), []).append((mod, pname, key))
        for bname, b in list(mod._buffers.items()):
            if b is None:
                continue
            key = f"{mname}.{bname}" if mname else bname
            if bname not in mod._non_persistent_buffers_set and key in shards:
                mod._buffers[bname] = move(_float_tensor(shards.get(key), b, key))
                used.add(key)
            else:  # computed at construction (RoPE tables): only moved
                mod._buffers[bname] = move(b)
    missing = []
    for group in aliases.values():
        mod0, pname0, _ = group[0]
        like = mod0._parameters[pname0]
        found = [key for _, _, key in group if key in shards]
        if not found:
            missing.append(f"{group[0][2]} {tuple(like.shape)}")
            continue
        t = move(_float_tensor(shards.get(found[0]), like, found[0]))
        param = nn.Parameter(t, requires_grad=False)
        for mod, pname, _ in group:
            mod._parameters[pname] = param
        used.add(found[0])
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise CheckpointError(f"checkpoint has no tensor for {', '.join(missing[:8])}{more}")

    left = sorted(set(shards.keys()) - used)
    if left or unused_in_layers:
        parts = []
        if left:
            parts.append(f"{len(left)} checkpoint tensors belong to no parameter: {', '.join(left[:6])}"
                         + (" ..." if len(left) > 6 else ""))
        if unused_in_layers:
            some = list(unused_in_layers.items())[:3]
            parts.append("tensors quantops does not use (KV-cache/output/dynamic-activation scales): "
                         + "; ".join(f"{n}: {', '.join(u)}" for n, u in some)
                         + (" ..." if len(unused_in_layers) > 3 else ""))
        warnings.warn("quantops.load_pretrained: " + ". ".join(parts), stacklevel=3)
    return model
