"""What the weight-only kernels (CUDA GEMV, Triton GEMM, dequantize-then-cuBLAS) share: one view of the
canonical tensors of every 4-/8-bit weight format, prepared once.

Element formats: INT4 / INT8 (pack-quantized, stored with the +2^(bits-1) offset), FP4 e2m1 (NVFP4, MXFP4) and
FP8 e4m3 (MXFP8). Prepared tensors:
  qweight  int32 [N, K*bits/32]: the canonical codes as 32-bit words (pack-quantized words as they are; FP4 /
           FP8 bytes reinterpreted), element i of a row at bits (i mod 32/bits)*bits of word i // (32/bits).
  scales   [N, G]: int formats in their stored dtype (or the one asked for); fp formats fp32 (NVFP4:
           weight_scale / weight_global_scale; MX: 2^(e8m0 - 127)).
  zeros    uint8 [N, G], the stored zero codes (zero point + 2^(bits-1)); asymmetric int only.
  g_idx    int32 [K], act-order only.
Schemes whose activations would be quantized to FP4/MXFP8 (NVFP4, MXFP4, MXFP8 W4A4/W8A8) run here with
activations left in their dtype: a Hopper fallback for Blackwell checkpoints, announced once in the log.
W4AFP8 keeps its numerics: activations are rounded to fp8 per token (plain torch, quantops.formats) first.
"""

from __future__ import annotations

import functools
import logging

import torch

from ..formats.activations import dequantize_activation, quantize_activation
from ..formats.elements import decode_e8m0, pack_int32, unpack_int32
from ..formats.pack_quantized import unpack_zero_point
from ..schemes import QuantScheme
from .base import LinearKernel

logger = logging.getLogger("quantops")

FMT_INT4, FMT_INT8, FMT_FP4, FMT_FP8 = 0, 1, 2, 3
FORMAT_NAMES = {FMT_INT4: "int4", FMT_INT8: "int8", FMT_FP4: "fp4 e2m1", FMT_FP8: "fp8 e4m3"}

# families these kernels run; the last three are activation-quantized schemes run weight-only (see above)
WEIGHT_ONLY_FAMILIES = ("wna16", "w4afp8", "nvfp4a16", "mxfp4a16", "mxfp8a16", "nvfp4", "mxfp4", "mxfp8")
ACTIVATIONS_KEPT = ("nvfp4", "mxfp4", "mxfp8")


def element_format(scheme: QuantScheme) -> int:
    return {"int4": FMT_INT4, "int8": FMT_INT8, "nvfp4": FMT_FP4, "mxfp4": FMT_FP4, "mxfp8": FMT_FP8}[scheme.weight]


def element_bits(fmt: int) -> int:
    return 4 if fmt in (FMT_INT4, FMT_FP4) else 8


def group_size(scheme: QuantScheme, k: int) -> int:
    """Columns per scale along K (K itself for per-channel scales)."""
    return k if scheme.weight_strategy == "channel" else int(scheme.group_size)


def weight_only_family_check(config) -> "tuple[bool, str | None]":
    scheme = config.scheme
    if scheme.family not in WEIGHT_ONLY_FAMILIES:
        return False, f"not a weight-only family: {scheme.family}"
    if scheme.weight not in ("int4", "int8", "nvfp4", "mxfp4", "mxfp8"):
        return False, f"weight type {scheme.weight}"
    return True, None


@functools.lru_cache(maxsize=None)
def announce_weight_only_fallback(scheme_name: str, kernel_name: str) -> None:
    """Logged once per (scheme, kernel): the checkpoint asks for quantized activations this GPU cannot multiply."""
    logger.warning(
        "quantops: %s runs weight-only on this GPU with %s: activations stay in bf16/fp16 (no FP4/MX tensor cores "
        "before Blackwell); outputs differ from W4A4/W8A8 numerics by the activation rounding they skip.",
        scheme_name,
        kernel_name,
    )


def weight_only_activations(x: torch.Tensor, scheme: QuantScheme, k: int) -> torch.Tensor:
    """The activations a weight-only kernel multiplies: x itself, except W4AFP8, whose activations are rounded to
    fp8 per token (quantops.formats.activations, plain torch, so Inductor fuses it) and handed on in x's dtype."""
    if scheme.family != "w4afp8":
        return x
    xq, params = quantize_activation(x, scheme, k)
    return dequantize_activation(xq, params, scheme, k).to(x.dtype)


def prepare_weight_only(tensors: dict, scheme: QuantScheme, n: int, k: int, scale_dtype=None) -> dict:
    """Canonical tensors -> the common prepared layout described above (new tensors; inputs untouched)."""
    fmt = element_format(scheme)
    out: dict[str, torch.Tensor] = {}
    if fmt in (FMT_INT4, FMT_INT8):
        out["qweight"] = tensors["weight_packed"].to(torch.int32).contiguous()
        scales = tensors["weight_scale"]
        out["scales"] = scales.to(scale_dtype or scales.dtype).contiguous()
        if not scheme.symmetric:
            zp = unpack_zero_point(tensors, scheme, n, k) + (1 << (scheme.weight_bits - 1))
            out["zeros"] = zp.to(torch.uint8).contiguous()
        if scheme.actorder:
            out["g_idx"] = tensors["weight_g_idx"].to(torch.int32).contiguous()
    elif fmt == FMT_FP4:
        out["qweight"] = tensors["weight_packed"].contiguous().view(torch.uint8).view(torch.int32)
        if scheme.weight == "nvfp4":
            scales = tensors["weight_scale"].float() / tensors["weight_global_scale"].float().reshape(1, 1)
        else:
            scales = decode_e8m0(tensors["weight_scale"])
        out["scales"] = scales.contiguous()
    else:
        out["qweight"] = tensors["weight"].contiguous().view(torch.uint8).view(torch.int32)
        out["scales"] = decode_e8m0(tensors["weight_scale"]).contiguous()
    return out


def act_order_to_contiguous_groups(prepared: dict, scheme: QuantScheme, n: int, k: int, *, where: str = "layer") -> dict:
    """Act-order for kernels that need each group's columns together: permute the weight columns by group once
    (stable sort of g_idx); the kernel then gathers x's columns with `perm`. Needs every group to hold exactly
    group_size columns (GPTQ act-order checkpoints do); other g_idx raise a ValueError here."""
    g_idx = prepared.pop("g_idx")
    gs = group_size(scheme, k)
    perm = torch.argsort(g_idx.long(), stable=True)
    expected = torch.arange(k, device=g_idx.device) // gs
    if not torch.equal(g_idx.long()[perm], expected):
        raise ValueError(
            f"{where}: weight_g_idx does not put exactly {gs} columns in each group; this kernel needs regular "
            "act-order groups (use the Triton or dequantize kernels)"
        )
    bits = scheme.weight_bits
    codes = unpack_int32(prepared["qweight"], bits, k)[:, perm]
    prepared["qweight"] = pack_int32(codes, bits)
    prepared["perm"] = perm.to(torch.int64).contiguous()
    return prepared


def interleave_nibbles(words: torch.Tensor) -> torch.Tensor:
    """int32 words of 8 nibbles, element i at nibble i -> nibble slots (p, p+4) hold elements (2p, 2p+1), so
    that one shift and mask in the CUDA kernel yield two adjacent elements in the halves of a register."""
    u = words.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(8, device=words.device, dtype=torch.int64) * 4
    nib = (u.unsqueeze(-1) >> shifts) & 0xF
    src = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7], device=words.device)
    packed = (nib[..., src] << shifts).sum(dim=-1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32).contiguous()


def check_activation(op: str, x: torch.Tensor, k: int, weight: torch.Tensor, dtypes) -> None:
    """Clear errors before any launch (inside the ops, where x is a real tensor)."""
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"{op}: activation must be [M, {k}], got {tuple(x.shape)}")
    if x.dtype not in dtypes:
        raise ValueError(f"{op}: activation dtype {x.dtype} not in {list(dtypes)}")
    if x.device != weight.device:
        raise ValueError(f"{op}: activation on {x.device} but weights on {weight.device}")


class WeightOnlyKernel(LinearKernel):
    """What the weight-only kernel classes share: the scheme's element format and group size, the logged notice
    when a W4A4 / W8A8 checkpoint runs weight-only, and - for ops that take the canonical prepared tensors
    (`op` below: x, qweight, scales, zeros, g_idx, fmt, group_size, n, k) - prepare and apply. A kernel with its
    own layout overrides prepare and apply_2d."""

    families = WEIGHT_ONLY_FAMILIES
    op = None  # torch.ops.quantops.<op> of a kernel that keeps the canonical layout

    @classmethod
    def can_implement(cls, config):
        return weight_only_family_check(config)

    def __init__(self, config):
        super().__init__(config)
        self.fmt = element_format(self.scheme)
        self.group_size = group_size(self.scheme, config.k)
        if self.scheme.family in ACTIVATIONS_KEPT:
            announce_weight_only_fallback(self.scheme.name, self.kernel_name())

    def prepare(self, tensors):
        return prepare_weight_only(tensors, self.scheme, self.config.n, self.config.k)

    def apply_2d(self, x, prepared, bias):
        cfg = self.config
        x = weight_only_activations(x, self.scheme, cfg.k)
        out = self.op(x, prepared["qweight"], prepared["scales"], prepared.get("zeros"), prepared.get("g_idx"),
                      self.fmt, self.group_size, cfg.n, cfg.k)
        return out if bias is None else out + bias
