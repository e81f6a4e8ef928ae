"""The kernel interface: one class per backend implementation of a scheme family.

A kernel says what it needs (`is_supported`: platform, GPU capability, libraries; `can_implement`: scheme
parameters, N, K, dtype), turns canonical tensors into the tensors it consumes (`prepare`, pure, run once),
and computes the linear (`apply`, through a `quantops` custom op, activation quantization in plain torch).
Kernels know nothing of torch.compile: the lowering calls `apply` on FX proxies to record it into a graph,
eager mode calls it on tensors. So `apply_2d` must be recordable on `torch.fx.Proxy` values: take N and K from
`self.config` (never from `x.shape`), branch only on static facts (scheme, config), create no tensor constants,
and put anything that depends on M or on tensor values inside the kernel's custom op.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..schemes import QuantScheme

Capability = "tuple[int, int] | None"  # None = the CPU platform
Verdict = "tuple[bool, str | None]"

OK = (True, None)


@dataclass(frozen=True)
class LinearConfig:
    """Everything static about one linear layer that a kernel's choice may depend on."""

    scheme: QuantScheme
    n: int  # out_features
    k: int  # in_features
    dtype: torch.dtype  # activation and output dtype
    has_bias: bool = False
    batch_invariant: bool = False

    def describe(self) -> str:
        return f"{self.scheme.key()} N={self.n} K={self.k} {str(self.dtype).replace('torch.', '')}"


class LinearKernel:
    """Base class. Subclasses set `backend`, `families` and override the hooks below."""

    backend: ClassVar[str] = "?"  # cublas | triton | cuda | fbgemm | flashinfer | cpu | emulation
    families: ClassVar[tuple[str, ...]] = ()
    batch_invariant: ClassVar[bool] = False  # each output row independent of the rest of the batch
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.bfloat16, torch.float16, torch.float32)

    @classmethod
    def kernel_name(cls) -> str:
        return cls.__name__

    # -- selection ------------------------------------------------------------------------------
    @classmethod
    def is_supported(cls, capability: "tuple[int, int] | None") -> "tuple[bool, str | None]":
        """Can this kernel run on this platform at all (capability None = CPU)?"""
        return OK

    @classmethod
    def can_implement(cls, config: LinearConfig) -> "tuple[bool, str | None]":
        """Can it run this layer (scheme parameters, N, K, dtype)?"""
        return OK

    # -- computation ----------------------------------------------------------------------------
    def __init__(self, config: LinearConfig):
        self.config = config
        self.scheme = config.scheme

    def prepare(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Canonical tensors -> the tensors `apply` consumes. Pure: never mutates its input or a module.
        The default hands the canonical tensors through unchanged (no copy)."""
        return dict(tensors)

    def apply(self, x: torch.Tensor, prepared: dict[str, torch.Tensor], bias: torch.Tensor | None) -> torch.Tensor:
        """x [..., K] -> [..., N] in config.dtype."""
        k, n = self.config.k, self.config.n
        out = self.apply_2d(x.reshape(-1, k), prepared, bias)
        return out.reshape(x.shape[:-1] + (n,))

    def apply_2d(self, x: torch.Tensor, prepared: dict[str, torch.Tensor], bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self):
        return f"{self.kernel_name()}({self.config.describe()})"


# -- shared checks, stated next to the kernels that use them -------------------------------------------


def needs_cpu(capability) -> "tuple[bool, str | None]":
    return OK if capability is None else (False, "CPU kernel")


def needs_cuda(capability, minimum: tuple[int, int] = (0, 0), maximum: tuple[int, int] | None = None):
    if capability is None:
        return False, "needs a CUDA GPU"
    if tuple(capability) < minimum:
        return False, f"needs compute capability >= {minimum[0]}.{minimum[1]}, have {capability[0]}.{capability[1]}"
    if maximum is not None and tuple(capability) > maximum:
        return False, f"needs compute capability <= {maximum[0]}.{maximum[1]}, have {capability[0]}.{capability[1]}"
    return OK


# Library availability: imported lazily, once; the registry can also be told to assume libraries present
# (select_kernel(..., libraries=...)) to answer "what would run there".
_ASSUMED: list[frozenset[str] | None] = [None]
LIBRARY_MODULES = {
    "triton": "triton",
    "fbgemm": "fbgemm_gpu.experimental.gen_ai",
    "flashinfer": "flashinfer",
    "quantops_cuda": "quantops.kernels.cuda_ext",
}


@functools.lru_cache(maxsize=None)
def _import_reason(module: str) -> str | None:
    try:
        importlib.import_module(module)
        return None
    except Exception as e:  # an optional library may fail in many ways; its absence is a reason, not an error
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()


def needs_library(name: str) -> "tuple[bool, str | None]":
    assumed = _ASSUMED[0]
    if assumed is not None:
        return OK if name in assumed else (False, f"{name} not installed (simulated)")
    reason = _import_reason(LIBRARY_MODULES.get(name, name))
    return OK if reason is None else (False, f"{name} not available ({reason})")


def needs_library_ops(name: str, namespace: str, ops: tuple[str, ...]) -> "tuple[bool, str | None]":
    """needs_library, and these torch.ops.<namespace> ops of it (an older release may lack them); a simulated
    library (select_kernel(..., libraries=...)) is taken to have them."""
    ok, why = needs_library(name)
    if not ok or _ASSUMED[0] is not None:
        return ok, why
    missing = [op for op in ops if not hasattr(getattr(torch.ops, namespace), op)]
    return (False, f"{name} has no {', '.join(missing)} (an older release)") if missing else OK


def check_all(*verdicts) -> "tuple[bool, str | None]":
    """First failing verdict, else OK. Pass callables to keep later checks (a library import) lazy."""
    for v in verdicts:
        ok, why = v() if callable(v) else v
        if not ok:
            return ok, why
    return OK


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def pad_2d(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Zero-pad a 2-D tensor at the bottom/right to [rows, cols] (the alignment a kernel's library needs). Already
    that shape: `t` itself (made contiguous), so that a prepared weight shares the module's memory instead of doubling
    it. Other one-byte dtypes are padded as uint8 -- zero bytes are int8 0, FP4 code 0, e4m3 +0, E8M0 code 0 --
    because constant padding is not implemented for every float8 dtype on every device."""
    r, c = t.shape
    if (r, c) == (rows, cols):
        return t.contiguous()
    if t.element_size() == 1 and t.dtype != torch.uint8:
        return torch.nn.functional.pad(t.view(torch.uint8), (0, cols - c, 0, rows - r)).view(t.dtype)
    return torch.nn.functional.pad(t, (0, cols - c, 0, rows - r))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
