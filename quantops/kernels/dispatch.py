"""`quantops::linear_by_m`: one linear layer whose kernel depends on the number of rows M (decode vs prefill).

The lowering decides at compile time which kernels serve which M range (the registry's plan, e.g. a GEMV-style
kernel for M <= 16 and a GEMM above) and prepares every kernel's tensors once; this op picks among them at run
time by `x.shape[0]`. Shapes are host metadata, so the branch never syncs with the device, and a CUDA graph
captured for one M replays that M's kernel. Everything the op needs is in its arguments -- the plan string names
the scheme, N, K, dtype and, per M range, the kernel class and the names of its tensors -- so no global state is
consulted and the FX graph cache key (which includes the string) changes whenever the plan does.

The lowering also uses it, with a one-kernel plan, for a kernel whose `apply_2d` cannot be recorded on FX
proxies: the kernel then runs as this opaque op (correct, but its activation quantization is not fused).
"""

from __future__ import annotations

import functools

import torch

from ..schemes import QuantScheme
from .base import LinearConfig, LinearKernel

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def encode_plan(config: LinearConfig, plan: list[tuple[int | None, type[LinearKernel], list[str]]]) -> str:
    """`SCHEME;n=N;k=K;dtype=D;bi=0|1;bias=0|1` then `|max_m:KernelName:name,name` per M range (`*` = no limit),
    smallest M range first, the unlimited one last."""
    head = (f"{config.scheme.key()};n={config.n};k={config.k};dtype={str(config.dtype).replace('torch.', '')};"
            f"bi={int(config.batch_invariant)};bias={int(config.has_bias)}")
    parts = [head]
    for max_m, cls, names in plan:
        parts.append(f"{'*' if max_m is None else int(max_m)}:{cls.kernel_name()}:{','.join(names)}")
    return "|".join(parts)


@functools.lru_cache(maxsize=None)
def decode_plan(plan: str) -> tuple[LinearConfig, tuple[tuple[int | None, LinearKernel, tuple[str, ...]], ...]]:
    """The inverse of encode_plan, with one kernel instance per range (cached: a plan string is immutable)."""
    from .registry import kernel_class

    head, *ranges = plan.split("|")
    scheme_key, *fields = head.split(";")
    kv = dict(f.split("=", 1) for f in fields)
    config = LinearConfig(QuantScheme.from_key(scheme_key), int(kv["n"]), int(kv["k"]), _DTYPES[kv["dtype"]],
                          kv.get("bias") == "1", kv.get("bi") == "1")
    if not ranges:
        raise ValueError(f"linear_by_m: plan {plan!r} has no kernel")
    out = []
    for r in ranges:
        max_m, name, names = r.split(":")
        cls = kernel_class(name)
        out.append((None if max_m == "*" else int(max_m), cls(config), tuple(n for n in names.split(",") if n)))
    if out[-1][0] is not None:
        raise ValueError(f"linear_by_m: the last range of plan {plan!r} must have no M limit")
    return config, tuple(out)


def split_tensors(plan: str, tensors: list[torch.Tensor]):
    """[(max_m, kernel, {name: tensor})] in plan order; `tensors` holds each kernel's tensors in turn."""
    _, ranges = decode_plan(plan)
    want = sum(len(names) for _, _, names in ranges)
    if len(tensors) != want:
        raise ValueError(f"linear_by_m: plan {plan!r} takes {want} tensors, got {len(tensors)}")
    out, i = [], 0
    for max_m, kernel, names in ranges:
        out.append((max_m, kernel, dict(zip(names, tensors[i:i + len(names)]))))
        i += len(names)
    return out


@torch.library.custom_op("quantops::linear_by_m", mutates_args=())
def linear_by_m(x: torch.Tensor, tensors: list[torch.Tensor], bias: torch.Tensor | None, plan: str) -> torch.Tensor:
    """x [M, K] -> [M, N] with the plan's kernel for this M (first range whose limit M does not exceed)."""
    config, _ = decode_plan(plan)
    if x.dim() != 2 or x.shape[1] != config.k:
        raise ValueError(f"linear_by_m: expected x of shape [M, {config.k}], got {tuple(x.shape)}")
    m = x.shape[0]
    for max_m, kernel, prepared in split_tensors(plan, tensors):
        if max_m is None or m <= max_m:
            return kernel.apply_2d(x, prepared, bias).contiguous()
    raise AssertionError("unreachable: the last range has no limit")


@linear_by_m.register_fake
def _(x, tensors, bias, plan):
    config, _ = decode_plan(plan)
    return x.new_empty((x.shape[0], config.n), dtype=config.dtype)
