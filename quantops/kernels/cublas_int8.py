"""INT8 W8A8 on cuBLAS through `torch._int_mm` (int8 x int8 -> int32), with the scale epilogue (and the
asymmetric-activation correction) written in plain torch after the op, where Inductor fuses it into one
pointwise kernel.

    out = ((acc - zp_x * sum_k W) * s_x * s_w).to(dtype)      acc = sum_k q_x q_w (exact in int32)

Hardware: sm80+ (IMMA through cuBLASLt). `_int_mm` on CUDA wants M > 16 and K, N multiples of 8: N and K
are padded in prepare (to 16), M inside the op.
"""

from __future__ import annotations

import torch

from ..formats import quantize_activation
from .base import LinearKernel, check_all, needs_cuda, pad_2d, round_up
from .w8a8_prepare import check_canonical, pad_activation_k

ALIGN = 16
MIN_ROWS = 17  # torch._int_mm on CUDA: "self.size(0) needs to be greater than 16"


@torch.library.custom_op("quantops::int8_int_mm", mutates_args=())
def int8_int_mm(xq: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """xq [M, Kp] int8, weight [Np, Kp] int8 -> exact int32 [M, Np]."""
    m = xq.shape[0]
    if m == 0:
        return xq.new_empty((0, weight.shape[0]), dtype=torch.int32)
    if xq.is_cuda and m < MIN_ROWS:
        return torch._int_mm(pad_2d(xq, 32, xq.shape[1]), weight.t())[:m]
    return torch._int_mm(xq, weight.t())


@int8_int_mm.register_fake
def _(xq, weight):
    return xq.new_empty((xq.shape[0], weight.shape[0]), dtype=torch.int32)


class Int8IntMMKernel(LinearKernel):
    """INT8 per-channel (or per-tensor) weights x per-token or static int8 activations, symmetric or
    asymmetric, on torch._int_mm; the epilogue is plain torch (fused by Inductor under torch.compile)."""

    backend = "cublas"
    families = ("int8",)
    dtypes = (torch.bfloat16, torch.float16, torch.float32)

    @classmethod
    def is_supported(cls, capability):
        return check_all(needs_cuda(capability, (8, 0)))

    @classmethod
    def can_implement(cls, config):
        s = config.scheme
        if s.weight_strategy not in ("channel", "tensor") or s.act_strategy not in ("token", "tensor"):
            return False, f"per-channel/per-tensor weights with per-token/per-tensor activations only, not {s.key()}"
        return True, None

    def __init__(self, config):
        super().__init__(config)
        self.np, self.kp = round_up(config.n, ALIGN), round_up(config.k, ALIGN)

    def prepare(self, tensors):
        s = self.scheme
        static = [] if s.act_dynamic else ["input_scale"] + ([] if s.act_symmetric else ["input_zero_point"])
        check_canonical(self.kernel_name(), self.config, tensors, ["weight", "weight_scale"] + static)
        w = tensors["weight"]
        out = {
            "weight": pad_2d(w, self.np, self.kp),
            "weight_scale": tensors["weight_scale"].float().reshape(1, -1).clone(),
        }
        if not s.act_symmetric:  # the zero-point correction needs each output channel's weight sum
            out["weight_sum"] = w.float().sum(dim=1).reshape(1, -1)
        for name in static:
            out[name] = tensors[name].float() if name == "input_scale" else tensors[name].clone()
        return out

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        x = pad_activation_k(x, cfg.k, self.kp)
        xq, params = quantize_activation(x, self.scheme, self.kp, prepared)
        acc = torch.ops.quantops.int8_int_mm(xq, prepared["weight"])
        if self.np != cfg.n:
            acc = acc[:, : cfg.n]
        out = acc.float()
        if len(params) == 2:  # asymmetric activations: x = (q - zp) * s
            out = out - params[1].float() * prepared["weight_sum"]
        out = (out * params[0] * prepared["weight_scale"]).to(cfg.dtype)
        return out if bias is None else out + bias
