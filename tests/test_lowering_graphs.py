"""Golden rewritten graphs: quantops.explain() of the default model's decoder block under each scheme, on this
CPU and on a simulated H100 (sm90, with Triton but neither FBGEMM nor FlashInfer installed), compared with the
files in graphs/.

Regenerate all of them (after a kernel or ranking change) with
    EXPECTTEST_ACCEPT=1 python -m pytest tests/test_lowering_graphs.py -q
or only the sm90 ones with `-k sm90`. Review the diff: it is what the lowering now does differently.
"""

from __future__ import annotations

import difflib
import os

import pytest
import torch

import quantops
from quantops.model import build_decoder_block

GRAPHS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "graphs")
SCHEMES = ("FP8_DYNAMIC", "FP8_BLOCK", "W8A8", "W4A16", "NVFP4")
TARGETS = {"cpu": dict(capability="cpu"), "sm90": dict(capability=(9, 0), libraries=("triton",))}
REGENERATE = "EXPECTTEST_ACCEPT=1 python -m pytest tests/test_lowering_graphs.py -q"


def golden_text(scheme: str, target: str) -> str:
    torch._dynamo.reset()
    block = build_decoder_block(seed=0)
    x = torch.randn(1, 8, block.mlp.up_proj.in_features, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    calibration = [(x,)] if scheme == "NVFP4" else None
    quantops.quantize_model(block, scheme, calibration=calibration)
    ex = quantops.explain(block, x, **TARGETS[target])
    header = (f"# quantops.explain(decoder block of quantops.model, x: bf16[1, 8, 256]) after "
              f"quantize_model(block, {scheme!r}), target {target}\n"
              f"# regenerate: {REGENERATE}\n")
    return header + str(ex)


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_golden_graph(scheme, target):
    if target == "sm90" and torch.version.cuda is not None:
        pytest.skip("the sm90 goldens are recorded with a CPU build of torch (cuBLAS block-scaled FP8 needs a CUDA "
                    "build, so a CUDA build selects differently); CI runs them")
    text = golden_text(scheme, target)
    path = os.path.join(GRAPHS, f"llama_block.{scheme}.{target}.txt")
    if os.environ.get("EXPECTTEST_ACCEPT") == "1":
        with open(path, "w") as f:
            f.write(text)
        return
    assert os.path.exists(path), f"{path} is missing: {REGENERATE}"
    with open(path) as f:
        want = f.read()
    if text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), path, "now", n=2))
        pytest.fail(f"the rewritten graph changed; if intended, regenerate with: {REGENERATE}\n{diff[:6000]}")
    # the goldens show real kernels where the target has them
    if (scheme, target) in (("W8A8", "cpu"), ("W4A16", "cpu"), ("FP8_DYNAMIC", "sm90"), ("FP8_BLOCK", "sm90")):
        assert "EmulationKernel\n" not in text.split("rewritten (as handed")[0]
