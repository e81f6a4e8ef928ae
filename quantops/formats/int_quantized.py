"""int-quantized: INT8 W8A8 weights [N,K] int8 with per-channel [N,1] (or per-tensor [1]) scales."""

from __future__ import annotations

import torch

from .elements import store_scale

QMAX = 127


def quantize(w, scheme, input_amax=None):
    wf = w.float()
    amax = wf.abs().amax().reshape(1) if scheme.weight_strategy == "tensor" else wf.abs().amax(dim=1, keepdim=True)
    scale = store_scale(amax / QMAX, w.dtype)
    q = torch.round(wf / scale.float()).clamp(-QMAX - 1, QMAX).to(torch.int8)
    out = {"weight": q, "weight_scale": scale}
    if not scheme.act_dynamic:
        if scheme.act_symmetric:
            out["input_scale"] = store_scale((input_amax.float().reshape(1) / QMAX).clamp(min=1e-12), w.dtype)
        else:
            lo, hi = (a.float().reshape(1) for a in input_amax)  # (min, max) of the calibration data
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
            s = store_scale(((hi - lo) / 255).clamp(min=1e-12), w.dtype)
            out["input_scale"] = s
            # the zero point from the stored (rounded) scale, so that lo maps to -128 as closely as it can
            out["input_zero_point"] = torch.round(-128 - lo / s.float()).clamp(-128, 127).to(torch.int8)
    return out


def dequantize(t, scheme, n, k):
    return t["weight"].float() * t["weight_scale"].float()


def specs(scheme, n, k):
    sshape = (1,) if scheme.weight_strategy == "tensor" else (n, 1)
    out = {"weight": ((n, k), torch.int8), "weight_scale": (sshape, "float")}
    if not scheme.act_dynamic:
        out["input_scale"] = ((1,), "float")
        if not scheme.act_symmetric:
            out["input_zero_point"] = ((1,), torch.int8)
    return out
