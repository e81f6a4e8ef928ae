"""Canonical weight formats: what each scheme's tensors are, a reference quantizer and dequantize, in plain torch.

The tensors are exactly those of a compressed-tensors checkpoint (names, dtypes, shapes, bit order); see
FORMATS in the project docs. This package knows nothing of kernels.
"""

from __future__ import annotations

import torch

from ..schemes import QuantScheme, get_scheme
from . import float_quantized, fp4_packed, int_quantized, mxfp8, pack_quantized
from .activations import dequantize_activation, quantize_activation

_MODULES = {
    "float-quantized": float_quantized,
    "int-quantized": int_quantized,
    "pack-quantized": pack_quantized,
    "nvfp4-pack-quantized": fp4_packed,
    "mxfp4-pack-quantized": fp4_packed,
    "mxfp8-quantized": mxfp8,
}

__all__ = [
    "quantize_weight",
    "dequantize_weight",
    "tensor_specs",
    "validate_tensors",
    "representable",
    "quantize_activation",
    "dequantize_activation",
]


def _module(scheme: QuantScheme):
    return _MODULES[scheme.format]


def representable(scheme: QuantScheme | str, n: int, k: int) -> str | None:
    """None if the scheme can store an [n, k] weight, else the reason it cannot."""
    scheme = get_scheme(scheme)
    if n <= 0 or k <= 0:
        return f"empty weight {n}x{k}"
    m = scheme.k_multiple
    if k % m:
        what = "group" if scheme.weight_strategy == "group" else "block"
        return f"K={k} is not a multiple of the {scheme.name} {what} size {m}"
    return None


def tensor_specs(scheme: QuantScheme | str, n: int, k: int) -> dict[str, tuple[tuple[int, ...], object]]:
    """name -> (shape, dtype) of the canonical tensors, in checkpoint order. dtype "float" means any of
    bf16/fp16/fp32 (scales stored in the model dtype)."""
    scheme = get_scheme(scheme)
    return _module(scheme).specs(scheme, n, k)


def _check_finite(name, t):
    if t.is_floating_point() and t.dtype not in (torch.float8_e4m3fn,) and t.numel():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            raise ValueError(f"{name} has {int(bad.sum())} NaN/Inf values")


def quantize_weight(
    weight: torch.Tensor,
    scheme: QuantScheme | str,
    *,
    input_amax: torch.Tensor | None = None,
    g_idx: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Quantize a float weight [N, K] to the scheme's canonical tensors.

    input_amax: calibration amax of the layer's input (static activation scales: FP8 static, NVFP4's
    input_global_scale); for asymmetric static int8, a (min, max) pair. g_idx: act-order group of each
    column (int weight-only with actorder); without it, columns are ordered by weight norm.
    NaN/Inf weights are rejected.
    """
    scheme = get_scheme(scheme)
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a 2-D float tensor, got {tuple(weight.shape)} {weight.dtype}")
    reason = representable(scheme, *weight.shape)
    if reason:
        raise ValueError(reason)
    weight = weight.detach()
    _check_finite("weight", weight)
    needs_amax = (not scheme.act_dynamic) or scheme.act == "nvfp4"
    if needs_amax and input_amax is None:
        raise ValueError(f"{scheme.name} has static activation scales: pass input_amax from calibration")
    kw = {"g_idx": g_idx} if scheme.format == "pack-quantized" else {}
    with torch.no_grad():
        return _module(scheme).quantize(weight, scheme, input_amax=input_amax, **kw)


def dequantize_weight(
    tensors: dict[str, torch.Tensor], scheme: QuantScheme | str, dtype: torch.dtype = torch.float32, *, shape=None
) -> torch.Tensor:
    """Canonical tensors -> float weight [N, K] in `dtype` (computed in fp32)."""
    scheme = get_scheme(scheme)
    n, k = shape if shape is not None else infer_shape(tensors, scheme)
    return _module(scheme).dequantize(tensors, scheme, n, k).to(dtype)


def infer_shape(tensors: dict[str, torch.Tensor], scheme: QuantScheme) -> tuple[int, int]:
    if "weight_shape" in tensors:
        n, k = (int(v) for v in tensors["weight_shape"].tolist())
        return n, k
    if "weight" in tensors:
        return tuple(tensors["weight"].shape)
    n, half = tensors["weight_packed"].shape
    return n, half * 2


def validate_tensors(tensors: dict[str, torch.Tensor], scheme: QuantScheme | str, n: int, k: int, *, where: str = "layer"):
    """Raise ValueError naming `where`, the tensor and what was expected, for any missing, extra, misshapen,
    mistyped or non-finite tensor. (Checks values, so call it once at load, not per forward.)"""
    scheme = get_scheme(scheme)
    specs = tensor_specs(scheme, n, k)
    missing = [name for name in specs if name not in tensors]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)} for {scheme.name} ({scheme.format}) {n}x{k}")
    extra = [name for name in tensors if name not in specs]
    if extra:
        raise ValueError(f"{where}: unexpected tensors {', '.join(extra)} for {scheme.name} ({scheme.format})")
    for name, (shape, dtype) in specs.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{where}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)} for {scheme.name} {n}x{k}")
        ok = t.dtype in (torch.bfloat16, torch.float16, torch.float32) if dtype == "float" else t.dtype == dtype
        if not ok:
            want = "bf16/fp16/fp32" if dtype == "float" else str(dtype)
            raise ValueError(f"{where}: {name} has dtype {t.dtype}, expected {want}")
        try:
            _check_finite(name, t)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if t.dtype == torch.float8_e4m3fn and t.numel():  # e4m3 has no Inf; 0x7F/0xFF are NaN (bytes, no fp32 copy)
            if bool(((t.view(torch.uint8) & 0x7F) == 0x7F).any()):
                what = "scales" if name.endswith("scale") else "values"
                raise ValueError(f"{where}: {name} has NaN e4m3 {what}")
        if name.endswith("scale") and t.dtype == torch.uint8 and bool((t == 255).any()):
            raise ValueError(f"{where}: {name} has E8M0 code 0xFF (NaN)")
    if "weight_shape" in specs:
        got = tuple(int(v) for v in tensors["weight_shape"].tolist())
        if got != (n, k):
            raise ValueError(f"{where}: weight_shape is {got}, but the layer is {n}x{k}")
    if "weight_g_idx" in specs:
        g = tensors["weight_g_idx"]
        groups = tensors["weight_scale"].shape[1]
        if bool(((g < 0) | (g >= groups)).any()):
            raise ValueError(f"{where}: weight_g_idx has group indices outside [0, {groups})")
