"""Kernel selection: (scheme, N, K, dtype, capability, M range, libraries, overrides) -> kernel, with a reason
for every candidate that lost. Deterministic; the same function serves eager mode and the compile-time lowering.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass, field

import torch

from ..schemes import QuantScheme, get_scheme
from . import base
from .base import LinearConfig, LinearKernel
from .ranking import RANKING

ENV_BACKEND = "QUANTOPS_LINEAR_BACKEND"
ENV_DISABLED = "QUANTOPS_DISABLED_KERNELS"
ENV_BATCH_INVARIANT = "QUANTOPS_BATCH_INVARIANT"

# third-party kernels: family -> platform -> [(position, class)]
_REGISTERED: dict[str, dict[str, list[tuple[int | None, type[LinearKernel], int | None]]]] = {}
_BY_NAME: dict[str, type[LinearKernel]] = {}


@dataclass(frozen=True)
class Candidate:
    spec: str  # "module:Class" or "<registered>:Name"
    max_m: int | None = None
    cls: type | None = None
    min_weights: int | None = None  # a candidate only for layers of at least this many weights (N * K)

    @property
    def name(self) -> str:
        return self.spec.rsplit(":", 1)[-1]

    def load(self) -> "tuple[type[LinearKernel] | None, str | None]":
        if self.cls is not None:
            return self.cls, None
        module, _, cls_name = self.spec.partition(":")
        try:
            mod = importlib.import_module(f"quantops.kernels.{module}")
        except Exception as e:  # a kernel module that cannot import (missing optional library) is a reason
            return None, f"cannot import quantops.kernels.{module}: {type(e).__name__}: {e}"
        cls = getattr(mod, cls_name, None)
        if cls is None:
            return None, f"quantops.kernels.{module} has no kernel {cls_name}"
        _BY_NAME[cls.kernel_name()] = cls
        return cls, None


def _parse(entry: str) -> Candidate:
    """"module:Class" with optional conditions after "@", comma-separated: "m<=T" (batches of at most T rows) and
    "nk>=W" (layers of at least W weights, N * K; W may be written 40e6)."""
    spec, _, conds = entry.partition("@")
    max_m = min_weights = None
    for cond in filter(None, (c.strip() for c in conds.split(","))):
        if cond.startswith("m<="):
            max_m = int(cond[3:])
        elif cond.startswith("nk>="):
            min_weights = int(float(cond[4:]))
        else:
            raise ValueError(f"ranking entry {entry!r}: unknown condition {cond!r} (m<=T or nk>=W)")
    return Candidate(spec, max_m, min_weights=min_weights)


def platform_of(capability) -> str:
    return "cpu" if capability is None else "cuda"


def candidates(family: str, platform: str) -> list[Candidate]:
    table = RANKING.get(family, {})
    cands = [_parse(e) for e in table.get(platform, [base_emulation()])]
    for pos, cls, max_m in _REGISTERED.get(family, {}).get(platform, []):
        c = Candidate(f"<registered>:{cls.kernel_name()}", max_m, cls)
        cands.insert(len(cands) - 1 if pos is None else pos, c)  # default: just above emulation
    return cands


def base_emulation() -> str:
    from .ranking import EMULATION

    return EMULATION


def register_kernel(cls: type[LinearKernel], *, families=None, platforms=("cuda",), position: int | None = 0, max_m=None):
    """Add a third-party kernel class to the ranking: `position` 0 puts it first, None just above emulation."""
    if not (isinstance(cls, type) and issubclass(cls, LinearKernel)):
        raise TypeError("register_kernel takes a LinearKernel subclass")
    for fam in families or cls.families:
        for plat in platforms:
            _REGISTERED.setdefault(fam, {}).setdefault(plat, []).append((position, cls, max_m))
    _BY_NAME[cls.kernel_name()] = cls
    return cls


def unregister_kernel(cls: type[LinearKernel]):
    for fams in _REGISTERED.values():
        for plat, entries in fams.items():
            fams[plat] = [e for e in entries if e[1] is not cls]
    _BY_NAME.pop(cls.kernel_name(), None)


def kernel_class(name: str) -> type[LinearKernel]:
    """A kernel class by its name (loads the modules of the ranking until found)."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    for fam in RANKING.values():
        for entries in fam.values():
            for e in entries:
                c = _parse(e)
                if c.name == name:
                    cls, why = c.load()
                    if cls is None:
                        raise ValueError(f"kernel {name}: {why}")
                    return cls
    raise ValueError(f"unknown kernel {name!r}")


@contextlib.contextmanager
def assume_libraries(libraries):
    """Within the block, treat exactly these optional libraries as installed (for "what would run there")."""
    old = base._ASSUMED[0]
    base._ASSUMED[0] = None if libraries is None else frozenset(libraries)
    try:
        yield
    finally:
        base._ASSUMED[0] = old


@dataclass
class Selection:
    """The result of a selection: `kernel` (for the M asked, or the largest-M kernel of the plan), `plan`
    [(max_m or None, kernel class)], and `rejected` [(kernel name, reason)] in ranking order."""

    config: LinearConfig
    capability: "tuple[int, int] | None"
    plan: list[tuple[int | None, type[LinearKernel]]]
    rejected: list[tuple[str, str]] = field(default_factory=list)
    m: int | None = None

    @property
    def kernel(self) -> type[LinearKernel]:
        if self.m is not None:
            return self.for_m(self.m)
        return self.plan[-1][1]

    def for_m(self, m: int) -> type[LinearKernel]:
        for max_m, cls in self.plan:
            if max_m is None or m <= max_m:
                return cls
        return self.plan[-1][1]

    @property
    def platform(self) -> str:
        if self.capability is None:
            return "cpu"
        return f"cuda sm{self.capability[0]}{self.capability[1]}"

    def plan_str(self) -> str:
        if len(self.plan) == 1:
            return self.plan[0][1].kernel_name()
        parts, lo = [], 1
        for max_m, cls in self.plan:
            rng = f"M>={lo}" if max_m is None else f"M<={max_m}" if lo == 1 else f"{lo}<=M<={max_m}"
            parts.append(f"{cls.kernel_name()} ({rng})")
            lo = (max_m or 0) + 1
        return ", ".join(parts)

    def __str__(self) -> str:
        lines = [f"{self.config.describe()} on {self.platform}: {self.plan_str()}"]
        lines += [f"  rejected {name}: {why}" for name, why in self.rejected]
        return "\n".join(lines)


def _names(value) -> set[str]:
    if value is None:
        return set()
    if isinstance(value, str):
        value = value.split(",")
    return {v.strip() for v in value if v and v.strip()}


def resolve_overrides(linear_backend=None, disabled_kernels=None, batch_invariant=None):
    """API arguments win over the environment."""
    if linear_backend is None:
        linear_backend = os.environ.get(ENV_BACKEND) or None
    disabled = _names(disabled_kernels) | _names(os.environ.get(ENV_DISABLED))
    if batch_invariant is None:
        batch_invariant = os.environ.get(ENV_BATCH_INVARIANT, "0") not in ("", "0", "false", "False")
    return linear_backend, disabled, bool(batch_invariant)


def device_capability(device) -> "tuple[int, int] | None":
    device = torch.device(device)
    if device.type == "cuda":
        return tuple(torch.cuda.get_device_capability(device))
    if device.type == "cpu":
        return None
    raise ValueError(f"quantops runs on CPU and CUDA devices, not {device.type}")


def select_kernel(
    scheme: "str | QuantScheme",
    *,
    N: int,
    K: int,
    dtype: torch.dtype = torch.bfloat16,
    device=None,
    capability=None,
    m: int | None = None,
    has_bias: bool = False,
    linear_backend: str | None = None,
    disabled_kernels=None,
    batch_invariant: bool | None = None,
    libraries=None,
) -> Selection:
    """Choose the kernel for one linear layer.

    `capability=(9, 0)` answers for that GPU without one (libraries as installed here, or `libraries=`);
    `device` takes the capability of a real device; neither: the current CUDA device if any, else the CPU.
    `linear_backend` forces a backend ("triton", "cublas", …) or a kernel class name; `disabled_kernels`
    removes kernels (names or backends). Both default to $QUANTOPS_LINEAR_BACKEND / $QUANTOPS_DISABLED_KERNELS.
    Raises ValueError listing every candidate's reason when nothing can run.
    """
    scheme = get_scheme(scheme)
    if capability is None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        capability = device_capability(device)
    elif isinstance(capability, (int, float)):
        capability = (int(capability) // 10, int(capability) % 10) if capability >= 10 else (int(capability), 0)
    capability = None if capability is None else tuple(int(c) for c in capability)
    forced, disabled, invariant = resolve_overrides(linear_backend, disabled_kernels, batch_invariant)
    config = LinearConfig(scheme, int(N), int(K), dtype, has_bias, invariant)
    from ..formats import representable

    why_not = representable(scheme, config.n, config.k)
    if why_not:
        raise ValueError(f"{scheme.name} cannot represent a {N}x{K} weight: {why_not}")

    ctx = assume_libraries(libraries) if libraries is not None else contextlib.nullcontext()
    plan: list[tuple[int | None, type[LinearKernel]]] = []
    rejected: list[tuple[str, str]] = []
    covered = 0  # largest M already given a kernel by an M-limited entry
    with ctx:
        for cand in candidates(scheme.family, platform_of(capability)):
            if plan and plan[-1][0] is None:
                rejected.append((cand.name, f"ranked below {plan[-1][1].kernel_name()}"))
                continue
            cls, why = cand.load()
            name = cand.name if cls is None else cls.kernel_name()
            if cls is not None:
                why = _reject_reason(cls, config, capability, forced, disabled)
            if why is None and cand.max_m is not None and cand.max_m <= covered:
                why = f"M<={cand.max_m} already covered"
            if why is None and cand.min_weights is not None and config.n * config.k < cand.min_weights:
                rng = "" if cand.max_m is None else f" at M<={cand.max_m}"
                why = (f"ranked here{rng} for layers of at least {cand.min_weights / 1e6:g}M weights; "
                       f"this one has {config.n * config.k / 1e6:.3g}M")
            if why is not None:
                if (name, why) not in rejected:  # a kernel ranked twice (two M ranges) is reported once
                    rejected.append((name, why))
                continue
            if plan and plan[-1][1] is cls:  # the same kernel again: one wider M range
                plan[-1] = (cand.max_m, cls)
            else:
                plan.append((cand.max_m, cls))
            covered = max(covered, cand.max_m or 0)
    if not plan or plan[-1][0] is not None:
        detail = "; ".join(f"{n}: {w}" for n, w in rejected) or "no candidates"
        if forced and not any(forced in (n, _loaded_backend(n)) for n, _ in rejected):
            detail = (f"no {scheme.family} kernel on {platform_of(capability)} is named or has backend {forced!r}; "
                      + detail)
        what = f"forced backend {forced!r} cannot" if forced else "no kernel can"
        raise ValueError(f"{what} run {config.describe()} on {Selection(config, capability, []).platform}: {detail}")
    return Selection(config, capability, plan, rejected, m)


def _loaded_backend(name: str) -> str | None:
    cls = _BY_NAME.get(name)
    return None if cls is None else cls.backend


def _reject_reason(cls, config, capability, forced, disabled) -> str | None:
    name = cls.kernel_name()
    if name in disabled or cls.backend in disabled:
        return "disabled"
    if forced and forced not in (name, cls.backend):
        return f"not the forced backend {forced!r}"
    s = config.scheme
    if config.batch_invariant and s.act is not None and s.act_dynamic and s.act_strategy == "tensor":
        # one activation scale computed over the whole batch: no kernel can make rows independent of it
        return "batch-invariant mode, but the scheme's dynamic per-tensor activation scale depends on the whole batch"
    if config.scheme.family not in cls.families:
        return f"does not run the {config.scheme.family} family"
    ok, why = cls.is_supported(capability)
    if not ok:
        return why or "not supported here"
    if config.batch_invariant and not cls.batch_invariant:
        return "not batch-invariant"
    if config.dtype not in cls.dtypes:
        return f"activation dtype {base.dtype_name(config.dtype)} not in {[base.dtype_name(d) for d in cls.dtypes]}"
    ok, why = cls.can_implement(config)
    if not ok:
        return why or "cannot implement this layer"
    return None
