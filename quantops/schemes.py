"""Quantization schemes: the user-facing recipes, named as compressed-tensors names its presets.

A scheme says what a linear layer's weights (and, where the kernel takes them quantized, its activations)
are quantized to. `get_scheme("fp8-dynamic")` and `get_scheme("FP8_DYNAMIC")` are the same preset; a
scheme is a frozen dataclass, so `get_scheme("W4A16").replace(group_size=64)` makes a variant.

Every scheme belongs to a *family* (the kernels that can run it) and stores its weights in a compressed-tensors
*format* (the tensors of quantops.formats).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

WEIGHT_TYPES = ("fp8", "int8", "int4", "nvfp4", "mxfp4", "mxfp8")
ACT_TYPES = (None, "fp8", "int8", "nvfp4", "mxfp4", "mxfp8")


@dataclass(frozen=True)
class QuantScheme:
    """One quantization recipe.

    weight: element type of the weights ("fp8" e4m3, "int8", "int4", "nvfp4", "mxfp4", "mxfp8").
    weight_strategy: "tensor", "channel" (one scale per output row), "group" (per `group_size` along K)
        or "block" (`block_size` = (rows, cols) tiles).
    symmetric: weights without zero points (int types only).
    actorder: int weight-only with a `weight_g_idx` permutation (GPTQ activation order).
    act: element type the activations are quantized to before the GEMM, or None (weight-only, "A16").
    act_strategy: "tensor", "token" (one scale per row) or "group" (per `act_group_size` along K).
    act_dynamic: scales computed from each input at run time; False means a calibrated `input_scale`.
    act_symmetric: False gives int8 activations a per-token zero point (the asymmetric W8A8 option).
    """

    name: str
    weight: str
    weight_strategy: str
    group_size: int | None = None
    block_size: tuple[int, int] | None = None
    symmetric: bool = True
    actorder: bool = False
    act: str | None = None
    act_strategy: str | None = None
    act_group_size: int | None = None
    act_dynamic: bool = True
    act_symmetric: bool = True

    def __post_init__(self):
        problems = _check(self)
        if problems:
            raise ValueError(f"invalid scheme {self.name}: " + "; ".join(problems))

    # -- derived facts --------------------------------------------------------------------------
    @property
    def family(self) -> str:
        """Kernel family: the key of the registry's ranking tables."""
        if self.weight in ("int4", "int8") and self.act is None:
            return "wna16"
        if self.weight == "int4" and self.act == "fp8":
            return "w4afp8"
        if self.act is None:
            return f"{self.weight}a16"
        return self.weight  # fp8, int8, nvfp4, mxfp4, mxfp8 (weight and act of one type)

    @property
    def format(self) -> str:
        """compressed-tensors format name of the checkpoint tensors."""
        if self.weight == "int4" or (self.weight == "int8" and self.act is None):
            return "pack-quantized"
        return {
            "fp8": "float-quantized",
            "int8": "int-quantized",
            "nvfp4": "nvfp4-pack-quantized",
            "mxfp4": "mxfp4-pack-quantized",
            "mxfp8": "mxfp8-quantized",
        }[self.weight]

    @property
    def weight_bits(self) -> int:
        return 4 if self.weight in ("int4", "nvfp4", "mxfp4") else 8

    @property
    def is_weight_only(self) -> bool:
        return self.act is None

    @property
    def k_multiple(self) -> int:
        """K must be a multiple of this for the scheme to represent a layer."""
        if self.weight_strategy == "group":
            return self.group_size
        if self.weight in ("nvfp4", "mxfp4"):
            return self.group_size
        return 1

    def replace(self, **changes) -> "QuantScheme":
        return dataclasses.replace(self, **changes)

    # -- a compact, stable string form (custom-op argument, cache keys, logs) -------------------
    def key(self) -> str:
        """`NAME` for a preset, `NAME{field=value,...}` for a variant. `QuantScheme.from_key` inverts it."""
        base = PRESETS[self.name]
        diffs = [
            f"{f.name}={_fmt(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if f.name != "name" and getattr(self, f.name) != getattr(base, f.name)
        ]
        return self.name + ("{" + ",".join(diffs) + "}" if diffs else "")

    @staticmethod
    def from_key(key: str) -> "QuantScheme":
        name, _, rest = key.partition("{")
        scheme = PRESETS[name]
        if not rest:
            return scheme
        changes = {}
        for item in rest.rstrip("}").split(","):
            field, _, value = item.partition("=")
            changes[field] = _parse(value)
        return scheme.replace(**changes)

    def __str__(self) -> str:
        return self.key()


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return "x".join(str(i) for i in v)
    return str(v)


def _parse(s: str):
    if s == "None":
        return None
    if s in ("True", "False"):
        return s == "True"
    if "x" in s and all(p.isdigit() for p in s.split("x")):
        return tuple(int(p) for p in s.split("x"))
    if s.isdigit():
        return int(s)
    return s


def _check(s: QuantScheme) -> list[str]:
    p = []
    if s.weight not in WEIGHT_TYPES:
        p.append(f"weight type {s.weight!r} not in {WEIGHT_TYPES}")
    if s.act not in ACT_TYPES:
        p.append(f"activation type {s.act!r} not in {ACT_TYPES}")
    if s.weight_strategy not in ("tensor", "channel", "group", "block"):
        p.append(f"weight_strategy {s.weight_strategy!r}")
    if s.weight_strategy == "group" and (s.group_size is None or s.group_size <= 0):
        p.append("group strategy needs a positive group_size")
    if s.weight_strategy == "block" and (s.block_size is None or s.weight != "fp8"):
        p.append("block strategy is FP8 with a block_size")
    if s.weight in ("int4",) and s.weight_strategy not in ("group", "channel"):
        p.append("int4 weights are per group or per channel")
    if s.weight == "nvfp4" and s.group_size != 16:
        p.append("NVFP4 uses blocks of 16")
    if s.weight in ("mxfp4", "mxfp8") and s.group_size != 32:
        p.append("MX formats use blocks of 32")
    if s.weight in ("nvfp4", "mxfp4", "mxfp8") and s.act not in (None, s.weight):
        p.append(f"{s.weight} weights pair with {s.weight} activations or none")
    if not s.symmetric and s.weight not in ("int4", "int8"):
        p.append("zero points exist only for int weights")
    if not s.symmetric and s.weight == "int8" and s.act is not None:
        p.append("W8A8 weights are symmetric (the asymmetric option is act_symmetric=False)")
    if s.actorder and not (s.weight in ("int4", "int8") and s.act is None and s.weight_strategy == "group"):
        p.append("actorder applies to int weight-only group schemes")
    if s.act is not None:
        if s.act_strategy not in ("tensor", "token", "group"):
            p.append(f"act_strategy {s.act_strategy!r}")
        if s.act_strategy == "group" and not s.act_group_size:
            p.append("group activations need act_group_size")
        if not s.act_dynamic and not (s.act in ("fp8", "int8") and s.act_strategy == "tensor"):
            p.append("static activation scales are per-tensor fp8/int8")
        if not s.act_symmetric and s.act != "int8":
            p.append("asymmetric activations are int8 only")
        if s.act == "int8" and s.weight != "int8":
            p.append("int8 activations pair with int8 weights")
        if s.act == "fp8" and s.weight not in ("fp8", "int4"):
            p.append("fp8 activations pair with fp8 or int4 weights")
    if s.weight == "int8" and s.act is not None and s.weight_strategy not in ("channel", "tensor"):
        p.append("W8A8 int8 weights are per channel or per tensor")
    if s.weight == "fp8" and s.act is None:
        p.append("FP8 weight-only is not a scheme (use FP8_DYNAMIC)")
    return p


def _preset(name, weight, strategy, **kw) -> QuantScheme:
    return QuantScheme(name=name, weight=weight, weight_strategy=strategy, **kw)


_FP8_TOKEN = dict(act="fp8", act_strategy="token")
PRESETS: dict[str, QuantScheme] = {
    s.name: s
    for s in [
        _preset("FP8", "fp8", "tensor", act="fp8", act_strategy="tensor", act_dynamic=False),
        _preset("FP8_DYNAMIC", "fp8", "channel", **_FP8_TOKEN),
        _preset("FP8_BLOCK", "fp8", "block", block_size=(128, 128), act="fp8", act_strategy="group", act_group_size=128),
        _preset("W8A8", "int8", "channel", act="int8", act_strategy="token"),
        _preset("W4A16", "int4", "group", group_size=128),
        _preset("W4A16_ASYM", "int4", "group", group_size=128, symmetric=False),
        _preset("W8A16", "int8", "group", group_size=128),
        _preset("W4AFP8", "int4", "group", group_size=128, **_FP8_TOKEN),
        _preset("NVFP4", "nvfp4", "group", group_size=16, act="nvfp4", act_strategy="group", act_group_size=16),
        _preset("NVFP4A16", "nvfp4", "group", group_size=16),
        _preset("MXFP4", "mxfp4", "group", group_size=32, act="mxfp4", act_strategy="group", act_group_size=32),
        _preset("MXFP4A16", "mxfp4", "group", group_size=32),
        _preset("MXFP8", "mxfp8", "group", group_size=32, act="mxfp8", act_strategy="group", act_group_size=32),
        _preset("MXFP8A16", "mxfp8", "group", group_size=32),
    ]
}
ALIASES = {"INT8": "W8A8"}


def get_scheme(scheme: "str | QuantScheme", **changes) -> QuantScheme:
    """The preset named `scheme` (case-insensitive, '-' or '_'), or a scheme key; `changes` make a variant."""
    if isinstance(scheme, QuantScheme):
        return scheme.replace(**changes) if changes else scheme
    if not isinstance(scheme, str):
        raise TypeError(f"scheme must be a name or a QuantScheme, got {type(scheme).__name__}")
    if "{" in scheme:
        s = QuantScheme.from_key(scheme)
    else:
        name = scheme.strip().upper().replace("-", "_")
        name = ALIASES.get(name, name)
        if name not in PRESETS:
            raise ValueError(f"unknown scheme {scheme!r}; known: {', '.join(list(PRESETS) + list(ALIASES))}")
        s = PRESETS[name]
    return s.replace(**changes) if changes else s


def scheme_names() -> list[str]:
    return list(PRESETS)
