"""The end-to-end benchmark (quantops/bench_e2e.py) on the CPU: a tiny Llama-3-architecture model (2 layers, hidden 64)
compiled with the quantops backend (Inductor where the backend is absent), a few tokens. No timing assertions:
the rows, statuses, errors and files must come out complete and sane. The real run is benchmarks/e2e.sh on a GPU."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from quantops import bench_e2e

TINY_RUN = ["--tiny", "--device", "cpu", "--batch-sizes", "1", "--prefill-len", "8", "--prompt-len", "3",
            "--decode-steps", "2", "--warmup", "2", "--prefill-reps", "1"]


def _rows(out):
    with open(os.path.join(out, "e2e.csv")) as f:
        return {r["variant"]: r for r in csv.DictReader(f)}


def test_compiled_tiny_model(tmp_path, capsys):
    out = str(tmp_path / "e2e")
    rc = bench_e2e.main(TINY_RUN + ["--backend", "auto", "--variants", "bf16,W8A8,torchao-fp8-row",
                                    "--include-emulated", "--out", out])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    rows = _rows(out)
    assert list(rows) == ["bf16", "W8A8", "torchao-fp8-row"]
    bf16, w8a8 = rows["bf16"], rows["W8A8"]
    assert bf16["status"] == "ok", bf16["note"]
    assert w8a8["status"] in ("ok", "emulated"), w8a8["note"]
    expected_backend = "quantops" if bench_e2e.resolve_backend("auto")[1] == "quantops" else "inductor"
    assert w8a8["backend"] == expected_backend and bf16["backend"] == "inductor"
    for r in (bf16, w8a8):
        for col in ("decode_bs1_tok_s", "prefill_tok_s", "memory_mib"):
            v = float(r[col])
            assert math.isfinite(v) and v > 0, (r["variant"], col, v)
        assert r["layers"] == "2" and r["full_layers"] == "2"
        assert "graphs" in r["note"]
    # bf16 compiled vs bf16 eager: Inductor's fusions round differently, nothing more
    assert 0 <= float(bf16["logits_rel_l2_prefill"]) < 2e-2
    assert 0 <= float(bf16["logits_rel_l2_decode"]) < 2e-2
    # int8 weights and activations: a visible but small error on random weights
    for col in ("logits_rel_l2_prefill", "logits_rel_l2_decode"):
        assert 1e-4 < float(w8a8[col]) < 0.2, (col, w8a8[col])
    assert "M=1:" in w8a8["kernels"] and "M=8:" in w8a8["kernels"]
    # the compiled quantops model against the same weights on the EmulationKernel: rounding only
    assert 0 <= float(w8a8["kernel_rel_l2_vs_emulation"]) < 2e-2
    assert bf16["kernel_rel_l2_vs_emulation"] == ""
    # torchao is not a dependency: a row that says so, or a measured row where it is installed
    ao = rows["torchao-fp8-row"]
    assert ao["status"] in ("unavailable", "ok", "failed")
    if ao["status"] == "unavailable":
        assert "torchao" in ao["note"]
    # the printed table, the Markdown, the versions
    assert "decode bs1 tok/s" in printed and "2 of 2 layers" in printed and "goal: " in printed
    md = open(os.path.join(out, "e2e.md")).read()
    assert "| bf16 |" in md and "Versions:" in md and "python -m quantops.bench_e2e" in md
    env = json.load(open(os.path.join(out, "e2e_env.json")))
    assert env["torch"] == torch.__version__ and env["layers"] == 2 and env["transformers"]
    assert env["compile_mode"] == "reduce-overhead"
    if env["matplotlib"]:
        assert os.path.getsize(os.path.join(out, "e2e.png")) > 0
    else:
        assert "matplotlib is not installed" in printed


def test_skip_reasons_and_time_budget(tmp_path, capsys):
    out = str(tmp_path / "e2e")
    rc = bench_e2e.main(TINY_RUN + ["--eager", "--variants", "bf16,W4A16,NVFP4A16", "--out", out])
    assert rc == 0
    rows = _rows(out)
    assert rows["bf16"]["status"] == "ok" and float(rows["bf16"]["logits_rel_l2_prefill"]) == 0.0
    # hidden 64 is not a multiple of W4A16's group of 128: said before anything is built
    assert rows["W4A16"]["status"] == "skipped" and "group size 128" in rows["W4A16"]["note"]
    # NVFP4A16 has only the emulation kernel on a CPU: skipped unless asked for
    nv = rows["NVFP4A16"]
    assert nv["status"] in ("skipped", "ok")
    if nv["status"] == "skipped":
        assert "emulation" in nv["note"]
    capsys.readouterr()
    rc = bench_e2e.main(TINY_RUN + ["--eager", "--variants", "bf16,W8A8", "--time-budget", "0", "--out", out])
    assert rc == 1  # nothing measured
    assert all(r["status"] == "skipped" and "time budget" in r["note"] for r in _rows(out).values())


def test_same_weights_for_every_variant():
    cfg = bench_e2e.llama_config(bench_e2e.TINY, 1)
    a = bench_e2e.build_model(cfg, torch.device("cpu"), seed=3)
    b = bench_e2e.build_model(cfg, torch.device("cpu"), seed=3)
    assert a.config.rope_parameters["rope_theta"] == 500000.0 and a.config.num_key_value_heads == 2
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and pa.dtype == torch.bfloat16 or "inv_freq" in na
        assert torch.equal(pa, pb), na
    w = a.model.layers[0].mlp.up_proj.weight
    assert 0.01 < float(w.float().std()) < 0.03  # the config's initializer_range, not zeros


def test_full_config_is_llama3_8b():
    cfg = bench_e2e.llama_config(bench_e2e.LLAMA3_8B, None)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size) == (4096, 32, 32, 8, 14336, 128256)
    assert cfg.rope_parameters["rope_theta"] == 500000.0 and not cfg.tie_word_embeddings
    shapes = {n: (N, K) for n, N, K in bench_e2e.linear_shapes(cfg)}
    assert shapes["k_proj"] == (1024, 4096) and shapes["down_proj"] == (4096, 14336)


def test_projection_to_full_depth():
    # times that follow t(L) = fixed + L * per_layer exactly must project exactly
    fixed, per_layer = {1: 0.004, 16: 0.005, "p": 1e-5}, {1: 0.001, 16: 0.0012, "p": 2e-5}

    def row(name, layers, scale=1.0):
        r = bench_e2e.Row(name, "bf16" if name == "bf16" else "quantops")
        for b in (1, 16):
            r.decode[b] = b / (fixed[b] + layers * per_layer[b] * scale)
        r.prefill = 1 / (fixed["p"] + layers * per_layer["p"] * scale)
        return r

    rows = [row("bf16", 4), row("W4A16", 4, scale=0.4)]
    bench_e2e.project(rows, row("bf16", 1), layers=4, full=32)
    for r, scale in zip(rows, (1.0, 0.4)):
        for b in (1, 16):
            assert r.projected[f"decode_bs{b}"] == pytest.approx(b / (fixed[b] + 32 * per_layer[b] * scale))
        assert r.projected["prefill"] == pytest.approx(1 / (fixed["p"] + 32 * per_layer["p"] * scale))
    lines = bench_e2e.goal_lines(rows, projected=True)
    assert any(line.startswith("W4A16 decode_bs1 >= 2.6x bf16") and "projected" in line for line in lines)
    # an unavailable torchao baseline: "not measured", then the stand-in row, named
    tiny = row("torchao-int4-tinygemm", 4, scale=0.5)
    tiny.method = "torchao"
    lines = bench_e2e.goal_lines(rows + [tiny], projected=False)
    i = lines.index("W4A16 decode_bs1 >= 1.35x torchao-int4: not measured")
    assert lines[i + 1].startswith("  (against torchao-int4-tinygemm instead: ")


def test_bad_arguments():
    with pytest.raises(SystemExit):
        bench_e2e.parse_args(["--variants", "bf16,W3A3"])
    with pytest.raises(SystemExit):
        bench_e2e.parse_args(["--batch-sizes", "0"])


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "quantops.bench_e2e", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--layers" in r.stdout and "--batch-sizes" in r.stdout
