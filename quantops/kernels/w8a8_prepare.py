"""Small helpers shared by the W8A8 (FP8 / INT8) kernels: activation and scale padding, prepare-time checks (the
weight padding itself is `base.pad_2d`).

Kernels pad N and K of the weight once, in `prepare()`, to what their library needs; activations are padded
along K (static amount) before quantization, and outputs are sliced back to N. Zero padding is exact: padded
K columns contribute 0 to every dot product, padded N rows are never returned.
"""

from __future__ import annotations

import torch

from .. import formats
from .base import LinearConfig


def pad_vector(v: torch.Tensor, n: int, value: float = 1.0) -> torch.Tensor:
    """fp32 copy of a per-row scale ([N] or [N, 1]) padded to [n] with `value`."""
    v = v.reshape(-1).float()
    return torch.nn.functional.pad(v, (0, n - v.numel()), value=value)


def check_canonical(kernel: str, config: LinearConfig, tensors: dict[str, torch.Tensor], needed) -> None:
    """ValueError naming the kernel, the tensor and what was expected, before anything is launched."""
    specs = formats.tensor_specs(config.scheme, config.n, config.k)
    for name in needed:
        if name not in tensors:
            raise ValueError(f"{kernel}: missing tensor {name!r} for {config.describe()}")
        shape, dtype = specs[name]
        t = tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{kernel}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)} for {config.describe()}")
        ok = t.dtype in (torch.bfloat16, torch.float16, torch.float32) if dtype == "float" else t.dtype == dtype
        if not ok:
            raise ValueError(f"{kernel}: {name} has dtype {t.dtype}, expected {dtype} for {config.describe()}")
    devices = {t.device for name, t in tensors.items() if name in needed}
    if len(devices) > 1:
        raise ValueError(f"{kernel}: tensors of {config.describe()} are on several devices: {sorted(map(str, devices))}")


def pad_activation_k(x: torch.Tensor, k: int, kp: int) -> torch.Tensor:
    """[M, k] -> [M, kp] with zero columns (static amount: recordable on FX proxies)."""
    return x if kp == k else torch.nn.functional.pad(x, (0, kp - k))
