"""float-quantized: FP8 e4m3 weights with per-tensor [1], per-channel [N,1] or 128x128 block scales."""

from __future__ import annotations

import torch

from .elements import FP8, FP8_MAX, cast_fp8, store_scale


def block_amax(w: torch.Tensor, bn: int, bk: int) -> torch.Tensor:
    """amax of each bn x bk tile of w [N, K], partial edge tiles included: [ceil(N/bn), ceil(K/bk)]."""
    n, k = w.shape
    nb, kb = -(-n // bn), -(-k // bk)
    padded = torch.nn.functional.pad(w.abs().float(), (0, kb * bk - k, 0, nb * bn - n))
    return padded.reshape(nb, bn, kb, bk).amax(dim=(1, 3))


def expand_blocks(scale: torch.Tensor, n: int, k: int, bn: int, bk: int) -> torch.Tensor:
    """Per-block scale [nb, kb] -> per-element [n, k]."""
    return scale.repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]


def quantize(w, scheme, input_amax=None):
    wf = w.float()
    if scheme.weight_strategy == "tensor":
        amax = wf.abs().amax().reshape(1)
    elif scheme.weight_strategy == "channel":
        amax = wf.abs().amax(dim=1, keepdim=True)
    else:
        amax = block_amax(wf, *scheme.block_size)
    # scales are stored in the model dtype; quantize with the stored value so dequantize inverts exactly
    scale = store_scale(amax / FP8_MAX, w.dtype)
    s = scale.float()
    if scheme.weight_strategy == "block":
        s = expand_blocks(s, *w.shape, *scheme.block_size)
    out = {"weight": cast_fp8(wf / s), "weight_scale": scale}
    if not scheme.act_dynamic:
        out["input_scale"] = store_scale((input_amax.float().reshape(1) / FP8_MAX).clamp(min=1e-12), w.dtype)
    return out


def dequantize(t, scheme, n, k):
    s = t["weight_scale"].float()
    if scheme.weight_strategy == "block":
        s = expand_blocks(s, n, k, *scheme.block_size)
    return t["weight"].float() * s


def specs(scheme, n, k):
    if scheme.weight_strategy == "tensor":
        sshape = (1,)
    elif scheme.weight_strategy == "channel":
        sshape = (n, 1)
    else:
        bn, bk = scheme.block_size
        sshape = (-(-n // bn), -(-k // bk))
    out = {"weight": ((n, k), FP8), "weight_scale": (sshape, "float")}
    if not scheme.act_dynamic:
        out["input_scale"] = ((1,), "float")
    return out
