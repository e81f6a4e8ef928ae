"""The FP8 Triton GEMM lowered for Hopper on a machine without a GPU (Triton's ahead-of-time compile to sm_90a):
lowering errors in a kernel that the CPU tests only interpret (TRITON_INTERPRET=1) show up here, and the FP8 dot
must become wgmma, not a fallback. One subprocess, since the interpreter is on in this one (conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r"""
import json, sys
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from quantops.kernels.triton_fp8_blockscaled import SCALINGS, _fp8_gemm_kernel, gemm_config

SCALE_TYPE = {"epilogue": "*fp32", "block": "*fp32", "mx": "*u8"}
out = []
for scaling, m in [("mx", 1), ("mx", 64), ("mx", 4096), ("block", 128), ("epilogue", 4096)]:
    bm, bn, bk, split, group_m, warps, stages = gemm_config(m, 8192, 8192, scaling, 132)
    const = {"SCALING": SCALINGS.index(scaling), "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split,
             "GROUP_M": group_m}
    sig = {"x_ptr": "*fp8e4nv", "xs_ptr": SCALE_TYPE[scaling], "w_ptr": "*fp8e4nv", "ws_ptr": SCALE_TYPE[scaling],
           "out_ptr": "*bf16" if split == 1 else "*fp32"}
    sig.update({name: "i32" for name in ("M", "N", "K", "stride_xm", "stride_xs_m", "stride_xs_k", "stride_wn",
                                         "stride_ws_n", "stride_ws_k", "stride_om", "stride_split")})
    sig.update({name: "constexpr" for name in const})
    k = compile(ASTSource(fn=_fp8_gemm_kernel, signature=sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                options={"num_warps": warps, "num_stages": stages})
    out.append({"case": f"{scaling} M={m}", "wgmma": k.asm["ptx"].count("wgmma.mma_async"),
                "cubin": len(k.asm["cubin"])})
print(json.dumps(out))
"""


def test_fp8_gemm_lowers_to_wgmma_for_sm90():
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(cases) == 5
    for case in cases:
        assert case["wgmma"] > 0 and case["cubin"] > 0, case
