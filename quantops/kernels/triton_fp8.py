"""FP8 W8A8 with per-tensor / per-channel weight scales and per-tensor / per-token activation scales, in
Triton: the block-scaled kernel's launcher (triton_fp8_blockscaled.py) with the scales applied once in the
epilogue. Its reason to exist is decode: split-K over thin swap-AB tiles streams the weight at a higher
fraction of HBM bandwidth than the library GEMMs reach at M <= 16 (numbers in ranking.py).

Hardware: FP8 tensor cores, sm89+ (tuned for Hopper). N padded to 128, K to 256 in prepare.
"""

from __future__ import annotations

import torch

from ..formats import quantize_activation
from .base import pad_2d, round_up
from .triton_fp8_blockscaled import K_ALIGN, N_ALIGN, Fp8TritonGemmKernel, fp8_gemm_op
from .w8a8_prepare import check_canonical, pad_activation_k, pad_vector


fp8_triton_mm = fp8_gemm_op("epilogue")


class Fp8TritonKernel(Fp8TritonGemmKernel):
    """FP8 per-tensor / per-channel weights x per-tensor / per-token activations, Triton split-K GEMM."""

    families = ("fp8",)

    @classmethod
    def can_implement(cls, config):
        s = config.scheme
        if s.weight_strategy not in ("tensor", "channel") or s.act_strategy not in ("tensor", "token"):
            return False, f"per-tensor/per-channel weights with per-tensor/per-token activations only, not {s.key()}"
        return True, None

    def __init__(self, config):
        super().__init__(config)
        self.np, self.kp = round_up(config.n, N_ALIGN), round_up(config.k, K_ALIGN)

    def prepare(self, tensors):
        names = ["weight", "weight_scale"] + ([] if self.scheme.act_dynamic else ["input_scale"])
        check_canonical(self.kernel_name(), self.config, tensors, names)
        ws = tensors["weight_scale"].float().reshape(-1)
        out = {
            "weight": pad_2d(tensors["weight"], self.np, self.kp),
            "weight_scale": ws.clone() if ws.numel() == 1 else pad_vector(ws, self.np),
        }
        if not self.scheme.act_dynamic:
            out["input_scale"] = tensors["input_scale"].float().reshape(1).clone()
        return out

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        x = pad_activation_k(x, cfg.k, self.kp)
        xq, (xs,) = quantize_activation(x, self.scheme, self.kp, prepared)
        out = torch.ops.quantops.fp8_triton_mm(xq, xs, prepared["weight"], prepared["weight_scale"], cfg.n, cfg.dtype)
        return out if bias is None else out + bias
