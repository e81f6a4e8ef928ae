"""pack-quantized: INT4/INT8 weights packed into int32 along K (W4A16, W4A16_ASYM, W8A16, W4AFP8).

Per group (`group_size` along K) or per channel; optional zero points packed along N; optional act-order
`weight_g_idx` (the group of each input column).
"""

from __future__ import annotations

import torch

from .elements import pack_int32, store_scale, unpack_int32


def _groups(scheme, k):
    return 1 if scheme.weight_strategy == "channel" else k // scheme.group_size


def default_g_idx(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Act-order without calibration: columns in order of decreasing weight-column norm, grouped in that order.
    (GPTQ orders by the Hessian diagonal; any permutation is a valid checkpoint.)"""
    perm = torch.argsort(w.float().norm(dim=0), descending=True, stable=True)
    g_idx = torch.empty(w.shape[1], dtype=torch.int32, device=w.device)
    g_idx[perm] = (torch.arange(w.shape[1], device=w.device) // group_size).to(torch.int32)
    return g_idx


def column_scales(t: torch.Tensor, g_idx: torch.Tensor | None, scheme, k: int) -> torch.Tensor:
    """Per-group tensor [N, G] -> per-column [N, K]."""
    if scheme.weight_strategy == "channel":
        return t.expand(-1, k)
    if g_idx is not None:
        return t[:, g_idx.long()]
    return t.repeat_interleave(scheme.group_size, dim=1)


def quantize(w, scheme, input_amax=None, g_idx=None):
    bits = scheme.weight_bits
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    n, k = w.shape
    wf = w.float()
    if scheme.actorder and g_idx is None:
        g_idx = default_g_idx(w, scheme.group_size)
    if scheme.weight_strategy == "channel":
        grouped = wf.unsqueeze(1)  # [N, 1, K]
    elif g_idx is not None:
        order = torch.argsort(g_idx.long(), stable=True)
        grouped = wf[:, order].reshape(n, _groups(scheme, k), scheme.group_size)
    else:
        grouped = wf.reshape(n, _groups(scheme, k), scheme.group_size)
    if scheme.symmetric:
        scale = store_scale(grouped.abs().amax(dim=-1) / qmax, w.dtype)
        zp = None
    else:
        lo = grouped.amin(dim=-1).clamp(max=0)
        hi = grouped.amax(dim=-1).clamp(min=0)
        scale = store_scale((hi - lo) / (qmax - qmin), w.dtype)
        zp = torch.round(qmin - lo / scale.float()).clamp(qmin, qmax).to(torch.int32)
    s_col = column_scales(scale.float(), g_idx, scheme, k)
    q = wf / s_col
    if zp is not None:
        q = q + column_scales(zp.float(), g_idx, scheme, k)
    q = torch.round(q).clamp(qmin, qmax).to(torch.int32)
    out = {
        "weight_packed": pack_int32(q, bits),
        "weight_scale": scale,
        "weight_shape": torch.tensor([n, k], dtype=torch.int64, device=w.device),
    }
    if zp is not None:
        out["weight_zero_point"] = pack_int32(zp.t().contiguous(), bits).t().contiguous()
    if g_idx is not None:
        out["weight_g_idx"] = g_idx.to(torch.int32)
    return out


def unpack_weight(t, scheme, n, k) -> torch.Tensor:
    """Signed integer values [N, K] (int32)."""
    return unpack_int32(t["weight_packed"], scheme.weight_bits, k)


def unpack_zero_point(t, scheme, n, k) -> torch.Tensor:
    """Signed zero points [N, G] (int32)."""
    zp = t["weight_zero_point"]
    return unpack_int32(zp.t().contiguous(), scheme.weight_bits, n).t()


def dequantize(t, scheme, n, k):
    g_idx = t.get("weight_g_idx")
    q = unpack_weight(t, scheme, n, k).float()
    if not scheme.symmetric:
        q = q - column_scales(unpack_zero_point(t, scheme, n, k).float(), g_idx, scheme, k)
    return q * column_scales(t["weight_scale"].float(), g_idx, scheme, k)


def specs(scheme, n, k):
    bits = scheme.weight_bits
    per = 32 // bits
    g = _groups(scheme, k)
    out = {
        "weight_packed": ((n, -(-k // per)), torch.int32),
        "weight_scale": ((n, g), "float"),
        "weight_shape": ((2,), torch.int64),
    }
    if not scheme.symmetric:
        out["weight_zero_point"] = ((-(-n // per), g), torch.int32)
    if scheme.actorder:
        out["weight_g_idx"] = ((k,), torch.int32)
    return out
