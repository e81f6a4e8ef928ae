"""INT8 / INT4 weight-only (W8A16, W4A16, W4A16_ASYM) on the CPU, through PyTorch's CPU weight-only GEMMs.

Int8WeightOnlyCpuKernel: `torch._weight_int8pack_mm(x, w_int8 [N, K], scales [N])` computes x @ (w * s)^T.
It takes ONE scale per output channel: per-channel schemes, or a group scheme whose group is all of K.
The W8A16 preset (group 128) therefore runs on the emulation kernel unless K == 128; looping the op over
groups was measured 30x slower than one call. In bf16 the op gives wrong results or crashes (torch 2.13) when K
is not a multiple of 16, so that case is refused.

Int4WeightOnlyCpuKernel: `torch._convert_weight_to_int4pack_for_cpu` (prepare) and
`torch._weight_int4pack_mm_for_cpu(x, packed, group, scale_and_zero [K/group, N, 2])`, whose dequantization is
w = (u - 8) * scale + zero for the unsigned nibble u. Ours is w = (q - zp) * s with q = u - 8, so
scale = s and zero = -zp * s (zero = 0 when symmetric). The op takes groups of 32/64/128/256 and N % 16 == 0:
a larger group (or per-channel) is expressed by repeating its scale over sub-groups, N is padded to 16 in
prepare() and the output sliced inside the op. Act-order (weight_g_idx) is handled by sorting K by group in
prepare() and gathering x's columns in the same order in plain torch.
In fp32 both ops are per-row GEMVs, fast only for small M: the *Fp32Kernel classes take fp32 and are ranked
for M <= 8 (see ranking.py). Both ops need contiguous x and scales in x's dtype; the zero (-zp * s) is therefore
rounded to the activation dtype, one rounding of < 2^-8 relative in bf16.
"""

from __future__ import annotations

import torch

from ..formats.pack_quantized import unpack_weight, unpack_zero_point
from .base import OK, LinearConfig, LinearKernel, check_all, needs_cpu

INT4_GROUPS = (256, 128, 64, 32)  # group sizes _weight_int4pack_mm_for_cpu accepts, largest first
INT4_N_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu needs N % 16 == 0


def _scheme_group(config: LinearConfig) -> int:
    """Columns sharing one scale in the canonical tensors (K for per-channel)."""
    s = config.scheme
    return config.k if s.weight_strategy == "channel" else s.group_size


# -- INT8 weight-only ---------------------------------------------------------------------------------


@torch.library.custom_op("quantops::int8_weight_only_mm_cpu", mutates_args=())
def int8_weight_only_mm_cpu(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [M, K] float @ (w int8 [N, K] * scales [N])^T -> [M, N] in x's dtype."""
    return torch._weight_int8pack_mm(x.contiguous(), w, scales)


@int8_weight_only_mm_cpu.register_fake
def _(x, w, scales):
    return x.new_empty((x.shape[0], w.shape[0]))


class Int8WeightOnlyCpuKernel(LinearKernel):
    backend = "cpu"
    families = ("wna16",)
    dtypes = (torch.bfloat16, torch.float16)  # fp32: Int8WeightOnlyCpuFp32Kernel

    @classmethod
    def is_supported(cls, capability):
        return check_all(
            needs_cpu(capability),
            (hasattr(torch, "_weight_int8pack_mm"), "torch._weight_int8pack_mm is missing from this torch build"),
        )

    @classmethod
    def can_implement(cls, config: LinearConfig):
        s = config.scheme
        if s.weight != "int8":
            return False, "INT8 weights only"
        if not s.symmetric:
            return False, "_weight_int8pack_mm has no zero points (symmetric weights only)"
        if _scheme_group(config) != config.k:
            return False, (f"_weight_int8pack_mm takes one scale per output channel; {s.name} has groups of "
                           f"{s.group_size} along K={config.k}")
        if config.dtype == torch.bfloat16 and config.k % 16:
            return False, f"bf16 _weight_int8pack_mm is wrong (or crashes) unless K % 16 == 0 (K={config.k})"
        return OK

    def prepare(self, tensors):
        cfg = self.config
        q = unpack_weight(tensors, self.scheme, cfg.n, cfg.k)  # signed int32 [N, K]
        # One group spanning K: an act-order permutation of it changes nothing, so weight_g_idx is not needed.
        return {
            "weight_int8": q.to(torch.int8),
            "weight_scale": tensors["weight_scale"].reshape(cfg.n).to(cfg.dtype),
        }

    def apply_2d(self, x, prepared, bias):
        out = torch.ops.quantops.int8_weight_only_mm_cpu(x, prepared["weight_int8"], prepared["weight_scale"])
        return out if bias is None else out + bias


# -- INT4 weight-only ---------------------------------------------------------------------------------


@torch.library.custom_op("quantops::int4_weight_only_mm_cpu", mutates_args=())
def int4_weight_only_mm_cpu(
    x: torch.Tensor, w_packed: torch.Tensor, group_size: int, scale_and_zero: torch.Tensor, n: int
) -> torch.Tensor:
    """x [M, K] float, w_packed from _convert_weight_to_int4pack_for_cpu ([N', K/2] uint8, N' = N padded to 16),
    scale_and_zero [K/group, N', 2] in x's dtype -> [M, n] in x's dtype."""
    out = torch._weight_int4pack_mm_for_cpu(x.contiguous(), w_packed, group_size, scale_and_zero)
    if out.shape[1] != n:
        out = out[:, :n].contiguous()
    return out


@int4_weight_only_mm_cpu.register_fake
def _(x, w_packed, group_size, scale_and_zero, n):
    return x.new_empty((x.shape[0], n))


class Int4WeightOnlyCpuKernel(LinearKernel):
    backend = "cpu"
    families = ("wna16",)
    dtypes = (torch.bfloat16, torch.float16)  # fp32: Int4WeightOnlyCpuFp32Kernel

    @classmethod
    def is_supported(cls, capability):
        have = hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(torch, "_convert_weight_to_int4pack_for_cpu")
        return check_all(needs_cpu(capability), (have, "torch._weight_int4pack_mm_for_cpu is missing from this torch build"))

    @classmethod
    def kernel_group(cls, config: LinearConfig) -> int | None:
        """The op's group size: the largest of 256/128/64/32 that divides the scheme's group."""
        g = _scheme_group(config)
        return next((kg for kg in INT4_GROUPS if g % kg == 0), None)

    @classmethod
    def can_implement(cls, config: LinearConfig):
        s = config.scheme
        if s.weight != "int4":
            return False, "INT4 weights only"
        if cls.kernel_group(config) is None:
            what = "K" if s.weight_strategy == "channel" else "the group size"
            return False, (f"_weight_int4pack_mm_for_cpu takes groups of {'/'.join(map(str, INT4_GROUPS[::-1]))}: "
                           f"{what} ({_scheme_group(config)}) must be a multiple of 32")
        return OK

    def prepare(self, tensors):
        cfg, s = self.config, self.scheme
        n, k = cfg.n, cfg.k
        u = unpack_weight(tensors, s, n, k) + 8  # unsigned nibbles [N, K], int32
        scale = tensors["weight_scale"].float()  # [N, G]
        zero = None if s.symmetric else -unpack_zero_point(tensors, s, n, k).float() * scale  # [N, G]
        out = {}
        g_idx = tensors.get("weight_g_idx")
        if g_idx is not None:
            # Columns sorted by group make every group contiguous (each group holds group_size columns).
            perm = torch.argsort(g_idx.long(), stable=True)
            expected = torch.arange(k, device=g_idx.device) // _scheme_group(cfg)
            # (GPTQ act-order always does; anything else would silently mix groups here)
            torch._assert_async((g_idx.long()[perm] == expected).all(),
                                "weight_g_idx must give every group exactly group_size columns")
            u = u[:, perm]
            out["perm"] = perm
        rep = _scheme_group(cfg) // self.kernel_group(cfg)  # op sub-groups per scheme group
        if rep > 1:
            scale = scale.repeat_interleave(rep, dim=1)
            zero = None if zero is None else zero.repeat_interleave(rep, dim=1)
        if zero is None:
            zero = torch.zeros_like(scale)
        pad = -n % INT4_N_MULTIPLE
        if pad:
            u = torch.nn.functional.pad(u, (0, 0, 0, pad), value=8)
            scale = torch.nn.functional.pad(scale, (0, 0, 0, pad))
            zero = torch.nn.functional.pad(zero, (0, 0, 0, pad))
        out["weight_int4pack"] = torch._convert_weight_to_int4pack_for_cpu(u.contiguous(), 2)
        out["scale_and_zero"] = torch.stack([scale.t(), zero.t()], dim=-1).to(cfg.dtype).contiguous()
        return out

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        if "perm" in prepared:
            x = x.index_select(1, prepared["perm"])
        out = torch.ops.quantops.int4_weight_only_mm_cpu(
            x, prepared["weight_int4pack"], self.kernel_group(cfg), prepared["scale_and_zero"], cfg.n)
        return out if bias is None else out + bias


# -- fp32 activations ---------------------------------------------------------------------------------
# In fp32 both ops run one GEMV per row: 6-10x faster than emulation at M=1, slower beyond M~8-16 (2048x2048,
# 2 cores). These classes take fp32 only and are ranked "@m<=8", so the M plan hands larger batches to emulation.


class Int8WeightOnlyCpuFp32Kernel(Int8WeightOnlyCpuKernel):
    dtypes = (torch.float32,)


class Int4WeightOnlyCpuFp32Kernel(Int4WeightOnlyCpuKernel):
    dtypes = (torch.float32,)
