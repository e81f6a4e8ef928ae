"""tinygemm: PyTorch's own int4 weight-only CUDA kernel (`torch._weight_int4pack_mm`, used by gpt-fast and
torchao), a ranked alternative for W4A16 / W4A16_ASYM with bf16 activations.

tinygemm dequantizes w = (u - 8) * scale + zero, u the unsigned nibble (our stored code, q + 8): symmetric
schemes give zero = 0, asymmetric ones zero = -zero_point * scale (signed zero point, rounded to bf16 once).
Its packed layout comes from `torch._convert_weight_to_int4pack` on the GPU, which wants uint8 [N, K/2] with
the even element in the HIGH nibble (ours: low), so prepare() swaps nibbles first.

Needs: CUDA sm_80+, bf16, groups of 32/64/128/256, K a multiple of 32 x inner k-tiles, N a multiple of 8,
no act-order.
"""

from __future__ import annotations

import torch

from ..formats.pack_quantized import unpack_zero_point
from .base import LinearKernel, needs_cuda
from .weight_only_layout import check_activation


def inner_k_tiles(k: int) -> int:
    for tiles in (8, 4, 2):
        if k % (16 * tiles) == 0:
            return tiles
    return 0


def tinygemm_operands(tensors, scheme, n: int, k: int):
    """(uint8 [N, K/2] codes with the even element in the high nibble, bf16 scales_and_zeros [K/g, N, 2]):
    what torch._convert_weight_to_int4pack and _weight_int4pack_mm take."""
    codes = tensors["weight_packed"].contiguous().view(torch.uint8)  # ours: element 2j low nibble, 2j+1 high
    swapped = ((codes & 0x0F) << 4) | (codes >> 4)
    scale = tensors["weight_scale"].float()
    if scheme.symmetric:
        zero = torch.zeros_like(scale)
    else:
        zero = -unpack_zero_point(tensors, scheme, n, k).float() * scale
    sz = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()  # [K/g, N, 2]
    return swapped.contiguous(), sz


@torch.library.custom_op("quantops::tinygemm_int4_mm", mutates_args=())
def tinygemm_int4_mm(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    """x [M, K] bf16 -> [M, N] bf16 through torch._weight_int4pack_mm."""
    check_activation("tinygemm_int4_mm", x, k, packed, (torch.bfloat16,))
    n = scales_and_zeros.shape[1]
    if x.shape[0] == 0:
        return x.new_empty((0, n))
    return torch._weight_int4pack_mm(x.contiguous(), packed, group_size, scales_and_zeros)


@tinygemm_int4_mm.register_fake
def _(x, packed, scales_and_zeros, group_size, k):
    return x.new_empty((x.shape[0], scales_and_zeros.shape[1]))


class Int4TinygemmKernel(LinearKernel):
    backend = "cuda"
    families = ("wna16",)
    dtypes = (torch.bfloat16,)

    @classmethod
    def is_supported(cls, capability):
        return needs_cuda(capability, (8, 0))

    @classmethod
    def can_implement(cls, config):
        s = config.scheme
        if s.weight != "int4" or s.act is not None:
            return False, "int4 weight-only only"
        if s.weight_strategy != "group" or s.group_size not in (32, 64, 128, 256):
            return False, "needs groups of 32, 64, 128 or 256"
        if s.actorder:
            return False, "no act-order"
        if config.n % 8:
            return False, f"N={config.n} is not a multiple of 8"
        if not inner_k_tiles(config.k):
            return False, f"K={config.k} is not a multiple of 32"
        return True, None

    def prepare(self, tensors):
        cfg = self.config
        codes, sz = tinygemm_operands(tensors, self.scheme, cfg.n, cfg.k)
        return {"packed": torch._convert_weight_to_int4pack(codes, inner_k_tiles(cfg.k)), "scales_and_zeros": sz}

    def apply_2d(self, x, prepared, bias):
        out = torch.ops.quantops.tinygemm_int4_mm(
            x, prepared["packed"], prepared["scales_and_zeros"], self.scheme.group_size, self.config.k
        )
        return out if bias is None else out + bias
