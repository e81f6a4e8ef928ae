"""Legacy GPTQ (v1 and v2) and AWQ (GEMM) layouts -> compressed-tensors pack-quantized (canonical) tensors.

GPTQ: `qweight` int32 [K*b/32, N] packed along K (element k in bits b*(k mod 32/b) of word k*b/32), `qzeros`
int32 [G, N*b/32] packed along N, `scales` [G, N], `g_idx` int32 [K] (the group of each input column).
Values are unsigned 0..2^b-1 and w = (q - z) * s. v1 checkpoints ("gptq") store z - 1, v2 ("gptq_v2") store z.
AWQ GEMM: `qweight` int32 [K, N/8] packed along N with the nibble order [0, 2, 4, 6, 1, 3, 5, 7] (nibble i of
a word holds column 8j + order[i]), `qzeros` likewise [G, N/8], `scales` [G, N]; w = (q - z) * s.

Canonical (pack-quantized) values are signed, q - 2^(b-1), packed along K; zero points likewise signed and
packed along N; scales [N, G]. A GPTQ layer whose zero points are all 2^(b-1) is symmetric; a non-trivial
g_idx (desc_act) becomes act-order's `weight_g_idx`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import elements
from ..schemes import QuantScheme
from .compressed_tensors import scheme_from_fields
from .errors import CheckpointError

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds element AWQ_ORDER[i] of its 8


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [R, W] -> unsigned values [R, W*32/bits] (int32), element i of a row at bits*(i mod per) of
    word i/per."""
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int32, device=packed.device) * bits
    return ((packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(packed.shape[0], -1)


@dataclass
class LegacyConfig:
    method: str  # "gptq" or "awq"
    bits: int
    group_size: int  # -1: one group (per channel)
    sym: bool = True
    version: str = "gptq"  # gptq: "gptq" (v1) or "gptq_v2"; awq: "gemm"

    def scheme_for(self, name, module):
        return None  # a layer is quantized when the checkpoint has its qweight (see the loader)


def parse_config(q: dict) -> LegacyConfig:
    method = str(q.get("quant_method", "")).lower()
    bits = int(q.get("bits", q.get("w_bit", 4)))
    gs = int(q.get("group_size", q.get("q_group_size", 128)))
    if method == "gptq":
        fmt = str(q.get("checkpoint_format") or q.get("format") or "gptq").lower()
        if fmt not in ("gptq", "gptq_v2"):
            raise CheckpointError(f"quantization_config: GPTQ checkpoint_format {fmt!r} is not supported "
                                  "(supported: gptq, gptq_v2)")
        if bits not in (4, 8):
            raise CheckpointError(f"quantization_config: {bits}-bit GPTQ is not supported (4 or 8 bits)")
        return LegacyConfig("gptq", bits, gs, bool(q.get("sym", True)), fmt)
    if method == "awq":
        version = str(q.get("version", "gemm")).lower()
        if version != "gemm":
            raise CheckpointError(f"quantization_config: AWQ version {version!r} is not supported (only GEMM)")
        if bits != 4:
            raise CheckpointError(f"quantization_config: {bits}-bit AWQ is not supported (4 bits)")
        return LegacyConfig("awq", 4, gs, not bool(q.get("zero_point", True)), "gemm")
    raise CheckpointError(f"quantization_config: quant_method {method!r} is not a GPTQ/AWQ config")


def _check(t, name, dtype, shape, where):
    if t.dtype != dtype:
        raise CheckpointError(f"{where}: {name} has dtype {t.dtype}, expected {dtype}")
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{where}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def _scheme(bits, group_size, k, symmetric, actorder) -> QuantScheme:
    channel = group_size == -1 or group_size >= k
    return scheme_from_fields(dict(
        weight=f"int{bits}", weight_strategy="channel" if channel else "group",
        group_size=None if channel else group_size,
        block_size=None, symmetric=symmetric, actorder=actorder and not channel, act=None, act_strategy=None,
        act_group_size=None, act_dynamic=True, act_symmetric=True), "legacy checkpoint")


def _canonical(q_u, z_u, scales, g_idx, bits, group_size, n, k):
    """Unsigned q [N, K], unsigned z [G, N], scales [G, N], g_idx [K] or None -> (scheme, canonical tensors)."""
    off = 1 << (bits - 1)
    symmetric = z_u is None or bool((z_u == off).all())
    channel = group_size == -1 or group_size >= k
    actorder = False
    if g_idx is not None and not channel:
        trivial = torch.arange(k, dtype=torch.int64, device=g_idx.device) // group_size
        actorder = not bool((g_idx.long() == trivial).all())
    scheme = _scheme(bits, group_size, k, symmetric, actorder)
    t = {
        "weight_packed": elements.pack_int32(q_u - off, bits),
        "weight_scale": scales.t().contiguous(),
        "weight_shape": torch.tensor([n, k], dtype=torch.int64),
    }
    if not symmetric:
        # z_u is [G, N]: pack along N, then store [ceil(N*b/32), G]
        t["weight_zero_point"] = elements.pack_int32(z_u - off, bits).t().contiguous()
    if actorder:
        t["weight_g_idx"] = g_idx.to(torch.int32)
    return scheme, t


def gptq_to_canonical(raw: dict[str, torch.Tensor], cfg: LegacyConfig, n: int, k: int, where: str):
    """A GPTQ layer's tensors (local names: qweight, qzeros, scales, g_idx, bias) -> (scheme, canonical
    tensors incl. bias, unused names)."""
    bits = cfg.bits
    per = 32 // bits
    missing = [m for m in ("qweight", "qzeros", "scales") if m not in raw]
    if missing:
        raise CheckpointError(f"{where}: missing {', '.join(missing)} for GPTQ")
    if k % per or n % per:
        raise CheckpointError(f"{where}: GPTQ needs K and N multiples of {per}, the layer is {n}x{k}")
    qweight, qzeros, scales = raw["qweight"], raw["qzeros"], raw["scales"]
    groups = 1 if cfg.group_size == -1 else -(-k // cfg.group_size)
    if cfg.group_size != -1 and k % cfg.group_size:
        raise CheckpointError(f"{where}: K={k} is not a multiple of group_size {cfg.group_size}")
    _check(qweight, "qweight", torch.int32, (k // per, n), where)
    _check(qzeros, "qzeros", torch.int32, (groups, n // per), where)
    if scales.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise CheckpointError(f"{where}: scales has dtype {scales.dtype}, expected fp16/bf16/fp32")
    if tuple(scales.shape) != (groups, n):
        raise CheckpointError(f"{where}: scales has shape {tuple(scales.shape)}, expected {(groups, n)}")
    g_idx = raw.get("g_idx")
    if g_idx is not None:
        _check(g_idx, "g_idx", torch.int32, (k,), where)
        if bool(((g_idx < 0) | (g_idx >= groups)).any()):
            raise CheckpointError(f"{where}: g_idx has group indices outside [0, {groups})")
    q_u = unpack_rows(qweight.t().contiguous(), bits)  # [N, K]
    z_u = unpack_rows(qzeros, bits)  # [G, N]
    if cfg.version == "gptq":
        z_u = z_u + 1  # v1 stores z - 1
        if bool((z_u == (1 << bits)).any()):
            raise CheckpointError(f"{where}: qzeros holds {(1 << bits) - 1} in a GPTQ v1 checkpoint, i.e. zero point "
                                  f"{1 << bits}, which {bits}-bit zero points cannot represent")
    scheme, t = _canonical(q_u, z_u, scales, g_idx, bits, cfg.group_size, n, k)
    if "bias" in raw:
        t["bias"] = raw["bias"]
    unused = [name for name in raw if name not in ("qweight", "qzeros", "scales", "g_idx", "bias")]
    return scheme, t, unused


def awq_to_canonical(raw: dict[str, torch.Tensor], cfg: LegacyConfig, n: int, k: int, where: str):
    """An AWQ GEMM layer's tensors (qweight, qzeros, scales, bias) -> (scheme, canonical tensors, unused)."""
    need = ("qweight", "scales") if cfg.sym else ("qweight", "qzeros", "scales")
    missing = [m for m in need if m not in raw]
    if missing:
        raise CheckpointError(f"{where}: missing {', '.join(missing)} for AWQ")
    if n % 8:
        raise CheckpointError(f"{where}: AWQ needs N a multiple of 8, the layer is {n}x{k}")
    if k % cfg.group_size:
        raise CheckpointError(f"{where}: K={k} is not a multiple of group_size {cfg.group_size}")
    groups = k // cfg.group_size
    qweight, scales = raw["qweight"], raw["scales"]
    _check(qweight, "qweight", torch.int32, (k, n // 8), where)
    if scales.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise CheckpointError(f"{where}: scales has dtype {scales.dtype}, expected fp16/bf16/fp32")
    if tuple(scales.shape) != (groups, n):
        raise CheckpointError(f"{where}: scales has shape {tuple(scales.shape)}, expected {(groups, n)}")
    # nibble i holds element AWQ_ORDER[i]: element e is nibble AWQ_ORDER.index(e)
    inverse = torch.tensor([AWQ_ORDER.index(e) for e in range(8)], device=qweight.device)

    def unpack(packed):
        u = unpack_rows(packed, 4).reshape(packed.shape[0], -1, 8)
        return u[:, :, inverse].reshape(packed.shape[0], -1)

    q_u = unpack(qweight).t().contiguous()  # [N, K]
    z_u = None
    if "qzeros" in raw and not cfg.sym:
        _check(raw["qzeros"], "qzeros", torch.int32, (groups, n // 8), where)
        z_u = unpack(raw["qzeros"])  # [G, N]
    scheme, t = _canonical(q_u, z_u, scales, None, 4, cfg.group_size, n, k)
    if "bias" in raw:
        t["bias"] = raw["bias"]
    unused = [name for name in raw if name not in ("qweight", "qzeros", "scales", "bias")]
    return scheme, t, unused
