"""The `quantops` command: run and explain on a shrunken default model (the full default takes ~40 s here)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch

from quantops import cli

SMALL = ["--device", "cpu", "--layers", "1", "--hidden", "128", "--intermediate", "256", "--vocab", "256", "--batch", "2", "--seq", "16"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_console_script_and_module_entry():
    scripts = [e for e in entry_points(group="console_scripts") if e.name == "quantops"]
    assert scripts and scripts[0].value == "quantops.cli:main"
    out = subprocess.run([sys.executable, "-m", "quantops", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "run" in out.stdout and "explain" in out.stdout
    parser = cli.build_parser()
    assert {"run", "explain"} <= set(parser._subparsers._group_actions[0].choices)


def test_native_scheme_on_cpu():
    scheme, why = cli.native_scheme(torch.device("cpu"))
    assert scheme == "W8A8" and "Int8IntMMCpuKernel" in why


def test_run(capsys):
    assert cli.main(["run", *SMALL, "--seconds", "0.2", "--skip-bf16-timing"]) == 0
    out = capsys.readouterr().out
    for step in ("[1/5] building the model", "[2/5] quantizing to W8A8", "[4/5] compiling", "[5/5] timing"):
        assert step in out
    assert re.search(r"model\.layers\.0\.self_attn\.q_proj\s+W8A8\s+128x128\s+bfloat16\s+Int8IntMMCpuKernel", out)
    assert re.search(r"lm_head\s+-\s+256x128\s+bfloat16\s+float", out)
    err = float(re.search(r"compiled vs bf16 model:\s+relative L2 error ([\d.]+)", out).group(1))
    assert 0 < err < 0.1
    tps = dict(re.findall(r"  (quantized eager|quantized compiled)\s+([\d,]+)", out))
    assert set(tps) == {"quantized eager", "quantized compiled"} and all(int(v.replace(",", "")) > 0 for v in tps.values())
    assert "compile:" in out and "1 graph(s)" in out


def test_explain(capsys):
    assert cli.main(["explain", *SMALL, "--scheme", "fp8-dynamic"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"model\.layers\.0\.mlp\.down_proj\s+FP8_DYNAMIC\s+128x256\s+bfloat16\s+EmulationKernel", out)
    assert "rewritten (as handed to Inductor)" in out and "torch.ops.quantops.emulated_mm" in out
    assert cli.main(["explain", *SMALL, "--scheme", "W8A8", "--capability", "9.0", "--libraries", "triton",
                     "--no-graph"]) == 0
    out = capsys.readouterr().out
    assert "cuda sm90 (simulated)" in out and "Int8IntMMCpuKernel" not in out and "def forward" not in out
