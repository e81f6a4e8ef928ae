"""Every Triton GEMM lowered for real GPUs on a machine without one (Triton's ahead-of-time compile): lowering
errors in kernels that the CPU tests only interpret (TRITON_INTERPRET=1) show up here, and the dot must become a
tensor-core instruction, not a fallback: wgmma for the swap-AB W8A8 GEMMs on sm_90a (weight rows fill the MMA's
64-row side even at M = 1), wgmma or mma.sync for the weight-only GEMM (its 16-token decode tile is below wgmma's
64 rows), mma.sync on sm_80.

How: in a subprocess without the interpreter (this process has it on, see conftest), each kernel's own apply_2d runs
on CPU tensors with JITFunction.run patched to record the launch (arguments, constexprs, warps, stages) instead of
running it; each recorded launch is then compiled for sm_90a, and for sm_80 where the kernel supports it. The SM
count the split-K rules read is set to an H100's (132), so the configs are those a GPU would launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r"""
import json
import torch
import triton.runtime.jit as jit
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile

from quantops import get_scheme, quantize_weight
from quantops.kernels import triton_fp8_blockscaled, triton_int8, triton_wna16
from quantops.kernels.base import LinearConfig
from quantops.kernels.triton_fp8 import Fp8TritonKernel
from quantops.kernels.triton_fp8_blockscaled import Fp8BlockScaledTritonKernel
from quantops.kernels.triton_int8 import Int8TritonKernel
from quantops.kernels.triton_mxfp8 import Mxfp8TritonKernel
from quantops.kernels.triton_wna16 import WeightOnlyGemmTritonKernel

for module in (triton_fp8_blockscaled, triton_int8, triton_wna16):
    module.launch_sms = lambda t: 132

launches = []
jit.JITFunction.run = lambda self, *args, grid, warmup, **kw: launches.append((self, args, kw))

# (kernel, scheme, M values, sm_80 too)
CASES = [(Fp8TritonKernel, "FP8_DYNAMIC", (1, 4096), False), (Fp8BlockScaledTritonKernel, "FP8_BLOCK", (1, 128), False),
         (Mxfp8TritonKernel, "MXFP8", (1, 64, 4096), False), (Int8TritonKernel, "W8A8", (1, 4096), True),
         (Int8TritonKernel, "W8A8{act_symmetric=False}", (64,), True), (WeightOnlyGemmTritonKernel, "W4A16", (1, 4096), True),
         (WeightOnlyGemmTritonKernel, "W4A16_ASYM", (64,), True), (WeightOnlyGemmTritonKernel, "MXFP8A16", (128,), True)]
TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int8: "i8", torch.uint8: "u8",
         torch.int32: "i32", torch.float8_e4m3fn: "fp8e4nv"}
results = []
for kcls, name, ms, sm80 in CASES:
    if "{" in name:
        preset, change = name.rstrip("}").split("{")
        key, value = change.split("=")
        scheme = get_scheme(preset, **{key: value == "True"})
    else:
        scheme = get_scheme(name)
    n, k = 1024, 2048
    w = (torch.randn(n, k) / k**0.5).to(torch.bfloat16)
    cfg = LinearConfig(scheme, n, k, torch.bfloat16)
    kernel = kcls(cfg)
    prepared = kernel.prepare(quantize_weight(w, scheme))
    for m in ms:
        del launches[:]
        kernel.apply_2d(torch.randn(m, k).to(torch.bfloat16), prepared, None)
        for fn, args, kw in launches:
            values = dict(zip(fn.arg_names, args), **{a: kw[a] for a in fn.arg_names if a in kw})
            const = {p.name: values[p.name] for p in fn.params if p.is_constexpr}
            sig = {p.name: "constexpr" if p.is_constexpr else
                   ("*" + TYPES[values[p.name].dtype] if isinstance(values[p.name], torch.Tensor) else "i32")
                   for p in fn.params}
            options = {o: kw[o] for o in ("num_warps", "num_stages") if o in kw}
            for arch in (90, 80) if sm80 else (90,):
                compiled = compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=GPUTarget("cuda", arch, 32),
                                   options=options)
                ptx = compiled.asm["ptx"]
                results.append({"case": f"{kcls.__name__} {name} M={m} {fn.__name__} sm_{arch}", "arch": arch,
                                "has_dot": "dot" in compiled.asm["ttir"],
                                "wgmma": ptx.count("wgmma.mma_async"), "mma_sync": ptx.count("mma.sync"),
                                "cubin": len(compiled.asm["cubin"])})
print(json.dumps(results))
"""


def test_triton_gemms_lower_to_tensor_cores():
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    gemms = [r for r in results if r["has_dot"]]  # the split-K reduction kernels have no dot
    kernels = {r["case"].split(" M=")[0] for r in gemms}
    assert len(kernels) == 8, kernels  # every case launched a GEMM
    assert all(r["cubin"] > 0 for r in results)
    for r in gemms:
        assert r["wgmma"] + r["mma_sync"] > 0, r
        if r["arch"] == 90 and "WeightOnly" not in r["case"]:
            assert r["wgmma"] > 0, r
        if r["arch"] == 80:
            assert r["mma_sync"] > 0, r
    assert any(r["wgmma"] for r in gemms if "WeightOnly" in r["case"])  # its prefill tiles do use wgmma
