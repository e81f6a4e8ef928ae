"""compressed-tensors `quantization_config` <-> QuantScheme, module matching, and tensor layouts.

A config group's `weights` / `input_activations` arguments map to one QuantScheme: the preset it equals, or
the nearest preset with `.replace(...)` (group sizes, strategies, symmetric, act-order, static or dynamic
activations). Targets and `ignore` entries match as compressed-tensors matches them: an exact module name,
a "re:" regex (re.match, from the start of the name) or a module class name ("Linear"). When several groups
target one module, exact names win over regexes, and regexes over class names.

This module needs no compressed-tensors install: loading is plain JSON and safetensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import formats
from ..formats import elements
from ..schemes import PRESETS, QuantScheme, get_scheme
from .errors import CheckpointError

# Formats whose tensors quantops reads. `naive-quantized` stores the weight in its quantized dtype with its
# scales, like float-/int-quantized.
KNOWN_FORMATS = (
    "float-quantized",
    "int-quantized",
    "naive-quantized",
    "pack-quantized",
    "nvfp4-pack-quantized",
    "mxfp4-pack-quantized",
    "mxfp8-quantized",
)
UNSUPPORTED_FORMATS = {
    "dense": "weights stored unquantized (fake-quantized floats); quantize them with quantops.quantize_model instead",
    "sparse-bitmask": "sparse formats are not supported",
    "sparse-24-bitmask": "sparse formats are not supported",
    "marlin-24": "sparse formats are not supported",
    "mxfp6-pack-quantized": "MXFP6 has no quantops scheme",
}
# tensors a quantized layer may carry that quantops does not use (KV-cache and output quantization)
UNUSED_TENSORS = ("k_scale", "v_scale", "q_scale", "prob_scale", "output_scale", "output_zero_point")


# -- scheme <-> config group -------------------------------------------------------------------------


def _strategy(args: dict) -> str:
    s = args.get("strategy")
    if s:
        return str(s).lower()
    g = args.get("group_size")
    if g is None:
        return "tensor"
    return "channel" if g == -1 else "group"


def _dynamic(args: dict):
    d = args.get("dynamic", False)
    return d.lower() if isinstance(d, str) else bool(d)


def _weight_fields(w: dict, where: str) -> dict:
    typ, bits, strat = str(w.get("type", "int")).lower(), w.get("num_bits", 8), _strategy(w)
    gs = w.get("group_size")
    if _dynamic(w):
        raise CheckpointError(f"{where}: dynamic weight quantization is not a checkpoint format")
    if typ == "float" and bits == 8:
        if strat in ("tensor", "channel"):
            return dict(weight="fp8", weight_strategy=strat, group_size=None, block_size=None)
        if strat == "block":
            bs = w.get("block_structure")
            if isinstance(bs, str):
                bs = [int(v) for v in bs.split("x")]
            return dict(weight="fp8", weight_strategy="block", group_size=None, block_size=tuple(bs))
        if strat == "group" and gs == 32:
            return dict(weight="mxfp8", weight_strategy="group", group_size=32, block_size=None)
        raise CheckpointError(f"{where}: FP8 weights with strategy {strat!r} group_size {gs} have no quantops scheme "
                              "(FP8 is per tensor, per channel, 128x128 blocks, or MXFP8 groups of 32)")
    if typ == "float" and bits == 4:
        if strat in ("tensor_group", "group") and gs == 16:
            return dict(weight="nvfp4", weight_strategy="group", group_size=16, block_size=None)
        if strat == "group" and gs == 32:
            return dict(weight="mxfp4", weight_strategy="group", group_size=32, block_size=None)
        raise CheckpointError(f"{where}: FP4 weights with strategy {strat!r} group_size {gs} are neither NVFP4 "
                              "(tensor_group of 16) nor MXFP4 (group of 32)")
    if typ == "int" and bits in (4, 8):
        if not w.get("symmetric", True) and bits == 8 and strat not in ("group", "channel"):
            raise CheckpointError(f"{where}: asymmetric int8 weights must be per group or per channel")
        actorder = w.get("actorder")
        if isinstance(actorder, str):
            actorder = actorder.lower()
        return dict(
            weight=f"int{bits}",
            weight_strategy=strat,
            group_size=gs if strat == "group" else None,
            block_size=None,
            symmetric=bool(w.get("symmetric", True)),
            # "group"/"dynamic" (and the old `true`) store a weight_g_idx; "weight"/"static" only change how
            # GPTQ calibrated, not the tensors
            actorder=actorder in (True, "group", "dynamic"),
        )
    raise CheckpointError(f"{where}: {bits}-bit {typ} weights have no quantops scheme "
                          "(supported: int4, int8, fp8, nvfp4, mxfp4, mxfp8)")


def _act_fields(a: dict | None, weight: str, where: str) -> dict:
    if a is None:
        return dict(act=None, act_strategy=None, act_group_size=None, act_dynamic=True, act_symmetric=True)
    typ, bits, strat, dyn = str(a.get("type", "int")).lower(), a.get("num_bits", 8), _strategy(a), _dynamic(a)
    gs = a.get("group_size")
    sym = bool(a.get("symmetric", True))
    if typ == "float" and bits == 4:
        if gs == 16 and strat in ("tensor_group", "group"):
            if dyn != "local":
                raise CheckpointError(f"{where}: NVFP4 activations need a calibrated input_global_scale "
                                      f"(dynamic: \"local\"), got dynamic={a.get('dynamic')!r}")
            return dict(act="nvfp4", act_strategy="group", act_group_size=16, act_dynamic=True, act_symmetric=True)
        if gs == 32 and strat == "group" and dyn is True:
            return dict(act="mxfp4", act_strategy="group", act_group_size=32, act_dynamic=True, act_symmetric=True)
        raise CheckpointError(f"{where}: FP4 activations with strategy {strat!r} group_size {gs} dynamic {dyn!r} "
                              "are not supported")
    if typ == "float" and bits == 8 and weight == "mxfp8":
        if gs == 32 and strat == "group" and dyn is True:
            return dict(act="mxfp8", act_strategy="group", act_group_size=32, act_dynamic=True, act_symmetric=True)
        raise CheckpointError(f"{where}: MXFP8 weights pair with dynamic MXFP8 activations (groups of 32)")
    if (typ, bits) in (("float", 8), ("int", 8)):
        if strat not in ("tensor", "token", "group"):
            raise CheckpointError(f"{where}: activation strategy {strat!r} is not supported")
        if dyn == "local":
            raise CheckpointError(f"{where}: dynamic=\"local\" applies to NVFP4 activations only")
        return dict(act="fp8" if typ == "float" else "int8", act_strategy=strat,
                    act_group_size=gs if strat == "group" else None, act_dynamic=bool(dyn), act_symmetric=sym)
    raise CheckpointError(f"{where}: {bits}-bit {typ} activations are not supported")


def scheme_from_config_group(group: dict, where: str = "config group") -> QuantScheme:
    """A compressed-tensors config group (its `weights` and `input_activations`) -> the QuantScheme it is."""
    if group.get("output_activations"):
        raise CheckpointError(f"{where}: output activation quantization is not supported")
    w = group.get("weights")
    if not w:
        raise CheckpointError(f"{where}: no `weights` arguments (activation-only quantization is not supported)")
    fields = _weight_fields(w, where)
    fields.update(_act_fields(group.get("input_activations"), fields["weight"], where))
    fields.setdefault("symmetric", True)
    fields.setdefault("actorder", False)
    return scheme_from_fields(fields, where)


def scheme_from_fields(fields: dict, where: str) -> QuantScheme:
    """The preset with exactly these fields, else the nearest preset of the same weight/activation types with
    the differences replaced."""
    same = [p for p in PRESETS.values() if p.weight == fields["weight"] and p.act == fields["act"]]
    if not same:
        raise CheckpointError(f"{where}: {fields['weight']} weights with {fields['act'] or 'unquantized'} "
                              "activations have no quantops scheme")

    def diff(p):
        return {k: v for k, v in fields.items() if getattr(p, k) != v}

    base = min(same, key=lambda p: len(diff(p)))
    try:
        return base.replace(**diff(base))
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None


def _weight_args(s: QuantScheme) -> dict:
    if s.weight in ("int4", "int8"):
        args = {"num_bits": s.weight_bits, "type": "int", "strategy": s.weight_strategy,
                "group_size": s.group_size if s.weight_strategy == "group" else None,
                "symmetric": s.symmetric, "dynamic": False}
        if s.actorder:
            args["actorder"] = "group"
        return args
    if s.weight == "fp8":
        args = {"num_bits": 8, "type": "float", "strategy": s.weight_strategy, "group_size": None,
                "symmetric": True, "dynamic": False}
        if s.weight_strategy == "block":
            args["block_structure"] = list(s.block_size)
        return args
    if s.weight == "nvfp4":
        return {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16, "symmetric": True,
                "dynamic": False, "scale_dtype": "torch.float8_e4m3fn"}
    return {"num_bits": 4 if s.weight == "mxfp4" else 8, "type": "float", "strategy": "group", "group_size": 32,
            "symmetric": True, "dynamic": False, "scale_dtype": "torch.uint8"}


def _act_args(s: QuantScheme) -> dict | None:
    if s.act is None:
        return None
    if s.act == "nvfp4":
        return {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16, "symmetric": True,
                "dynamic": "local", "scale_dtype": "torch.float8_e4m3fn"}
    if s.act in ("mxfp4", "mxfp8"):
        return {"num_bits": 4 if s.act == "mxfp4" else 8, "type": "float", "strategy": "group", "group_size": 32,
                "symmetric": True, "dynamic": True, "scale_dtype": "torch.uint8"}
    return {"num_bits": 8, "type": "float" if s.act == "fp8" else "int", "strategy": s.act_strategy,
            "group_size": s.act_group_size if s.act_strategy == "group" else None,
            "symmetric": s.act_symmetric, "dynamic": s.act_dynamic}


def config_group_from_scheme(scheme: QuantScheme, targets: list[str]) -> dict:
    """The compressed-tensors config group that describes `scheme` (inverse of scheme_from_config_group).
    Act-order is written as actorder "group", the value vLLM and compressed-tensors < 0.20 read with a
    `weight_g_idx` tensor."""
    return {
        "targets": list(targets),
        "weights": _weight_args(scheme),
        "input_activations": _act_args(scheme),
        "output_activations": None,
        "format": scheme.format,
    }


# -- matching ----------------------------------------------------------------------------------------


def match_name(name: str, target: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return name == target


def match_class(module: nn.Module, target: str) -> bool:
    return any(c.__name__ == target for c in type(module).__mro__ if issubclass(c, nn.Module))


def matches(name: str, module: nn.Module, target: str) -> bool:
    return match_name(name, target) or match_class(module, target)


def _infer_format(w: dict, a: dict | None) -> str:
    """The format compressed-tensors gives a group that names none (its compressors' priority order)."""
    typ, bits, gs = str(w.get("type", "int")).lower(), w.get("num_bits", 8), w.get("group_size")
    if typ == "float" and bits == 4:
        return "mxfp4-pack-quantized" if gs == 32 else "nvfp4-pack-quantized"
    if typ == "float" and bits == 8 and gs == 32 and str(w.get("scale_dtype")) in ("torch.uint8", "uint8"):
        return "mxfp8-quantized"
    if typ == "int":
        return "int-quantized" if a is not None else "pack-quantized"
    return "float-quantized" if a is not None else "naive-quantized"


def _holds(fmt: str, scheme: QuantScheme) -> bool:
    """Whether tensors stored in `fmt` can be the scheme's (directly, or by the int repacking of to_canonical)."""
    if fmt == scheme.format:
        return True
    if scheme.weight in ("int4", "int8"):
        return fmt in ("pack-quantized", "int-quantized", "naive-quantized")
    if scheme.weight in ("fp8", "mxfp8"):  # `weight` e4m3 and `weight_scale` in all three
        return fmt in ("float-quantized", "naive-quantized", "mxfp8-quantized")
    return False


@dataclass
class ConfigGroup:
    name: str
    targets: list[str]
    scheme: QuantScheme
    format: str


@dataclass
class CompressedTensorsConfig:
    """A parsed compressed-tensors `quantization_config`."""

    groups: list[ConfigGroup]
    ignore: list[str] = field(default_factory=list)
    version: str | None = None
    kv_cache: bool = False

    def scheme_for(self, name: str, module: nn.Module) -> ConfigGroup | None:
        """The group whose targets match this module (None: the module stays float)."""
        if any(matches(name, module, ign) for ign in self.ignore):
            return None
        by_target = {t: g for g in self.groups for t in g.targets}  # a target named twice: the later group's
        ranked = []
        for t, g in by_target.items():
            if match_name(name, t):
                ranked.append((0 if not t.startswith("re:") else 1, t, g))
            elif match_class(module, t):
                ranked.append((2, t, g))
        if not ranked:
            return None
        ranked.sort(key=lambda r: (r[0], r[1]))
        return ranked[0][2]


def parse_config(qcfg: dict) -> CompressedTensorsConfig:
    """config.json's `quantization_config` (quant_method "compressed-tensors") -> CompressedTensorsConfig."""
    top_format = qcfg.get("format")
    groups = []
    raw_groups = qcfg.get("config_groups") or {}
    if not raw_groups:
        raise CheckpointError("quantization_config: no config_groups")
    for gname, group in raw_groups.items():
        where = f"quantization_config.config_groups.{gname}"
        single = top_format if top_format not in (None, "mixed-precision") else None
        if isinstance(group, list):  # {"W4A16": ["Linear"]}: a preset name with its targets
            try:
                scheme = get_scheme(gname)
            except ValueError as e:
                raise CheckpointError(f"{where}: {e}") from None
            targets, fmt = group, single or scheme.format
        else:
            scheme = scheme_from_config_group(group, where)
            targets = group.get("targets") or []
            fmt = group.get("format") or single or _infer_format(group["weights"], group.get("input_activations"))
        if fmt in UNSUPPORTED_FORMATS:
            raise CheckpointError(f"{where}: format {fmt!r} is not supported: {UNSUPPORTED_FORMATS[fmt]}")
        if fmt not in KNOWN_FORMATS:
            raise CheckpointError(f"{where}: unknown format {fmt!r}; known formats: {', '.join(KNOWN_FORMATS)}")
        if not _holds(fmt, scheme):
            raise CheckpointError(f"{where}: format {fmt!r} cannot hold {scheme.name} weights (stored {scheme.format})")
        groups.append(ConfigGroup(gname, list(targets), scheme, fmt))
    return CompressedTensorsConfig(groups, list(qcfg.get("ignore") or []), qcfg.get("version"),
                                   kv_cache=qcfg.get("kv_cache_scheme") is not None)


# -- tensors: stored layout -> canonical --------------------------------------------------------------


def drop_unused(t: dict[str, torch.Tensor], scheme: QuantScheme, n: int, k: int, where: str) -> list[str]:
    """Remove (in place) tensors the scheme's canonical layout does not have but a checkpoint may carry
    harmlessly: KV-cache / output scales, activation scales of dynamic activations, and the all-zero zero
    points older compressed-tensors wrote for symmetric schemes. Returns their names. Anything else that is
    not canonical stays, for validate_tensors to reject."""
    specs = formats.tensor_specs(scheme, n, k)
    unused = []
    for name in list(t):
        if name in specs:
            continue
        if name in UNUSED_TENSORS or name in ("input_scale", "input_zero_point", "input_global_scale"):
            unused.append(name)
            del t[name]
        elif name.endswith("zero_point"):
            if bool((t[name].float() != 0).any()):
                raise CheckpointError(f"{where}: {name} has non-zero values, but {scheme.name} is symmetric "
                                      "(the config says symmetric: true)")
            unused.append(name)
            del t[name]
    return unused


def to_canonical(raw: dict[str, torch.Tensor], group: ConfigGroup, n: int, k: int, where: str):
    """A layer's checkpoint tensors (local names) -> (canonical tensors, unused tensor names).
    Converts between the int layouts compressed-tensors may store (int-quantized holds int4 values one per
    int8, as compressed-tensors 0.20 writes W4AFP8; pack-quantized packs them into int32) and reshapes
    scalar per-tensor scales to [1]."""
    s, fmt = group.scheme, group.format
    t = dict(raw)
    unused = drop_unused(t, s, n, k, where)
    if s.format == "pack-quantized" and fmt in ("int-quantized", "naive-quantized") and "weight" in t:
        t = _int_to_packed(t, s, n, k, where)
    elif s.format == "int-quantized" and fmt == "pack-quantized" and "weight_packed" in t:
        t = _packed_to_int(t, s, n, k, where)
    for name, v in list(t.items()):
        if v.dim() == 0 and name.endswith(("scale", "zero_point")):
            t[name] = v.reshape(1)
    return t, unused


def _int_to_packed(t, s, n, k, where):
    w = t.pop("weight")
    if w.dtype != torch.int8:
        raise CheckpointError(f"{where}: weight has dtype {w.dtype}, expected torch.int8 for {s.name} stored "
                              "int-quantized")
    lo, hi = -(1 << (s.weight_bits - 1)), (1 << (s.weight_bits - 1)) - 1
    if w.numel() and bool(((w < lo) | (w > hi)).any()):
        raise CheckpointError(f"{where}: weight has values outside [{lo}, {hi}] for {s.weight_bits}-bit {s.name}")
    t["weight_packed"] = elements.pack_int32(w, s.weight_bits)
    t["weight_shape"] = torch.tensor(list(w.shape), dtype=torch.int64)
    if "weight_zero_point" in t:
        zp = t.pop("weight_zero_point")
        zp = zp.to(torch.int32).t().contiguous()  # [N, G] -> [G, N], packed along N, stored [ceil(N*b/32), G]
        t["weight_zero_point"] = elements.pack_int32(zp, s.weight_bits).t().contiguous()
    return t


def _packed_to_int(t, s, n, k, where):
    shape = t.pop("weight_shape", None)
    packed = t.pop("weight_packed")
    if packed.dtype != torch.int32:
        raise CheckpointError(f"{where}: weight_packed has dtype {packed.dtype}, expected torch.int32")
    if shape is not None and tuple(int(v) for v in shape.tolist()) != (n, k):
        raise CheckpointError(f"{where}: weight_shape is {tuple(shape.tolist())}, but the layer is {n}x{k}")
    per = 32 // s.weight_bits
    if tuple(packed.shape) != (n, -(-k // per)):
        raise CheckpointError(f"{where}: weight_packed has shape {tuple(packed.shape)}, expected {(n, -(-k // per))}")
    t["weight"] = elements.unpack_int32(packed, s.weight_bits, k).to(torch.int8)
    return t
