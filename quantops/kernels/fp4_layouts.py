"""Blackwell block-scaled GEMM layouts, in plain torch: what `prepare()` of the FP4/MXFP8 kernels turns the
canonical tensors into, and the activation side of the same layouts.

- 128x4 swizzled block scales (CUTLASS `Sm1xxBlkScaledConfig`, FlashInfer `SfLayout.layout_128x4`, FBGEMM):
  a [R, C] scale matrix is zero-padded to [R', C'] = [ceil(R/128)*128, ceil(C/4)*4] and element (r, c) stored at
  (r//128 * C'/4 + c//4) * 512 + (r%32) * 16 + ((r//32)%4) * 4 + c%4 (FORMATS.md).
- CUTLASS FP4 GEMMs want N and K multiples of 32: weights are zero-padded, the output is sliced.
- FlashInfer's trtllm GEMM wants its weight rows (and their scale rows) permuted inside blocks of 32, with N a
  multiple of 128 because its scale shuffle works on whole 128-row tiles.
- Activations: the quantizers of `quantops.formats` (what emulation uses, so bit for bit the same codes and
  scales), then the same swizzle. The swizzle pads M, so kernels run it inside their custom op.

Also the capability gate these kernels share: FlashInfer/FBGEMM build each kernel for a list of SM versions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..formats import tensor_specs
from ..formats.fp4_packed import quantize_mxfp4, quantize_nvfp4
from ..formats.mxfp8 import quantize_mxfp8
from .base import needs_cuda, pad_2d, round_up

SF_ROWS = 128  # rows of one scale tile (4 interleaved groups of 32)
SF_COLS = 4  # scale columns of one tile
CUTLASS_FP4_ALIGN = 32  # N and K of a CUTLASS FP4 GEMM are multiples of this
TRTLLM_ROW_BLOCK = 32  # trtllm shuffles rows inside blocks of 32 (epilogue tile 128)


def swizzle_128x4(sf: torch.Tensor) -> torch.Tensor:
    """[R, C] block scales -> [R', C'] in the 128x4 layout (row-major storage of the result is the kernel's
    flat buffer). Works for e4m3 (NVFP4) and uint8 E8M0 (MX) scales alike."""
    r, c = sf.shape
    rp, cp = round_up(r, SF_ROWS), round_up(c, SF_COLS)
    t = pad_2d(sf, rp, cp)
    dtype = t.dtype
    if t.element_size() == 1:
        t = t.view(torch.uint8)  # permute/copy of float8 is not implemented everywhere
    # (tile row, group of 32, row in group, tile col, col in tile) -> (tile row, tile col, row in group, group, col)
    t = t.reshape(rp // SF_ROWS, SF_ROWS // 32, 32, cp // SF_COLS, SF_COLS).permute(0, 3, 2, 1, 4)
    return t.reshape(rp, cp).view(dtype)


def unswizzle_128x4(swizzled: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of swizzle_128x4: the [rows, cols] scales back from an [R', C'] (or flat) swizzled buffer."""
    rp, cp = round_up(rows, SF_ROWS), round_up(cols, SF_COLS)
    dtype = swizzled.dtype
    t = swizzled.reshape(rp, cp)
    if t.element_size() == 1:
        t = t.view(torch.uint8)
    t = t.reshape(rp // SF_ROWS, cp // SF_COLS, 32, SF_ROWS // 32, SF_COLS).permute(0, 3, 2, 1, 4)
    return t.reshape(rp, cp)[:rows, :cols].view(dtype)


def trtllm_row_order(rows: int, device=None) -> torch.Tensor:
    """Source row of each destination row of the trtllm shuffle (epilogue tile 128, blocks of 32 rows): inside a
    block, source row i lands at (i % 4) * 8 + i // 4, so destination j reads source (j % 8) * 4 + j // 8."""
    if rows % TRTLLM_ROW_BLOCK:
        raise ValueError(f"trtllm row shuffle needs a multiple of {TRTLLM_ROW_BLOCK} rows, got {rows}")
    j = torch.arange(rows, device=device)
    base, jj = j - j % TRTLLM_ROW_BLOCK, j % TRTLLM_ROW_BLOCK
    return base + (jj % 8) * 4 + jj // 8


def trtllm_shuffle_rows(t: torch.Tensor) -> torch.Tensor:
    order = trtllm_row_order(t.shape[0], t.device)
    return (t.view(torch.uint8)[order] if t.element_size() == 1 else t[order]).view(t.dtype)


# -- weights: canonical tensors -> kernel tensors (used by the kernels' prepare) -------------------------------


def fp4_weight_cutlass(weight_packed: torch.Tensor, weight_scale: torch.Tensor, n: int, k: int):
    """CUTLASS / cuDNN / FBGEMM / CuTe-DSL FP4 weights: packed [N', K'/2] zero-padded to multiples of 32, and the
    block scales [ceil(N/128)*128, ceil(K/block/4)*4] swizzled 128x4 (same dtype as given; block 16 or 32)."""
    npad, kpad = round_up(n, CUTLASS_FP4_ALIGN), round_up(k, CUTLASS_FP4_ALIGN)
    w = pad_2d(weight_packed, npad, kpad // 2).contiguous()
    return w, swizzle_128x4(weight_scale).contiguous()


def fp4_weight_trtllm(weight_packed: torch.Tensor, weight_scale: torch.Tensor, n: int, k: int):
    """FlashInfer trtllm FP4 weights: N padded to a multiple of 128 (its scale shuffle works on whole tiles),
    K to 32; weight rows and scale rows shuffled inside blocks of 32; scales then swizzled 128x4."""
    npad, kpad = round_up(n, SF_ROWS), round_up(k, CUTLASS_FP4_ALIGN)
    w = trtllm_shuffle_rows(pad_2d(weight_packed, npad, kpad // 2)).contiguous()
    sf = trtllm_shuffle_rows(pad_2d(weight_scale, npad, weight_scale.shape[1]))
    return w, swizzle_128x4(sf).contiguous()


def mxfp8_weight_cutlass(weight: torch.Tensor, weight_scale: torch.Tensor, n: int, k: int):
    """FlashInfer CUTLASS MXFP8 weights: e4m3 [N', K] with N zero-padded to a multiple of 32, and the E8M0 scales
    as the flat 128x4-swizzled buffer mm_mxfp8 reads (length ceil(N/128)*128 * ceil(K/32/4)*4)."""
    w = pad_2d(weight, round_up(n, CUTLASS_FP4_ALIGN), k).contiguous()
    return w, swizzle_128x4(weight_scale).reshape(-1).contiguous()


def check_canonical(tensors: dict, scheme, n: int, k: int, who: str, names=None):
    """Shapes and dtypes of the canonical tensors a prepare() consumes (values were validated at load)."""
    for name, (shape, dtype) in tensor_specs(scheme, n, k).items():
        if names is not None and name not in names:
            continue
        if name not in tensors:
            raise ValueError(f"{who}: missing {name} for {scheme.name} {n}x{k}")
        t = tensors[name]
        if tuple(t.shape) != tuple(shape) or (dtype != "float" and t.dtype != dtype):
            want = f"{tuple(shape)} {dtype}"
            raise ValueError(f"{who}: {name} is {tuple(t.shape)} {t.dtype}, expected {want} for {scheme.name} {n}x{k}")


# -- activations -----------------------------------------------------------------------------------------------


def quantize_activation_linear(x: torch.Tensor, scheme, k: int, input_global_scale: torch.Tensor | None = None):
    """x [M, K] -> (codes, scales [M, K/block]) in the canonical (linear) layout, exactly as quantops.formats and
    the emulation kernel quantize them. Plain torch ops: recorded into the graph, fused by Inductor."""
    if scheme.act == "nvfp4":
        return quantize_nvfp4(x, input_global_scale.float(), k)
    if scheme.act == "mxfp4":
        return quantize_mxfp4(x, k)
    if scheme.act == "mxfp8":
        return quantize_mxfp8(x, k)
    raise ValueError(f"no block-scaled activation quantizer for {scheme.name}")


def quantize_activation_128x4(x: torch.Tensor, scheme, k: int, input_global_scale=None, k_padded: int | None = None):
    """Our own activation quantizer with swizzled scales: (codes [M, k_padded/2] FP4 bytes or [M, K] e4m3,
    scales [ceil(M/128)*128, ceil(K/block/4)*4] in the 128x4 layout). Used where FlashInfer's is not."""
    q, sf = quantize_activation_linear(x, scheme, k, input_global_scale)
    if k_padded is not None and k_padded != k and scheme.act in ("nvfp4", "mxfp4"):
        q = pad_2d(q, q.shape[0], k_padded // 2)
    return q, swizzle_128x4(sf)


@torch.library.custom_op("quantops::flashinfer_quantize_128x4", mutates_args=())
def flashinfer_quantize_128x4(
    x: torch.Tensor, global_scale: torch.Tensor | None, act: str, k_padded: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashInfer's fused CUDA activation quantizer, same outputs as quantize_activation_128x4 (codes as uint8
    FP4 bytes or e4m3, scales as a uint8 [ceil(M/128)*128, ceil(K/block/4)*4] 128x4 buffer). Its scales are
    close to, not bit-identical with, quantops.formats' (no 0.125 for all-zero NVFP4 blocks; MX exponents
    rounded up from amax/max_code): an opt-in (kernel attribute activation_quantizer = "flashinfer")."""
    m, k = x.shape
    block = 16 if act == "nvfp4" else 32
    if m == 0:
        return _empty_quantized(x, act, k, k_padded)
    import flashinfer

    if act == "mxfp8":
        q, sf = flashinfer.mxfp8_quantize(x, is_sf_swizzled_layout=True)
    else:
        q, sf = flashinfer.fp4_quantize(
            x, global_scale if act == "nvfp4" else None, sf_vec_size=block, sf_use_ue8m0=act == "mxfp4",
            is_sf_swizzled_layout=True, nvfp4_4over6=None,
        )
        q = q.view(torch.uint8)
        if k_padded != k:
            q = F.pad(q, (0, (k_padded - k) // 2))
    sf = sf.view(torch.uint8).reshape(round_up(m, SF_ROWS), round_up(k // block, SF_COLS))
    return q.contiguous(), sf.contiguous()


def _empty_quantized(x, act, k, k_padded):
    block = 16 if act == "nvfp4" else 32
    if act == "mxfp8":
        q = x.new_empty((x.shape[0], k), dtype=torch.float8_e4m3fn)
    else:
        q = x.new_empty((x.shape[0], k_padded // 2), dtype=torch.uint8)
    rows = (x.shape[0] + SF_ROWS - 1) // SF_ROWS * SF_ROWS  # M may be symbolic here
    sf = x.new_empty((rows, round_up(k // block, SF_COLS)), dtype=torch.uint8)
    return q, sf


@flashinfer_quantize_128x4.register_fake
def _(x, global_scale, act, k_padded):
    return _empty_quantized(x, act, x.shape[1], k_padded)


# -- hardware gates ---------------------------------------------------------------------------------------------


def native_scheme_check(kernel: str, scheme, fmt: str, block: int, what: str):
    """The native kernels take one exact scheme: `fmt` weights and activations in blocks of `block`."""
    if (scheme.weight, scheme.act, scheme.group_size, scheme.act_group_size) != (fmt, fmt, block, block):
        return False, f"{kernel} runs {what} (blocks of {block}), not {scheme.key()}"
    return True, None


def needs_sm(capability, supported: tuple[int, ...], what: str):
    """capability within [min, max] of `supported` (SM versions as 100, 103, 120...) and one of them."""
    lo, hi = min(supported), max(supported)
    ok, why = needs_cuda(capability, (lo // 10, lo % 10), (hi // 10, hi % 10))
    if not ok:
        return ok, why
    sm = capability[0] * 10 + capability[1]
    if sm not in supported:
        return False, f"{what} is built for sm{'/'.join(str(s) for s in supported)}, not sm{sm}"
    return True, None
