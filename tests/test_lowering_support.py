"""Test kernels and tiny models shared by the lowering tests (and the subprocesses they start).

The kernels compute exactly what the scheme's EmulationKernel computes, so outputs can be compared with the
eager model, and they leave traces: `prepare()` counts its calls, and `apply_2d` ends in a custom op that
counts, at run time, how often the kernel really ran (Inductor calls a custom op's implementation each time).
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

import quantops
from quantops.kernels.emulation import EmulationKernel

CALLS: dict[str, int] = {}


@torch.library.custom_op("quantops_test::tagged", mutates_args=())
def tagged(x: torch.Tensor, tag: str) -> torch.Tensor:
    """Identity that counts its calls under `tag`: shows which kernel ran."""
    CALLS[tag] = CALLS.get(tag, 0) + 1
    return x.clone()


@tagged.register_fake
def _(x, tag):
    return torch.empty_like(x)


class CountingFp8Kernel(EmulationKernel):
    """FP8 emulation whose prepare() makes copies (so its tensors are derived) and counts itself."""

    backend = "test"
    families = ("fp8",)

    def prepare(self, tensors):
        key = f"prepare:{self.kernel_name()}"
        CALLS[key] = CALLS.get(key, 0) + 1
        return {k: v.clone() for k, v in tensors.items()}

    def apply_2d(self, x, prepared, bias):
        return torch.ops.quantops_test.tagged(super().apply_2d(x, prepared, bias), self.kernel_name())


class SmallMFp8Kernel(CountingFp8Kernel):
    """The same, registered for small M only (a stand-in for a decode kernel)."""


class UnrecordableFp8Kernel(CountingFp8Kernel):
    """Branches on M in Python: cannot be recorded on FX proxies, so the lowering runs it inside
    quantops::linear_by_m."""

    def apply_2d(self, x, prepared, bias):
        if x.shape[0] == 0:
            return x.new_empty((0, self.config.n))
        return super().apply_2d(x, prepared, bias)


@contextlib.contextmanager
def registered(cls, *, max_m=None, position=0, families=("fp8",), platforms=("cpu",)):
    quantops.register_kernel(cls, families=families, platforms=platforms, position=position, max_m=max_m)
    try:
        yield cls
    finally:
        quantops.unregister_kernel(cls)


def counts(tag: str) -> int:
    return CALLS.get(tag, 0)


class TinyRMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(1.0 + 0.1 * torch.randn(d))

    def forward(self, x):
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)


class TinyMLP(nn.Module):
    """RMSNorm -> up (d -> h) -> SiLU -> down (h -> d)."""

    def __init__(self, d=64, h=128, bias=False):
        super().__init__()
        self.norm = TinyRMSNorm(d)
        self.up = nn.Linear(d, h, bias=bias)
        self.down = nn.Linear(h, d, bias=bias)

    def forward(self, x):
        return self.down(F.silu(self.up(self.norm(x))))


def tiny_mlp(seed=0, d=64, h=128, bias=False, dtype=torch.bfloat16):
    torch.manual_seed(seed)
    return TinyMLP(d, h, bias).to(dtype).eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


PYTHON = sys.executable
